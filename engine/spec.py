"""What to train: frozen, validated specs for the model, the data and the training run.

Every spec validates itself on construction and raises :class:`engine.errors.SpecError`
naming the field and the allowed range. ``to_dict``/``from_dict`` round-trip through JSON.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from .errors import SpecError

VARIANTS = ("relu-output", "linear", "relu-hidden", "abs-computation")
OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("constant", "linear", "cosine")
PRECISIONS = ("fp32", "tf32")
MIN_PROBABILITY = 2.0**-24  # the smallest feature probability a float32 uniform can resolve
FLOAT32_TINY = 2.0**-126  # the smallest normal float32: a smaller lr or eps is 0 (or subnormal) in the kernels
MAX_STEPS = 10_000_000  # 1,000x the paper's 10,000; the schedule table holds 3 float32 per step
MAX_IMPORTANCE = 1e15  # float32 Adam squares the gradient (2 I error / (B n)): far larger overflows to inf
SET_KINDS = ("correlated", "anticorrelated")


def _is_int_in(value, lo: int, hi: int | None = None) -> bool:
    """Whether value is an integer (not a bool) in [lo, hi] (hi None: no upper bound)."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= lo
    return ok and (hi is None or value <= hi)


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    """Raise SpecError unless value is an integer in [lo, hi]; returns it as a Python int (a numpy
    integer kept in a spec would make its to_dict() unwritable as JSON)."""
    if not _is_int_in(value, lo, hi):
        allowed = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
        raise SpecError(name, allowed, value)
    return int(value)


def _set_int(spec, name: str, lo: int, hi: int | None = None) -> None:
    """Check the integer field ``name`` of a frozen spec and store it as a Python int."""
    object.__setattr__(spec, name, _check_int(name, getattr(spec, name), lo, hi))


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise SpecError(name, "one of " + ", ".join(choices), value)


def _check_float(name: str, value, lo: float, hi: float, lo_open=False, hi_open=False, lo_text: str = "") -> float:
    """Raise SpecError unless value is a number in the interval; returns it as a Python float.
    Strings and booleans are refused, not converted: a spec stores what it was given. lo_text: how
    the message writes lo (e.g. "2^-24": six digits would round it below itself)."""
    try:
        v = math.nan if isinstance(value, (str, bytes, bool, np.bool_)) else float(value)
    except (TypeError, ValueError, RuntimeError):
        v = math.nan
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise SpecError(name, f"a number in {lb}{lo_text or f'{lo:g}'}, {hi:g}{rb}", value)
    return v


def check_density(name: str, value) -> float:
    """A feature density (probability) field: a number in [2^-24, 1] (DataSpec's range, MIN_PROBABILITY)."""
    return _check_float(name, value, MIN_PROBABILITY, 1.0, lo_text="2^-24")


@dataclass(frozen=True)
class ModelSpec:
    """The tied toy model x' = act(W^T W x + b), W of shape (n_hidden, n_features) per instance.

    variant: ``relu-output`` (act = ReLU, the paper's main model), ``linear`` (act = identity),
    ``relu-hidden`` (the privileged-basis model: h = ReLU(W x), x' = ReLU(W^T h + b)) or
    ``abs-computation`` (untied, computation in superposition: h = ReLU(W1 x + b1),
    y' = ReLU(W2 h + b2), inputs x_i ~ U[-1, 1] when active, target |x|).

    Parameters (:meth:`param_shapes`, per instance): tied variants W (m, n) and b (n,);
    abs-computation W1 (m, n), b1 (m,), W2 (n, m), b2 (n,). Every backend, the run store and the
    results carry them by these names.
    """

    n_features: int
    n_hidden: int
    variant: str = "relu-output"

    def __post_init__(self):
        _set_int(self, "n_features", 1)
        _set_int(self, "n_hidden", 1)
        _check_choice("variant", self.variant, VARIANTS)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(**d)

    @property
    def tied(self) -> bool:
        """One W used twice (W, then W^T), and an output bias b; False for abs-computation."""
        return self.variant != "abs-computation"

    def param_shapes(self) -> dict:
        """{name: per-instance shape} of the trained parameters, in a fixed order."""
        n, m = self.n_features, self.n_hidden
        if self.tied:
            return {"W": (m, n), "b": (n,)}
        return {"W1": (m, n), "b1": (m,), "W2": (n, m), "b2": (n,)}

    @property
    def param_count(self) -> int:
        """Trained numbers per instance."""
        return sum(math.prod(s) for s in self.param_shapes().values())


