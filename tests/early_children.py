"""Child processes that tests need, started before the tests' turn.

Why: pytest runs the suite in one process, which keeps about one core busy; on a 2-core machine (CI's)
the other sits idle. The tests with the longest cold numba compilations (minutes) do their work in a
child process that needs nothing from the tests before it. A test module lists them in EARLY_CHILDREN
(test function name -> function giving the child's (argv, env), or None where the test will skip);
conftest.py starts those of the selected tests as soon as collection ends, and one background thread
runs them one after another. The test then only waits for its child's answer (``answer``); run alone
(or without the root conftest.py), a test runs its child itself.

A child must not write anything the suite reads while they run side by side: each compiles without
numba's disk cache or with a cache directory of its own (own_cache_env: numba numbers a function's
cached copies in one index file without locking it, so two processes compiling one function for
different CPU features at once could both claim copy 1, and one would later load the other's code).

pytest's end-of-session hook kills a child still running (-x stopped the run, ^C, an internal error);
a pytest killed outright (SIGKILL, a segfault) leaves it to finish on its own, writing only its cache.
"""
import os
import subprocess
import tempfile
import threading
from pathlib import Path

TIMEOUT_S = 900  # one child's run, from its start (not from the time it was queued)
REPO = Path(__file__).resolve().parents[1]


def child_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's) with this checkout first on PYTHONPATH, so that a child imports
    the engine and kernels pytest tests (pytest puts the root on sys.path; a child run elsewhere would
    otherwise take whatever checkout is installed)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def own_cache_env(suffix: str, env: dict | None = None) -> dict:
    """child_env(env) with numba's disk cache in a directory of the child's own, next to the suite's:
    NUMBA_CACHE_DIR + "-" + suffix (kernels/__init__.py keeps a NUMBA_CACHE_DIR it did not set itself).
    Persistent, so a second run loads what the first compiled."""
    env = child_env(env)
    env["NUMBA_CACHE_DIR"] = os.environ["NUMBA_CACHE_DIR"] + "-" + suffix
    env.pop("SUPBENCH_NUMBA_CACHE_DIR", None)
    return env


class Child:
    """One child process: argv, env; once run, its exit code (or why it did not run), stdout and stderr.
    ``cancel``: an Event that, once set, keeps it from starting and kills it if it runs."""

    def __init__(self, argv: list, env: dict, cancel: threading.Event | None = None):
        self.argv, self.env, self.cancel = argv, env, cancel or threading.Event()
        self.done = threading.Event()
        self.code, self.out, self.err = None, "", ""
        self.proc = None

    def run(self):
        """Run to the end (killed after TIMEOUT_S, or on any exception while waiting, ^C included), its
        output in temporary files (no pipe to fill and block on); ``done`` is set whatever happens."""
        try:
            if self.cancel.is_set():
                self.code = "not run: the session ended"
                return
            with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
                self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=err)
                try:
                    if self.cancel.is_set():  # cancelled between the check above and the start
                        self.proc.kill()
                    self.code = self.proc.wait(timeout=TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.code = f"killed after {TIMEOUT_S} s"
                finally:
                    if self.proc.poll() is None:
                        self.proc.kill()
                        self.proc.wait()
                out.seek(0)
                err.seek(0)
                self.out, self.err = out.read(), err.read()
        except Exception as e:  # (a child that cannot start must not leave its test waiting)
            self.code = f"could not run: {e!r}"
        finally:
            self.done.set()

    def stop(self):
        """Cancel: never start, and kill the process if it runs."""
        self.cancel.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


_queued: dict = {}  # (module name, test name) -> Child started early, until its test collects it
_lock = threading.Lock()


def _work(children):
    for child in children:
        child.run()


def start(jobs: dict):
    """Run the children of ``jobs`` ((module name, test name) -> (argv, env)) one after another on a
    background thread; stop() cancels them."""
    cancel = threading.Event()  # one per call: a later session in this process starts afresh
    with _lock:
        children = []
        for key, job in jobs.items():
            if key not in _queued:
                _queued[key] = Child(*job, cancel=cancel)
                children.append(_queued[key])
    if children:
        threading.Thread(target=_work, args=(children,), daemon=True).start()


def stop(keys=None):
    """Cancel the children started early (kill what runs, start nothing more) and forget them: every one,
    or those of ``keys``, (module name, test name) pairs."""
    with _lock:
        for key in list(_queued) if keys is None else [k for k in keys if k in _queued]:
            _queued.pop(key).stop()


def _finished(child: Child, what: str) -> str:
    assert child.code == 0, f"{what}: child exited {child.code}: {child.err[-3000:]}"
    return child.out


def run_now(argv: list, env: dict) -> str:
    """Run a child now and return its stdout; fails the test with its stderr if it exited non-zero."""
    child = Child(argv, env)
    child.run()
    return _finished(child, " ".join(map(str, argv[:2])))


def answer(module: str, test: str, make) -> str:
    """The stdout of the child of ``test`` in ``module`` (its EARLY_CHILDREN entry ``make``): the one
    started early, waited for (each child ahead of it in the queue may take up to TIMEOUT_S), else run
    now. Fails the test with the child's stderr if it exited non-zero or never finished."""
    with _lock:
        child = _queued.pop((module, test), None)  # (a rerun of the test runs its child again)
    if child is None:
        return run_now(*make())
    if not child.done.wait(TIMEOUT_S * 8):
        child.stop()
        raise AssertionError(f"{test}: its early child did not finish in {TIMEOUT_S * 8} s")
    return _finished(child, test)
