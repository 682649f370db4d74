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


# LLVM's CPUs with AVX-512 that it tunes prefer-256-bit (Intel's), as llvmlite names a host. Others
# are left to numba: AMD's Zen 4/5 (znver*) and Knights Landing already get 512-bit code, and unknown
# names (a VM's "nocona", which numba treats as AVX-less on purpose) are not second-guessed.
_PREFER_256_CPUS = ("skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake-client", "icelake-server",
                   "tigerlake", "rocketlake", "sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d",
                   "diamondrapids")


def _wide_vector_features() -> str | None:
    """The host CPU's LLVM features with 512-bit vectors preferred, where LLVM would otherwise keep
    an AVX-512 CPU to 256-bit ones (_PREFER_256_CPUS); else None. None too where the user switched
    numba's AVX off (NUMBA_ENABLE_AVX set) or numba would on its own.

    Why: LLVM tunes Intel's AVX-512 CPUs with prefer-256-bit, so numba vectorised the CPU kernels with
    256-bit registers there. On cores with two 512-bit FMA pipes (measured: this project's Intel Xeon,
    one core's sgemm at 62 FLOP/cycle) that is half their width; parts with one 512-bit pipe or that
    slow their clock for 512-bit code are unmeasured. The arithmetic of every lane is the same at either
    width (no reassociation), so this only changes speed (docs/cpu_backend.md: 1.05-1.29x on that
    Xeon, with the kernels' work arrays aligned)."""
    if "NUMBA_ENABLE_AVX" in _os.environ:
        return None
    try:
        from llvmlite import binding
        features = binding.get_host_cpu_features()
        if not features.get("avx512f", False) or binding.get_host_cpu_name() not in _PREFER_256_CPUS:
            return None
        return features.flatten() + ",-prefer-256-bit"
    except Exception:  # no llvmlite, or a host it cannot read: numba's own choice stands
        return None


# A directory the user chose wins. One this module set (SUPBENCH_NUMBA_CACHE_DIR marks it), inherited
# by a child process, does not: the sources may have changed since the parent hashed them.
_ours = "SUPBENCH_NUMBA_CACHE_DIR"
_changed = False
if not _os.environ.get("NUMBA_CACHE_DIR") or _os.environ.get("NUMBA_CACHE_DIR") == _os.environ.get(_ours):
    _os.environ["NUMBA_CACHE_DIR"] = _os.environ[_ours] = _numba_cache_dir()
    _changed = True
# The same for the CPU features numba compiles for: a value this module set (the marker says so),
# inherited by a child, is dropped first (the child may run on another CPU, or name one). Then, only
# where the user chose nothing (no NUMBA_CPU_FEATURES, even empty: numba reads "" as "the named CPU's
# own"; no NUMBA_CPU_NAME; no .numba_config.yaml here, which may name one), this host's wide features.
# numba takes them only if it has not made its code generator yet; kernels.cpu_products.WIDE_VECTORS
# reads what it got.
_ours_features = "SUPBENCH_NUMBA_CPU_FEATURES"
if _ours_features in _os.environ:
    if _os.environ.get("NUMBA_CPU_FEATURES") == _os.environ[_ours_features]:
        del _os.environ["NUMBA_CPU_FEATURES"]
    del _os.environ[_ours_features]
    _changed = True
if not ({"NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME"} & set(_os.environ) or _os.path.exists(".numba_config.yaml")):
    _features = _wide_vector_features()
    if _features:
        _os.environ["NUMBA_CPU_FEATURES"] = _os.environ[_ours_features] = _features
        _changed = True
if _changed and "numba" in _sys.modules:
    # numba read its config at import. Re-read it now: its compiler re-reads the whole config
    # whenever a NUMBA_* variable changed since it last looked, and doing that later, in the
    # middle of a kernel's compilation, undid kernels.cpu_tiles.slp_vectorize.
    _sys.modules["numba"].core.config.reload_config()
