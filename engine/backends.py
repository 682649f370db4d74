"""The one seam between the engine and kernels/: which backend trains, and whether it can.

``torch`` (engine/torch_backend.py around engine/reference.py) runs anywhere and is the reference.
``triton`` (kernels/, Triton) needs triton and a CUDA GPU. ``cpu`` (kernels/cpu_*.py, numba) needs
numba. kernels/ is imported lazily, only through engine/triton_backend.py and engine/cpu_backend.py,
so the engine imports and runs on machines without a GPU, triton or numba.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

from .errors import BackendUnavailable, SpecError, UnsupportedShape

BACKENDS = ("auto", "torch", "triton", "cpu")


def triton_usable() -> bool:
    """True when the triton backend can run: triton importable and a CUDA device present
    (or the Triton interpreter switched on with TRITON_INTERPRET=1, which tests use on CPU)."""
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def cpu_usable() -> bool:
    """True when the fused cpu backend can run: numba importable."""
    return importlib.util.find_spec("numba") is not None


def check_threads(threads) -> None:
    """Raise SpecError unless ``threads`` is None or an integer in [1, the threads numba may use]."""
    if threads is None:
        return
    top = os.cpu_count() or 1
    if cpu_usable():
        import numba
        top = numba.config.NUMBA_NUM_THREADS
    if not (isinstance(threads, int) and not isinstance(threads, bool) and 1 <= threads <= top):
        raise SpecError("threads", f"an integer in [1, {top}]", threads)


@contextlib.contextmanager
def torch_threads(threads: int | None, device):
    """torch.set_num_threads(threads) inside the block when torch computes on a CPU (the torch backend's
    training, and every run's analysis: ``--threads``), torch's previous setting restored after;
    nothing otherwise."""
    before = torch.get_num_threads()
    if threads and torch.device(device).type == "cpu":
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


_SELF_TESTS: dict = {}


def resolve(name: str, model=None, train=None, log=None, sets=(), examples: int = 0) -> str:
    """Map ``auto`` to ``triton`` when usable on a CUDA device, else ``cpu`` when numba is
    installed, else ``torch``; validate the rest.

    With a model, ``auto`` also runs the triton backend's self-test for that shape (one step
    against the float64 reference, once per shape and process) and falls back, saying why
    through ``log``, if the kernels cannot train it correctly here. An explicit ``triton``
    never falls back.
    """
    if name not in BACKENDS:
        raise SpecError("backend", "one of " + ", ".join(BACKENDS), name)
    if name == "auto":
        fallback = "cpu" if cpu_usable() and cpu_supports(model) else "torch"
        if cpu_usable() and not cpu_supports(model) and log is not None:
            log(f"note: the cpu backend does not train {model.variant} models; using torch")
        if not (torch.cuda.is_available() and triton_usable()):
            return fallback
        if model is not None:
            key = (model.n_features, model.n_hidden, model.variant, getattr(train, "precision", "fp32"))
            if key not in _SELF_TESTS:
                from .triton_backend import VARIANTS, self_test
                _SELF_TESTS[key] = (f"it does not implement the {model.variant} variant"
                                    if model.variant not in VARIANTS else self_test(model, train))
            reason = _SELF_TESTS[key] or ("it draws fresh independent features only, and this data has "
                                          "feature sets or a finite dataset" if sets or examples else None)
            if reason:
                if log is not None:
                    log(f"warning: triton backend unavailable for this model ({reason}); using {fallback}")
                return fallback
        return "triton"
    if name == "triton" and not triton_usable():
        raise BackendUnavailable("backend: 'triton' needs triton and a CUDA GPU, and none is available here; "
                                 "choose torch or auto")
    if name == "cpu" and not cpu_usable():
        raise BackendUnavailable("backend: 'cpu' needs numba (pip install numba); choose torch or auto")
    return name


def cpu_supports(model) -> bool:
    """Whether the fused cpu kernels train this model (None: any model)."""
    return model is None or model.variant in CPU_VARIANTS


# Variants the cpu kernels implement (kernels/cpu_train.py; abs-computation: kernels/cpu_train_untied.py).
CPU_VARIANTS = ("relu-output", "linear", "relu-hidden", "abs-computation")


def default_device(backend: str) -> str:
    if backend == "cpu":
        return "cpu"
    if backend == "triton":
        return "cuda" if torch.cuda.is_available() else "cpu"  # cpu only under TRITON_INTERPRET=1
    return "cuda" if torch.cuda.is_available() else "cpu"


def train_chunk_fn(backend: str):
    """The chunk trainer of a resolved backend; all share the signature of
    :func:`engine.torch_backend.train_chunk`."""
    if backend == "torch":
        from .torch_backend import train_chunk
        return train_chunk
    if backend == "cpu":
        from .cpu_backend import train_chunk  # imports kernels/cpu_train (needs numba)
        return train_chunk
    from .triton_backend import train_chunk  # imports kernels/ (needs triton)
    return train_chunk


def check_supported(backend: str, model, train, sets=(), examples: int = 0, device: str | None = None) -> None:
    """Raise UnsupportedShape early (before any training) if the backend cannot train this model
    on data with these feature sets (DataSpec.sets), and SpecError("precision") for tf32 where it
    would not be used (a run must not record a precision it did not train in)."""
    device = str(device or default_device(backend))
    if getattr(train, "precision", "fp32") == "tf32" and backend != "triton" and not device.startswith("cuda"):
        raise SpecError("precision", f"fp32 on the {backend} backend on a CPU (tf32 is a CUDA tensor-core mode; "
                                     "here every matmul is exact fp32)", "tf32")
    if backend == "triton":
        from .triton_backend import check_supported as check
        check(model, train, sets, examples)
    if backend == "cpu" and not cpu_supports(model):
        raise UnsupportedShape(f"backend: cpu does not train {model.variant!r} models (its kernels implement "
                               f"{', '.join(CPU_VARIANTS)}); choose torch")
