"""The cpu backend: fused, compiled training loops on the CPU (numba; kernels/cpu_train.py).

Loaded lazily by engine/backends.py, like the triton backend; a machine without numba trains on
the torch backend instead. Same contract as engine.torch_backend.train_chunk, and the same data as
the triton backend: batches come from the Philox stream keyed by (seed, instance, step), so a
chunk's result does not depend on chunking, thread count, segment sizes or resumes.

Compilation happens once per checkout and kernel source (numba caches it on disk beside kernels/); ``compile(path)``
triggers it on a small problem of the path a run needs (kernel_path) so callers can time it apart
from training.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from kernels import cpu_tiny, cpu_train, cpu_train_untied
from . import fused
from .checkpoint import Checkpoint
from .spec import ModelSpec, TrainSpec

# Segments are sized to take about this long (progress and checkpoints come between segments).
SEGMENT_SECONDS = 1.0
FIRST_SEGMENT_STEPS = 4


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads for training (None: all numba may use). Returns the count in use."""
    import numba

    if threads is not None:
        numba.set_num_threads(int(threads))
    return numba.get_num_threads()


def max_threads() -> int:
    import numba

    return numba.config.NUMBA_NUM_THREADS


_COMPILED: dict = {}

# The compiled training loops: "lanes" and "rows", the two paths of the tied kernel (per-lane gradient
# accumulators for small models, row-by-row sums for big ones: kernels.cpu_train.ROWWISE), its tiny
# copies "tiny-<n>x<m>", one per shape of kernels/cpu_tiny.SHAPES (the phase diagrams', the intro's, the
# privileged basis' and basic's), and "untied", the abs-computation model's. Each compiles (or loads
# from the disk cache) only when a run needs it.
TINY_PATHS = {f"tiny-{n}x{m}": (n, m) for n, m in cpu_tiny.SHAPES}
PATHS = ("lanes", "rows", *TINY_PATHS, "untied")
# A small problem on each path: (n, m), of no tiny copy's shape for "lanes" (compile asserts that the
# problem takes its path). The row-by-row path needs n >= 8 and 4 m n lanes > 1 MB.
_PROBLEM = {"lanes": (4, 2), "rows": (8, 260), **TINY_PATHS, "untied": (3, 2)}


def block_lanes(model: ModelSpec, batch: int | None = None) -> int:
    """Batch rows per block a run of ``model`` trains with at ``batch`` rows per step: the kernel's
    lanes_for(n, m, batch), fewer than 128 only for a model too big for 128 or a batch smaller than 128."""
    kernel = cpu_train if model.tied else cpu_train_untied
    return kernel.lanes_for(model.n_features, model.n_hidden, batch)


def kernel_path(model: ModelSpec, lanes: int | None = None, batch: int | None = None) -> str:
    """Which compiled loop trains ``model`` (PATHS): the untied kernel, or the tied kernel's copy for its
    shape (kernels.cpu_train.segment_for at the block's lanes, by default block_lanes(model, batch))."""
    if not model.tied:
        return "untied"
    n, m = model.n_features, model.n_hidden
    segment = cpu_train.segment_for(n, m, lanes or block_lanes(model, batch))
    if segment is cpu_train.train_segment_rows:
        return "rows"
    return f"tiny-{n}x{m}" if segment is not cpu_train.train_segment_lanes else "lanes"


# A compilation still running after this many seconds is announced (compile's ``log``): loading from the
# disk cache takes about 0.3 s, a cold compilation 10-75 s with nothing else on screen.
ANNOUNCE_AFTER_S = 2.0


def compile(path: str = "lanes", log=None) -> float:
    """Compile (or load from the on-disk cache) the training loop ``path`` (PATHS; kernel_path(model,
    batch=train.batch_size) gives a run's) on a small problem; returns the seconds it took the first time
    in this process, 0.0 afterwards, so that callers report it apart from training. ``log``: a function
    of one line, called if it is still compiling after ANNOUNCE_AFTER_S (long work shows itself)."""
    if path not in PATHS:
        raise ValueError(f"path: one of {', '.join(PATHS)} (got {path!r})")
    if path in _COMPILED:
        return 0.0
    announce = None
    if log is not None:
        announce = threading.Timer(ANNOUNCE_AFTER_S, log, (f"cpu backend: readying the {path} training loop "
                                                          "(a checkout's first run compiles it: 10-75 s)",))
        announce.daemon = True
        announce.start()
    try:
        return _compile(path)
    finally:
        if announce is not None:
            announce.cancel()
            announce.join()  # (a line already being written ends before compile returns)


