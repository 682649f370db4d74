"""Memory a run needs, estimated before anything is built, so a sweep too big for this machine is
refused with the figure instead of dying with a MemoryError traceback (or the OOM killer) later.

The estimate is an upper-bound style sum over jobs, in bytes:
- the job's inputs: per-instance feature probabilities and importances (2 * n float64) and the
  experiment's instance tables (~10 float64 columns);
- its results, held together for the analysis: W, b, loss, loss history and weight snapshots in
  float32, counted 4 times (the chunks, their concatenation, float64 metrics, the written copy);
- one chunk in training: the torch backend's ~8 (B, n + m) float32 tensors per instance, or the
  fused backends' parameters and Adam moments.
It is compared with the memory the OS says is available now (MemAvailable).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ..errors import SpecError
from ..train import default_chunk_size


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


def job_bytes(size: JobSize, chunk: int, batch: int, backend: str) -> tuple[int, int]:
    """(bytes held for the whole run, peak bytes of one chunk in training) of one job."""
    params = 2 * size.m * size.n + size.m + size.n if size.untied else size.m * size.n + size.n
    per_instance = 8 * (2 * size.n + 10) + 4 * 4 * (params + 1 + size.history + size.snapshots * params)
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


def check_fits(sizes: list[JobSize], spec, backend: str, device: str, available: int | None = None) -> int:
    """Raise SpecError with the figures when the run cannot fit in memory; returns the estimate.

    An explicit --chunk-size whose chunk alone does not fit is named as such (field chunk_size)."""
    available = available_bytes() if available is None else available
    total, peak = 0, 0
    from ..spec import ModelSpec
    for s in sizes:
        model = ModelSpec(s.n, s.m, "abs-computation" if s.untied else "relu-output")
        train = spec.train_spec()
        if s.batch:
            train = dataclasses.replace(train, batch_size=s.batch)
        auto = default_chunk_size(model, train, backend, device)
        held, chunk = job_bytes(s, spec.chunk_size or auto, train.batch_size, backend)
        total += held
        peak = max(peak, chunk)
    if available is None:
        return total + peak
    if spec.chunk_size and peak > available:
        raise SpecError("chunk_size", f"small enough for this machine's {gib(available)} of free memory (one chunk of "
                                      f"{spec.chunk_size:,} instances needs about {gib(peak)})", spec.chunk_size)
    if total + peak > available:
        n = sum(s.instances for s in sizes)
        raise SpecError("memory", f"enough for the run: it needs about {gib(total + peak)} for {n:,} instances and "
                                  f"this machine has {gib(available)} free (use fewer instances, or run it in parts "
                                  "with a smaller sweep per --out)", None)
    return total + peak


def check_train_fits(model, data, training, backend: str, device: str, chunk_size: int, history_every: int = 0,
                     available: int | None = None) -> int:
    """engine.train's own check (the API has no experiment spec): raise SpecError("memory") with the
    figures when training data.n_instances models of this shape cannot fit; returns the estimate."""
    size = JobSize("train", data.n_instances, model.n_features, model.n_hidden,
                   history=training.steps // history_every if history_every else 0, untied=not model.tied,
                   examples=data.examples)
    held, chunk = job_bytes(size, chunk_size, training.batch_size, backend)
    available = available_bytes() if available is None else available
    if available is not None and held + chunk > available:
        raise SpecError("memory", f"enough for this call: {data.n_instances:,} models of n={model.n_features:,}, "
                                  f"m={model.n_hidden:,} need about {gib(held + chunk)} and this machine has "
                                  f"{gib(available)} free (train fewer or smaller models per call)", None)
    return held + chunk
