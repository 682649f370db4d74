"""Mid-chunk checkpoints: a chunk's whole training state, saved atomically every so often, so
an interrupted run resumes inside a chunk, not only at chunk boundaries.

Both backends save the same kind of dict of tensors (parameters, Adam moments, loss sums, the
next 0-based step, and for the torch backend its generator state); loading it and continuing
gives exactly the result of an uninterrupted run.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .store import read_tensors, write_tensors


class Checkpoint:
    """path None disables checkpointing. ``every_s``: least seconds between two saves."""

    def __init__(self, path: Path | None = None, every_s: float = 30.0):
        self.path = Path(path) if path is not None else None
        self.every_s = every_s
        self._last = time.monotonic()

    def load(self) -> dict | None:
        if self.path is None or not self.path.exists():
            return None
        return read_tensors(self.path)

    def due(self) -> bool:
        return self.path is not None and time.monotonic() - self._last >= self.every_s

    def save(self, tensors: dict) -> None:
        write_tensors(self.path, {k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        self._last = time.monotonic()

    def remove(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()


def next_step(saved: dict | None) -> int:
    return int(saved["next_step"]) if saved else 0


def step_tensor(step: int) -> torch.Tensor:
    return torch.tensor(step, dtype=torch.int64)
