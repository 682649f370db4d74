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

from ..errors import SpecError
from ..memory import JobSize, available_bytes, gib, job_bytes  # noqa: F401 (JobSize: the experiments' import)
from ..train import default_chunk_size


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
