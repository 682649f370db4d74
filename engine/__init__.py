"""supbench engine: train thousands of toy models of superposition at once.

Public API::

    from engine import ModelSpec, DataSpec, TrainSpec, train, metrics, theory
"""
from . import metrics, theory
from .errors import BackendUnavailable, SpecError, UnsupportedShape
from .spec import DataSpec, ModelSpec, TrainSpec
from .train import TrainResult, train

__all__ = ["ModelSpec", "DataSpec", "TrainSpec", "train", "TrainResult", "metrics", "theory",
           "SpecError", "BackendUnavailable", "UnsupportedShape"]
__version__ = "0.1.0"
