"""supbench engine: train thousands of toy models of superposition at once.

Public API::

    from engine import ModelSpec, DataSpec, TrainSpec, train, metrics, theory
    from engine import load_run  # a finished run directory's tables, weights and checks
"""
from . import metrics, theory
from .errors import BackendUnavailable, SpecError, UnsupportedShape
from .spec import DataSpec, ModelSpec, TrainSpec
from .train import TrainResult, train

__all__ = ["ModelSpec", "DataSpec", "TrainSpec", "train", "TrainResult", "metrics", "theory",
           "SpecError", "BackendUnavailable", "UnsupportedShape", "load_run", "Run"]
__version__ = "0.1.0"


def __getattr__(name):
    # load_run and Run on first use: engine.results imports pyarrow, which training never needs.
    if name in ("load_run", "Run"):
        from . import results
        return getattr(results, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
