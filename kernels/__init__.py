"""supbench's fused training kernels: Triton for CUDA GPUs (train_*.py, sampling.py, ...) and numba
for CPUs (cpu_rng.py, cpu_train.py). Only kernel code and thin launchers live here; the engine
reaches them through engine/backends.py alone (engine/triton_backend.py, engine/cpu_backend.py)."""

import hashlib as _hashlib
import os as _os
import sys as _sys
from pathlib import Path as _Path


def _numba_cache_dir(here: _Path | None = None) -> str:
    """Where numba caches the compiled CPU kernels: a directory named by a hash of every cpu_*.py here.

    Why: numba keys its on-disk cache on the source file of the function compiled, not on the files
    whose functions it inlines. cpu_train_untied.py inlines helpers from cpu_train.py, so a change
    to those helpers kept serving the old machine code from the cache (a silent wrong gradient, seen
    in development). A new hash gives a fresh cache whenever any CPU kernel source changes.
    Beside the kernels when that is writable, else in the user's cache directory."""
    here = here or _Path(__file__).resolve().parent
    digest = _hashlib.sha256()
    for path in sorted(here.glob("cpu_*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    name = f"numba-{digest.hexdigest()[:16]}"
    if _os.access(here, _os.W_OK):
        return str(here / "__pycache__" / name)
    base = _os.environ.get("XDG_CACHE_HOME") or _os.path.join(_os.path.expanduser("~"), ".cache")
    return _os.path.join(base, "supbench", name)


# A directory the user chose wins. One this module set (SUPBENCH_NUMBA_CACHE_DIR marks it), inherited
# by a child process, does not: the sources may have changed since the parent hashed them.
_ours = "SUPBENCH_NUMBA_CACHE_DIR"
if not _os.environ.get("NUMBA_CACHE_DIR") or _os.environ.get("NUMBA_CACHE_DIR") == _os.environ.get(_ours):
    _os.environ["NUMBA_CACHE_DIR"] = _os.environ[_ours] = _numba_cache_dir()
    if "numba" in _sys.modules:
        # numba read its config at import. Re-read it now: its compiler re-reads the whole config
        # whenever a NUMBA_* variable changed since it last looked, and doing that later, in the
        # middle of a kernel's compilation, undid kernels.cpu_tiles.slp_vectorize.
        _sys.modules["numba"].core.config.reload_config()