@dataclass(frozen=True, eq=False)
class DataSpec:
    """Per-instance, per-feature sparsity and importance.

    feature_probability: (K, n) float, each in [2^-24, 1]; feature i of an example is U[0,1) with this
        probability, else 0 (density = 1 - sparsity S_i).
    importance: (K, n) float >= 0, the loss weight I_i. A (n,) vector or a scalar broadcasts.
    Both are stored as float64 numpy arrays of shape (K, n).
    sets: feature sets that are not independent, ((kind, first, size), ...), disjoint, each with one
        probability p (its members' probabilities must be equal in every instance):
        ``correlated``: all members zero or nonzero together (values independent U[0,1));
        ``anticorrelated`` (size >= 2): all zero with probability 1 - p, else exactly one member,
        chosen uniformly, is active. The sampling rule is engine.reference.features_from_uniform.
    examples: 0 (default) draws a fresh batch every step; T > 0 trains every instance on a finite
        dataset of T examples (the double-descent setting), drawn once from the Philox dataset
        stream (engine.rng.dataset_uniforms) by the same rule, the same on every backend; every
        step then trains on the whole dataset (TrainSpec.batch_size must equal T).
    """

    feature_probability: np.ndarray
    importance: np.ndarray = field(default=None)
    sets: tuple = ()
    examples: int = 0

    def __post_init__(self):
        p = _float_array("feature_probability", self.feature_probability, "a (K, n) array of numbers")
        if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1:
            raise SpecError("feature_probability", "a (K, n) array with K, n >= 1", tuple(p.shape))
        # Below 2^-24 a float32 uniform (24 random bits) is below p only when it is exactly 0, and 1/p
        # may overflow float32 (0 * inf = NaN): such a feature can never be sampled correctly.
        ok = (p >= MIN_PROBABILITY) & (p <= 1)
        if not np.all(ok):
            raise SpecError("feature_probability", "in [2^-24, 1] for every instance and "
                                                   "feature (the resolution of a float32 uniform)", float(p[~ok].flat[0]))
        imp = (np.ones_like(p) if self.importance is None
               else _float_array("importance", self.importance, f"a number or an array broadcastable to {p.shape}"))
        try:
            imp = np.broadcast_to(imp, p.shape).copy()
        except ValueError:
            raise SpecError("importance", f"broadcastable to feature_probability's shape {p.shape}",
                            tuple(np.shape(imp))) from None
        ok = np.isfinite(imp) & (imp >= 0) & (imp <= MAX_IMPORTANCE)
        if not np.all(ok):
            raise SpecError("importance", f"in [0, {MAX_IMPORTANCE:g}] (float32 Adam squares the gradient)",
                            float(imp[~ok].flat[0]))
        object.__setattr__(self, "feature_probability", p)
        object.__setattr__(self, "importance", imp)
        object.__setattr__(self, "sets", check_sets(() if self.sets is None else self.sets, p))
        _set_int(self, "examples", 0, 2**20)  # a batch: TrainSpec.batch_size's range

    @property
    def n_instances(self) -> int:
        return self.feature_probability.shape[0]

    @property
    def n_features(self) -> int:
        return self.feature_probability.shape[1]

    def select(self, start: int, stop: int) -> "DataSpec":
        """The instances [start, stop) as their own DataSpec."""
        return DataSpec(self.feature_probability[start:stop], self.importance[start:stop], self.sets, self.examples)

    def to_dict(self) -> dict:
        return {"feature_probability": self.feature_probability.tolist(), "importance": self.importance.tolist(),
                "sets": [list(s) for s in self.sets], "examples": self.examples}

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        return cls(np.array(d["feature_probability"]), np.array(d["importance"]),
                   tuple(tuple(s) for s in d.get("sets", ())), d.get("examples", 0))


def _float_array(name: str, value, allowed: str) -> np.ndarray:
    """value as a float64 numpy array, or SpecError(name) if it is not numbers (ragged, strings, complex)."""
    try:
        if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
            value = value.detach().cpu().numpy()
        a = np.asarray(value)
        if a.dtype.kind not in "iuf":  # strings, booleans, complex, objects: refused, not converted
            raise TypeError
        a = a.astype(np.float64)
    except (TypeError, ValueError, RuntimeError):
        raise SpecError(name, allowed, type(value).__name__) from None
    return a


