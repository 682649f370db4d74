"""The run directory: spec.json, chunk checkpoints, Parquet tables, safetensors, summary.json.

Every file is written to a temporary name and renamed into place, so an interrupted run never
leaves a half-written file behind, and a finished chunk is never trained again.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.torch import load_file, save_file

from .errors import SpecError


class SpecMismatch(SpecError):
    """An existing run directory was made by a different spec."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600: give results the mode any new file gets
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def write_text(path: Path, text: str) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def write_parquet(path: Path, columns: dict) -> None:
    """One row per entry of the equal-length columns (numpy arrays or lists)."""
    table = pa.table({k: pa.array(v) for k, v in columns.items()})
    _atomic(Path(path), lambda tmp: pq.write_table(table, tmp))


def write_tensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_tensors(path: Path) -> dict:
    return load_file(str(path))


# spec.json entries that say how a run was set up, not what it computes: never compared on reopening.
BOOKKEEPING = ("plan", "preset", "analysis")


def _first_difference(old: dict, new: dict) -> str:
    keys = sorted((set(old) | set(new)) - set(BOOKKEEPING))
    # The experiment and results format first: a run of another experiment differs in every field.
    for key in [k for k in ("experiment", "results_format") if k in keys] + keys:
        if old.get(key) != new.get(key):
            return f"{key} is {old.get(key)!r} there but {new.get(key)!r} here"
    return "they differ"


def _lock(path: Path):
    """Hold an exclusive lock on ``path`` for this process's lifetime (released when it exits or is
    killed), so two runs never train into one directory at once. No-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(path, "a")  # never truncates: an existing directory's files stay as they were
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise SpecError("--out", "a directory that no other running supbench process is using", str(path.parent)) from None
    return handle


class RunDir:
    """A run directory for one spec. ``open`` checks it is writable and belongs to that spec."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock = None
        self.recorded: dict = {}
        self.chunks = self.root / "chunks"
        self.figures = self.root / "figures"

    @classmethod
    def open(cls, root, spec: dict) -> "RunDir":
        """Create (or reopen to resume) a run directory; nothing existing is overwritten.

        spec: what spec.json holds. Its ``plan`` entry (how the run is split and trained) is not
        compared: a reopened directory keeps the plan it was started with, in ``run.recorded``.
        Raises SpecError("--out", ...) if it cannot be written, SpecMismatch if it holds another spec.
        """
        run = cls(root)
        try:
            run.root.mkdir(parents=True, exist_ok=True)
            probe = run.root / ".write-probe"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise SpecError("--out", "a directory that can be created and written", f"{root}: {e.strerror}") from None
        run._lock = _lock(run.root / ".lock")
        try:
            run._check_spec(spec, root)
        except SpecError:
            run.close()
            raise
        return run

    def _check_spec(self, spec: dict, root) -> None:
        spec_path = self.root / "spec.json"
        if spec_path.exists():
            try:
                old = json.loads(spec_path.read_text())
            except ValueError:
                raise SpecMismatch("--out", "a new directory or one made by this command (its spec.json is unreadable)",
                                   str(root)) from None
            new = json.loads(json.dumps(spec))
            if not isinstance(old, dict) or {k: v for k, v in old.items() if k not in BOOKKEEPING} != \
                    {k: v for k, v in new.items() if k not in BOOKKEEPING}:
                diff = _first_difference(old, new) if isinstance(old, dict) else "its spec.json is not a spec"
                raise SpecMismatch("--out", f"a new directory or one made by the same options ({diff})", str(root))
            self.recorded = old
        else:
            write_json(spec_path, spec)
            self.recorded = json.loads(json.dumps(spec))

    def close(self) -> None:
        """Release the directory lock (also released when the process ends)."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()
            self._lock = None

    def chunk_path(self, index: int, job: str = "chunk") -> Path:
        """The finished chunk ``index`` of ``job``."""
        return self.chunks / f"{job}_{index:05d}.safetensors"

    def partial_path(self, index: int, job: str = "chunk") -> Path:
        """Mid-chunk checkpoint of a chunk still in training."""
        return self.chunks / f"{job}_{index:05d}.partial.safetensors"

    def snapshot_path(self, index: int, job: str, step: int) -> Path:
        """Parameters of a chunk in training after ``step`` steps (kept until the chunk is saved)."""
        return self.chunks / f"{job}_{index:05d}.snapshot_{step:09d}.safetensors"

    def has_chunk(self, index: int, job: str = "chunk") -> bool:
        return self.chunk_path(index, job).exists()

    def save_chunk(self, index: int, tensors: dict, job: str = "chunk") -> None:
        write_tensors(self.chunk_path(index, job), tensors)

    def load_chunk(self, index: int, job: str = "chunk") -> dict:
        return read_tensors(self.chunk_path(index, job))
