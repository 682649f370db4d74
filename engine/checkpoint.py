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

from .store import DamagedFile, SpecMismatch, read_checked, read_tensors, write_tensors


class Checkpoint:
    """path None disables checkpointing. ``every_s``: least seconds between two saves.

    key: the spec hash this chunk's files carry (engine.store.spec_hash); with it, a checkpoint is
    only restored if its metadata says the same spec made it. steps: the chunk's training steps; a
    checkpoint claiming a step past them is not restored. A checkpoint that is damaged, another
    spec's or past the end is deleted (it is only a shortcut: the chunk trains from the start) and
    ``on_discard(message)`` says which file and why.
    """

    def __init__(self, path: Path | None = None, every_s: float = 30.0, key: str | None = None,
                 steps: int | None = None, on_discard=None):
        self.path = Path(path) if path is not None else None
        self.every_s = every_s
        self.key = key
        self.steps = steps
        self.on_discard = on_discard
        self._last = time.monotonic()
        self._loaded = ()  # the last load()'s result, until save() or remove(): the runner and the
        #                    backend both ask for it, and a checkpoint can hold large tensors

    def load(self) -> dict | None:
        if self._loaded != ():
            return self._loaded
        self._loaded = self._read()
        return self._loaded

    def _read(self) -> dict | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            saved = read_checked(self.path, self.key) if self.key is not None else read_tensors(self.path)
            step = int(saved["next_step"])
            if self.steps is not None and not 0 <= step <= self.steps:
                raise DamagedFile(f"{self.path} claims step {step}, outside this chunk's 0..{self.steps}")
        except (DamagedFile, SpecMismatch, KeyError, ValueError) as e:
            why = e.allowed if isinstance(e, SpecMismatch) else str(e)
            self.path.unlink(missing_ok=True)
            if self.on_discard is not None:
                self.on_discard(f"discarded a checkpoint: {why}; the chunk trains from its start")
            return None
        return saved

    def due(self) -> bool:
        return self.path is not None and time.monotonic() - self._last >= self.every_s

    def save(self, tensors: dict) -> None:
        meta = {"spec_hash": self.key} if self.key is not None else None
        write_tensors(self.path, {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=meta)
        self._last = time.monotonic()
        self._loaded = ()

    def remove(self) -> None:
        self._loaded = ()
        if self.path is not None and self.path.exists():
            self.path.unlink()


def next_step(saved: dict | None) -> int:
    return int(saved["next_step"]) if saved else 0


def step_tensor(step: int) -> torch.Tensor:
    return torch.tensor(step, dtype=torch.int64)
