"""The run directory: spec.json, chunk checkpoints, Parquet tables, safetensors, summary.json.

Every file is written to a temporary name, flushed to disk (fsync) and renamed into place, so an
interrupted run (or a power loss) never leaves a half-written or empty file behind, and a finished
chunk is never trained again. Every chunk and checkpoint carries in its metadata the hash of the
spec and chunk that made it (``spec_hash``): a file another spec made is never mistaken for this
one's, and a damaged file is named and retrained, never read as a result.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import safe_open
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
        _fsync(tmp)  # the data is on disk before the name points at it: no empty file after a power loss
        os.replace(tmp, path)
        _fsync(path.parent)  # and the rename itself
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # a directory cannot be opened on some platforms (Windows): best effort
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_with(path: Path, write) -> None:
    """Write ``path`` atomically with ``write(tmp_path)`` (temporary name, fsync, rename)."""
    _atomic(Path(path), write)


def write_json(path: Path, obj) -> None:
    """Strict JSON: NaN and infinities (a diverged model's figures) are written as null."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def _finite(obj):
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


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


def spec_hash(obj) -> str:
    """A short stable hash of a JSON-able object (what made a chunk: spec identity, job, range, data stream)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


class DamagedFile(ValueError):
    """A run file that cannot be read, or does not hold what its name says. ``str()`` names the file."""


def read_checked(path: Path, key: str) -> dict:
    """The tensors of a chunk or checkpoint file whose metadata ``spec_hash`` is ``key``.

    Raises FileNotFoundError if absent, DamagedFile if unreadable (truncated, empty, not
    safetensors) and SpecMismatch if it was made by another spec (its hash differs)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types (header too small, truncated, ...)
        raise DamagedFile(f"{path} is damaged ({str(e).strip() or type(e).__name__})") from None
    if meta.get("spec_hash") != key:
        raise SpecMismatch("--out", "a new directory or one made by the same options "
                           f"({path} was made by another spec or chunk plan: its spec_hash is "
                           f"{meta.get('spec_hash')!r}, this run's is {key!r})", str(path.parent.parent))
    return tensors


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
            run._refuse_foreign_directory(root)  # before anything is written into it
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
        run._remove_orphans()  # only in a directory that is this run's
        return run

    def _refuse_foreign_directory(self, root) -> None:
        """A directory without spec.json must be empty (but for a .lock our own interrupted start may
        have left): anything else is someone's files, never written over or next to."""
        if (self.root / "spec.json").exists():
            return
        others = sorted(p.name for p in self.root.iterdir() if p.name != ".lock")
        if others:
            raise SpecMismatch("--out", "a new or empty directory, or a run directory (this one has no spec.json "
                               f"but holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''})", str(root))

    def _remove_orphans(self) -> None:
        """Temporary files of a writer killed mid-write (SIGKILL, power loss): never results, and
        nobody else writes here while we hold the lock."""
        for folder in (self.root, self.chunks):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)

    def _check_spec(self, spec: dict, root) -> None:
        spec_path = self.root / "spec.json"
        if spec_path.exists():
            try:
                old = json.loads(spec_path.read_text())
            except (ValueError, UnicodeDecodeError):
                old = None
            if not isinstance(old, dict):
                raise SpecMismatch("--out", f"a new directory or one made by this command ({spec_path} is damaged: "
                                   "not a spec; move the directory aside to start over)", str(root))
            new = json.loads(json.dumps(spec))
            if {k: v for k, v in old.items() if k not in BOOKKEEPING} != \
                    {k: v for k, v in new.items() if k not in BOOKKEEPING}:
                raise SpecMismatch("--out", f"a new directory or one made by the same options "
                                   f"({_first_difference(old, new)})", str(root))
            self.recorded = old
        else:
            write_json(spec_path, spec)
            self.recorded = json.loads(json.dumps(spec))

    def record_plan(self, plan: dict) -> None:
        """Write a changed chunk plan into spec.json (only untrained chunks ever change)."""
        self.record("plan", plan)

    def record(self, key: str, value) -> None:
        """Rewrite one bookkeeping entry of spec.json (BOOKKEEPING: plan, preset, analysis)."""
        assert key in BOOKKEEPING, key
        self.recorded = {**self.recorded, key: json.loads(json.dumps(value))}
        write_json(self.root / "spec.json", self.recorded)

    def close(self) -> None:
        """Release the directory lock (also released when the process ends)."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()
            self._lock = None

    def chunk_path(self, job: str, start: int, stop: int) -> Path:
        """The finished chunk of instances [start, stop) of ``job``."""
        return self.chunks / f"{job}_{start:09d}-{stop:09d}.safetensors"

    def partial_path(self, job: str, start: int, stop: int) -> Path:
        """Mid-chunk checkpoint of a chunk still in training."""
        return self.chunks / f"{job}_{start:09d}-{stop:09d}.partial.safetensors"

    def snapshot_path(self, job: str, start: int, stop: int, step: int) -> Path:
        """Parameters of a chunk in training after ``step`` steps (kept until the chunk is saved)."""
        return self.chunks / f"{job}_{start:09d}-{stop:09d}.snapshot_{step:09d}.safetensors"

    def chunk_files(self, job: str) -> dict[tuple[int, int], Path]:
        """Finished chunk files of ``job`` on disk: {(start, stop): path} (validity not checked)."""
        found = {}
        for path in self.chunks.glob(f"{job}_*-*.safetensors"):
            rng = path.name[len(job) + 1:-len(".safetensors")]
            a, sep, b = rng.partition("-")
            if sep and a.isdigit() and b.isdigit():
                found[(int(a), int(b))] = path
        return found
