"""Child processes that tests need, started before the tests' turn.

Why: pytest runs the suite in one process, which keeps about one core busy; on a 2-core machine (CI's)
the other sits idle. The tests with the longest cold numba compilations (minutes) do their work in a
child process that needs nothing from the tests before it. conftest.py queues each such child as soon
as collection ends (a test module lists its children in EARLY_CHILDREN: test name -> function giving
the child's argv and environment, or None where the test will skip), and one background thread runs
them one after another; the test then only waits for its child's answer. Run alone, a test runs its
child itself (``answer``).

A child must not write anything the suite reads while they run side by side: each compiles without
numba's disk cache or with a cache directory of its own (numba numbers a function's cached copies in
one index file without locking it, so two processes compiling one function for different CPU features
at once could both claim copy 1, and one would later load the other's machine code).
"""
import os
import subprocess
import tempfile
import threading

TIMEOUT_S = 900  # one child's run, from its start (not from the time it was queued)


def own_cache_env(suffix: str, env: dict | None = None) -> dict:
    """``env`` (default: this process's) with numba's disk cache in a directory of the child's own, next
    to the suite's: NUMBA_CACHE_DIR + "-" + suffix (kernels/__init__.py keeps a NUMBA_CACHE_DIR it did not
    set itself). Persistent, so a second run loads what the first compiled."""
    env = dict(os.environ if env is None else env)
    env["NUMBA_CACHE_DIR"] = os.environ["NUMBA_CACHE_DIR"] + "-" + suffix
    env.pop("SUPBENCH_NUMBA_CACHE_DIR", None)
    return env


class Child:
    """One child process: argv, env; its exit code and its stdout and stderr once it has run."""

    def __init__(self, argv: list, env: dict):
        self.argv, self.env = argv, env
        self.done = threading.Event()
        self.code, self.out, self.err = None, "", ""
        self.proc = None

    def run(self):
        """Run to the end (or TIMEOUT_S), output in temporary files: no pipe to fill and block on."""
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            try:
                self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=err, text=True)
                if _stopped.is_set():  # stop() came between the check in _work and the start
                    self.proc.kill()
                try:
                    self.code = self.proc.wait(timeout=TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    self.code = f"killed after {TIMEOUT_S} s"
                out.seek(0), err.seek(0)
                self.out, self.err = out.read(), err.read()
            finally:
                self.done.set()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


_queued: dict = {}  # test name -> Child
_lock = threading.Lock()
_stopped = threading.Event()


def _work(children):
    for child in children:
        if _stopped.is_set():
            child.code = "not run: the session ended"
            child.done.set()
        else:
            child.run()


def start(jobs: dict):
    """Run the children of ``jobs`` (test name -> (argv, env)) one after another on a background thread."""
    with _lock:
        children = [_queued.setdefault(name, Child(*job)) for name, job in jobs.items() if name not in _queued]
        if children:
            threading.Thread(target=_work, args=(children,), daemon=True).start()


def stop():
    """Kill what still runs (a child whose test was not reached: -x, ^C) and forget every child."""
    _stopped.set()
    with _lock:
        for child in _queued.values():
            child.stop()
        _queued.clear()


def answer(name: str, argv: list, env: dict) -> str:
    """The stdout of test ``name``'s child: the one started early if there is one, else run now.
    Fails the test with the child's stderr if it exited non-zero."""
    with _lock:
        child = _queued.get(name)
    if child is None:
        child = Child(argv, env)
        child.run()
    else:
        child.done.wait()
    assert child.code == 0, f"child exited {child.code}: {child.err[-3000:]}"
    return child.out
