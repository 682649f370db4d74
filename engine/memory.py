"""Memory a training call needs, estimated before anything is allocated (engine.train's check; the
CLI's sweeps add their analysis in engine/experiments/memory.py, which explains the terms).

In bytes, per job: its inputs (2 n float64 per instance and ~10 float64 table columns), its results
(W, b, loss, history, snapshots in float32) times the copies held at once, and one chunk in training
(the torch backend's ~8 (B, n + m) float32 tensors per instance, or the fused backends' parameters
and Adam moments). Compared with the memory the OS says is available now (MemAvailable).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import SpecError


@dataclass(frozen=True)
class JobSize:
    """What a job will train, without building it: instances, model shape, history length, snapshots."""

    name: str
    instances: int
    n: int
    m: int
    history: int = 0
    snapshots: int = 0
    untied: bool = False  # two weight matrices and two biases (abs-computation)
    batch: int = 0        # the job's own batch size, when it is not the spec's (finite datasets)
    examples: int = 0     # a finite dataset of this many rows per instance (held in memory by torch)


def job_bytes(size: JobSize, chunk: int, batch: int, backend: str, copies: int = 4) -> tuple[int, int]:
    """(bytes held for the whole run, peak bytes of one chunk in training) of one job. copies: of the
    results held at once (a sweep: the chunks, their concatenation, float64 metrics, the written copy)."""
    params = 2 * size.m * size.n + size.m + size.n if size.untied else size.m * size.n + size.n
    per_instance = 8 * (2 * size.n + 10) + 4 * copies * (params + 1 + size.history + size.snapshots * params)
    if backend == "torch":
        per_chunk = 4 * 8 * batch * (size.n + size.m) + 4 * 5 * params + 4 * size.examples * size.n
    else:
        per_chunk = 4 * 5 * params + 4 * size.history
    return size.instances * per_instance, min(chunk, size.instances) * per_chunk


def available_bytes() -> int | None:
    """Memory available to a new allocation now (Linux MemAvailable), else physical memory, else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def gib(x: float) -> str:
    return f"{x / 2**30:.1f} GiB"


def check_train_fits(model, data, training, backend: str, chunk_size: int, history_every: int = 0,
                     available: int | None = None) -> int:
    """engine.train's check: raise SpecError("memory") with the figures when training data.n_instances
    models of this shape cannot fit; returns the estimate. Two copies of the results: the chunks and
    their concatenation."""
    history = -(-training.steps // history_every) if history_every else 0
    size = JobSize("train", data.n_instances, model.n_features, model.n_hidden, history=history,
                   untied=not model.tied, examples=data.examples)
    held, chunk = job_bytes(size, chunk_size, training.batch_size, backend, copies=2)
    available = available_bytes() if available is None else available
    if available is not None and held + chunk > available:
        raise SpecError("memory", f"enough for this call: {data.n_instances:,} models of n={model.n_features:,}, "
                                  f"m={model.n_hidden:,} need about {gib(held + chunk)} and this machine has "
                                  f"{gib(available)} free (train fewer or smaller models per call)", None)
    return held + chunk