def check_dataset(data: "DataSpec", train: "TrainSpec") -> None:
    """A finite dataset is the batch of every step: raise SpecError unless batch_size equals it. And
    a batch must fit the Philox counter: word c0 of a row is 32-bit (engine/rng.py's layout), so
    rows x ceil(n / 4) calls (n <= 2: rows x n / 4) must stay below 2^32, or batches would repeat."""
    if data.examples and train.batch_size != data.examples:
        raise SpecError("batch_size", f"equal to the finite dataset's {data.examples} examples (every step trains "
                                      "on the whole dataset)", train.batch_size)
    n = data.n_features
    calls_per_row = n / 4 if n <= 2 else math.ceil(n / 4)
    if train.batch_size * calls_per_row >= 2**32:
        top = int((2**32 - 1) // calls_per_row)
        raise SpecError("batch_size", f"at most {top:,} rows for {n:,} features (a batch's Philox counter is 32-bit)",
                        train.batch_size)


def check_sets(sets, p: np.ndarray) -> tuple:
    """Validated feature sets as a tuple of (kind, first, size); raises SpecError("sets", ...)."""
    n = p.shape[1]
    out, used = [], np.zeros(n, bool)
    for s in sets:
        try:
            kind, first, size = s
        except (TypeError, ValueError):
            raise SpecError("sets", "a sequence of (kind, first feature, size) triples", s) from None
        _check_choice("sets", kind, SET_KINDS)
        lo = 2 if kind == "anticorrelated" else 1  # members at least
        if not _is_int_in(first, 0, n - lo):
            article = "an" if kind == "anticorrelated" else "a"
            raise SpecError("sets", f"(kind, first, size) with first an integer in [0, {n - lo}] for {article} {kind} "
                                    f"set of n = {n} features", s)
        if not _is_int_in(size, lo, n - first):
            raise SpecError("sets", f"(kind, first, size) with size an integer in [{lo}, {n - first}] for this "
                                    f"{kind} set from feature {first} of n = {n}", s)
        if used[first:first + size].any():
            raise SpecError("sets", "disjoint feature sets", s)
        used[first:first + size] = True
        if not np.all(p[:, first:first + size] == p[:, first:first + 1]):
            raise SpecError("sets", f"sets whose members share one feature probability per instance (features "
                                    f"{first}..{first + size - 1} differ)", s)
        out.append((str(kind), int(first), int(size)))
    return tuple(out)


@dataclass(frozen=True)
class TrainSpec:
    """How to train. Defaults are Anthropic's notebook: AdamW(1e-3, wd 0.01), batch 1024, 10k steps.

    schedule: lr multiplier at step t of T: constant 1; linear 1 - t/T; cosine cos(pi/2 * t/(T-1)).
    precision: ``fp32`` (float32 accuracy: exact FMA products, except on the triton blocked path for
    m <= 32, where three tf32 tensor-core passes give fp32-class error, kernels/layout.py) or ``tf32``
    (one tensor-core pass per product, opt-in).
    seed: keys every random number (init and data) together with the instance index and step.
    """

    steps: int = 10_000
    batch_size: int = 1024
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: str = "constant"
    seed: int = 0
    precision: str = "fp32"

    def __post_init__(self):
        _set_int(self, "steps", 1, MAX_STEPS)
        _set_int(self, "batch_size", 1, 2**20)
        # Stored as Python floats (a number string or a tensor would be kept as given otherwise).
        object.__setattr__(self, "lr", _check_float("lr", self.lr, FLOAT32_TINY, 10.0, lo_text="2^-126"))
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        object.__setattr__(self, "weight_decay", _check_float("weight_decay", self.weight_decay, 0.0, 1.0))
        if self.optimizer == "adamw" and self.lr * self.weight_decay >= 1.0:
            # AdamW multiplies every parameter by 1 - lr * wd each step: at or below 0 it flips or
            # zeroes the weights every step, and the run diverges (NaN) instead of training.
            raise SpecError("weight_decay", f"below 1 / lr = {1 / self.lr:.4g} with adamw (lr * weight_decay "
                                            "must stay below 1)", self.weight_decay)
        object.__setattr__(self, "beta1", _check_float("beta1", self.beta1, 0.0, 1.0, hi_open=True))
        object.__setattr__(self, "beta2", _check_float("beta2", self.beta2, 0.0, 1.0, hi_open=True))
        object.__setattr__(self, "eps", _check_float("eps", self.eps, FLOAT32_TINY, 1.0, lo_text="2^-126"))
        _check_choice("schedule", self.schedule, SCHEDULES)
        _set_int(self, "seed", 0, 2**63 - 1)
        _check_choice("precision", self.precision, PRECISIONS)

    def lr_at(self, step: int) -> float:
        """Learning rate used at 0-based ``step``."""
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "linear":
            return self.lr * (1.0 - step / self.steps)
        return self.lr * math.cos(0.5 * math.pi * step / max(1, self.steps - 1))

    @property
    def loss_window(self) -> int:
        """Steps averaged into the reported final loss: the last min(100, max(1, steps // 10))."""
        return min(100, max(1, self.steps // 10))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSpec":
        return cls(**d)
