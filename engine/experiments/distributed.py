"""Training a run's chunks as Ray tasks (``supbench run <name> --ray [ADDRESS]``).

The driver (this process) plans and validates exactly as a local run does (runner.py), submits
every untrained chunk as a task declaring its resources (one GPU for triton, one CPU otherwise),
and writes each finished chunk into the run directory as it arrives, through the same
ChunkStore: a chunk already there (a duplicate completion) is ignored, never written twice.
Chunks depend only on (spec, job, instance range), never on where they ran (the fused backends'
batches are keyed by (seed, instance, step); the torch backend seeds per chunk), so a distributed
run is bit-identical to a local run with the same chunk plan.

Faults: a worker that dies mid-chunk is retried by Ray (``max_retries``); a driver that dies
leaves the finished chunks in the directory, and the same command resumes. Workers do not write
mid-chunk checkpoints (a cluster's nodes need not share a file system with the driver).
Ray is optional: ``pip install -e ".[ray]"``.
"""
from __future__ import annotations

import math
import os
import re
import socket
import time

from tqdm.auto import tqdm

from ..errors import SpecError, TrainingFailed

# Test hook: a path; the first task to see it absent creates it and kills its own worker process
# after its first progress report (a worker lost mid-chunk). Never set outside tests.
KILL_ONCE_ENV = "SUPBENCH_TEST_KILL_WORKER_ONCE"
MAX_RETRIES = 3


def connect(address: str | None, num_cpus: int | None = None, log=print) -> dict:
    """Start a local Ray instance (address None or 'local') or join the cluster at ``address``;
    returns its resources ({"CPU": ..., "GPU": ...}). One line if Ray is missing."""
    try:
        import ray
    except ImportError:
        raise SpecError("--ray", "used with Ray installed (pip install -e \".[ray]\", or pip install ray)", address or "local") from None
    if address not in (None, "", "local", "auto"):
        _check_reachable(address)
    if not ray.is_initialized():
        env = {KILL_ONCE_ENV: os.environ[KILL_ONCE_ENV]} if KILL_ONCE_ENV in os.environ else {}
        kwargs = dict(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env} if env else None)
        try:
            if address in (None, "", "local"):
                ray.init(num_cpus=num_cpus, **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise SpecError("--ray", "the address of a running Ray cluster (or no value, for a local one)",
                            f"{address}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    res = ray.cluster_resources()
    log(f"ray: {int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs in the cluster")
    return res


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Ray retries an unreachable head for minutes: say so in one line after a few seconds instead."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as e:
        raise SpecError("--ray", "the HOST:PORT of a running Ray cluster's head (or no value, for a local instance)",
                        f"{address}: {e.strerror or e}" if isinstance(e, OSError) else address) from None


def check_resources(backend: str, device: str, resources: dict) -> None:
    """Tasks that need a GPU on a cluster without one would wait forever: refuse in one line."""
    if (backend == "triton" or str(device).startswith("cuda")) and not resources.get("GPU"):
        raise SpecError("--ray", f"a cluster with GPUs for {backend} on {device} (this one has none); use --backend cpu",
                        backend)


def chunk_size_for(n_instances: int, backend: str, resources: dict) -> int:
    """Automatic chunk size on a cluster for the fused backends (whose results do not depend on it):
    about 4 chunks per worker so the workers stay busy to the end. The torch backend keeps its
    local plan (its batches depend on the chunking), so --ray and a local run agree bit for bit."""
    workers = max(1, int(resources.get("GPU" if backend == "triton" else "CPU", 1)))
    return max(1, math.ceil(n_instances / (4 * workers)))


def _train_remote(job, start: int, stop: int, backend: str, device: str) -> dict:
    """Runs on a Ray worker: train one chunk on one core (or one GPU) and return its tensors."""
    from .. import backends
    from .runner import train_one
    if backend == "cpu":
        from .. import cpu_backend
        cpu_backend.set_threads(1)  # one task per core; results do not depend on the thread count
        cpu_backend.compile(cpu_backend.kernel_path(job.model, batch=job.train.batch_size))  # loads the disk cache
    marker = os.environ.get(KILL_ONCE_ENV)
    die = marker and not os.path.exists(marker)

    def on_step(s):
        if die:
            open(marker, "w").close()
            os._exit(1)  # the worker process dies mid-chunk, as if killed
    return train_one(backends.train_chunk_fn(backend), job, start, stop, device, on_step=on_step if die else None)


def train_chunks(exp, jobs, plan: dict, store, todo: list, progress: bool, log, split=None) -> tuple[int, float]:
    """Train the ``todo`` chunks [(job, start, stop)] as Ray tasks, saving each into ``store`` as it
    finishes; returns (chunks saved, seconds). A task that runs out of memory has its chunk split
    (``split(job, a, b)`` -> the halves, recorded in the plan) and the halves submitted; any other
    task failure is a one-line TrainingFailed. Interrupting cancels the tasks still running."""
    import ray

    from .runner import is_out_of_memory
    backend, device = plan["backend"], plan["device"]
    gpu = backend == "triton" or str(device).startswith("cuda")
    remote = ray.remote(max_retries=MAX_RETRIES, num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0)(_train_remote)
    job_refs = {j.name: ray.put(j) for j in jobs}
    t0 = time.perf_counter()
    pending = {remote.remote(job_refs[j.name], a, b, backend, device): (j, a, b) for j, a, b in todo}
    saved = 0
    total = sum((b - a) * j.train.steps for j, a, b in todo)
    try:
        with tqdm(total=total, unit="inst-step", unit_scale=True, disable=not progress,
                  desc=f"{exp.name} [{backend} on ray]") as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    job, a, b = pending.pop(ref)
                    try:
                        tensors = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        cause = getattr(e, "cause", None)
                        if split is not None and cause is not None and is_out_of_memory(cause):
                            for s, t in split(job, a, b):
                                pending[remote.remote(job_refs[job.name], s, t, backend, device)] = (job, s, t)
                            continue
                        raise TrainingFailed(f"chunk {job.name} [{a}, {b}) failed on ray: {_one_line(e, cause)}") from None
                    if store.save(job.name, a, b, tensors):
                        saved += 1
                    else:
                        log(f"ray: chunk {job.name} [{a}, {b}) completed twice; the second copy is ignored")
                    bar.update((b - a) * job.train.steps)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    return saved, time.perf_counter() - t0


def _one_line(e, cause) -> str:
    """The failure without Ray's ANSI colours and traceback: 'ExceptionType: first line'."""
    if cause is not None:
        text = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"
    else:
        text = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return re.sub(r"\x1b\[[0-9;]*m", "", text).strip()