def _compile(path: str) -> float:
    t0 = time.perf_counter()
    n, m = _PROBLEM[path]
    model = ModelSpec(n, m, "abs-computation" if path == "untied" else "relu-output")
    train = TrainSpec(steps=1, batch_size=8)
    assert kernel_path(model) == path
    state = {k: v.numpy() for k, v in fused.new_state(model, train, 0, 1).items()}
    p = np.full((1, n), 0.5, np.float32)
    run_steps(model, train, state, p, np.ones_like(p), 0, 0, 1, np.zeros(1, np.float32),
              sched=fused.schedule_table(train).numpy())
    _COMPILED[path] = time.perf_counter() - t0
    return _COMPILED[path]


def run_steps(model: ModelSpec, train: TrainSpec, state: dict, p, imp, first_instance: int, step0: int, n_steps: int,
              loss_acc, hist=None, history_every: int = 0, sched=None, lanes: int | None = None, sets=(),
              examples: int = 0) -> None:
    """Advance ``state`` by steps [step0, step0 + n_steps) in one compiled call (tests and bench)."""
    sched = fused.schedule_table(train) if sched is None else sched
    if not model.tied:
        cpu_train_untied.train_steps(
            state, p, imp, sched, loss_acc, hist, batch=train.batch_size, first_instance=first_instance, step0=step0,
            n_steps=n_steps, window_start=train.steps - train.loss_window, hist_every=history_every, seed=train.seed,
            weight_decay=train.weight_decay, beta1=train.beta1, beta2=train.beta2, eps=train.eps,
            decoupled=train.optimizer == "adamw", lanes=lanes, sets=sets, finite=examples > 0)
        return
    cpu_train.train_steps(
        state, p, imp, sched, loss_acc, hist, batch=train.batch_size, first_instance=first_instance, step0=step0,
        n_steps=n_steps, window_start=train.steps - train.loss_window, hist_every=history_every, seed=train.seed,
        weight_decay=train.weight_decay, beta1=train.beta1, beta2=train.beta2, eps=train.eps,
        relu=model.variant != "linear", decoupled=train.optimizer == "adamw", lanes=lanes,
        relu_hidden=model.variant == "relu-hidden", sets=sets, finite=examples > 0)


def segment_sizer(steps_per_launch: int | None = None):
    """Steps in the next segment: a fixed count, or (default) about SEGMENT_SECONDS of work judged
    from the last segment. Only progress and checkpoint timing depend on it, never the result."""
    if steps_per_launch:
        return steps_per_launch
    steps = FIRST_SEGMENT_STEPS

    def size(done: int, last_seconds: float | None) -> int:
        nonlocal steps
        if last_seconds:
            steps = max(1, min(100_000, int(steps * SEGMENT_SECONDS / last_seconds)))
        return steps

    return size


def train_chunk(model: ModelSpec, p, importance, train: TrainSpec, first_instance: int, device="cpu",
                history_every: int = 0, on_step=None, checkpoint: Checkpoint | None = None,
                steps_per_launch: int | None = None, lanes: int | None = None, snapshot_steps=(),
                on_snapshot=None, sets=(), examples: int = 0):
    """Train K instances with the fused CPU loop; same contract as engine.torch_backend.train_chunk.
    steps_per_launch, lanes: fixed segment size and rows per block (tests; default automatic:
    block_lanes(model, train.batch_size))."""
    lanes = lanes or block_lanes(model, train.batch_size)
    compile(kernel_path(model, lanes))

    def run_segment(state, p, imp, sched, loss_acc, hist, step0, n_steps):
        run_steps(model, train, state, p, imp, first_instance, step0, n_steps, loss_acc, hist, history_every, sched,
                  lanes=lanes, sets=sets, examples=examples)

    return fused.train_chunk(run_segment, model, p, importance, train, first_instance, "cpu",
                             segment_sizer(steps_per_launch),
                             history_every=history_every, on_step=on_step, checkpoint=checkpoint,
                             snapshot_steps=snapshot_steps, on_snapshot=on_snapshot)
