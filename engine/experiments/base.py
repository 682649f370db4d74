"""What an experiment is: a frozen spec with presets, the jobs it trains, and its analysis.

An experiment is data, not a program. It declares
- a spec dataclass (subclass of :class:`CommonSpec`): every field validated in ``__post_init__``,
  documented in its metadata (the CLI's help text comes from there: one source of truth);
- presets: ``quick`` (minutes on a 2-core CPU), ``paper`` (the paper's scale) and optionally
  ``quick-fused`` (the quick preset when a fused backend trains, which can afford more);
- ``jobs(spec)``: the models to train, as :class:`Job` s (one model shape/variant each, with a
  DataSpec holding one row per trained instance);
- ``analyse(spec, results, run_dir)``: trained weights -> tables, figures and paper checks.
The runner (engine/experiments/runner.py) does everything else once for every experiment.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import SpecError
from ..spec import (OPTIMIZERS, PRECISIONS, SCHEDULES, DataSpec, ModelSpec, TrainSpec, _check_float, _check_int,
                    check_dataset, check_density)

FUSED_BACKENDS = ("cpu", "triton")
# Spec fields that say how to run, not what to compute: kept out of a run's identity (spec.json's
# "plan" records what they resolved to, once, so a resume on another machine trains the same chunks).
PLAN_FIELDS = ("backend", "chunk_size")


def option_name(field: str) -> str:
    """The CLI option of a spec field: chunk_size -> --chunk-size."""
    return field if field.startswith("-") else "--" + field.replace("_", "-")


def default_preset(backend: str) -> str:
    """What ``--preset auto`` means: the paper's scale when the triton backend trains, else quick."""
    return "paper" if backend == "triton" else "quick"


def _plain(value):
    """value with numpy scalars (also inside tuples and lists) as the Python numbers they hold."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value


def option(default, help: str, **meta):
    """A spec field with its CLI help text (and optional ``choices`` for string fields)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class CommonSpec:
    """Training fields every experiment has. Subclasses add their own fields (all with defaults)."""

    steps: int = option(10_000, "Training steps per model.")
    batch_size: int = option(1024, "Examples per training step.")
    lr: float = option(1e-3, "Learning rate.")
    optimizer: str = option("adamw", "Optimizer.", choices=OPTIMIZERS)
    weight_decay: float = option(0.01, "Weight decay (decoupled for adamw, L2 for adam).")
    schedule: str = option("constant", "Learning-rate schedule.", choices=SCHEDULES)
    seed: int = option(0, "Random seed of the whole sweep: keys the initialisation (and on cpu/triton every "
                          "batch, with the instance and step; the torch backend seeds its generator per chunk).")
    precision: str = option("fp32", "Matmul precision (tf32: triton tensor cores).", choices=PRECISIONS)
    backend: str = option("torch", "Backend that trains (auto is resolved before the spec is made).",
                          choices=("torch", "triton", "cpu"))
    chunk_size: int = option(0, "Instances per chunk (0: automatic, decided once and recorded in spec.json).")

    def __post_init__(self):
        for f in dataclasses.fields(self):  # numpy scalars as Python numbers: spec.json is plain JSON
            object.__setattr__(self, f.name, _plain(getattr(self, f.name)))
        if self.backend not in ("torch", "triton", "cpu"):
            raise SpecError("backend", "torch, triton or cpu (auto is resolved before the spec is made)", self.backend)
        _check_int("chunk_size", self.chunk_size, 0)
        self.train_spec()  # validates steps, batch size, lr, optimizer, schedule, precision, seed

    def train_spec(self, batch_size: int | None = None) -> TrainSpec:
        """The TrainSpec of every job (batch_size: this one instead of the field's)."""
        return TrainSpec(steps=self.steps, batch_size=batch_size or self.batch_size, lr=self.lr,
                         optimizer=self.optimizer,
                         weight_decay=self.weight_decay, schedule=self.schedule, seed=self.seed,
                         precision=self.precision)

    def fields_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DensitySweepSpec(CommonSpec):
    """A sweep over densities (log spaced from density_max down to density_min), ``fits`` models per
    density of which the lowest-loss one is analysed, importance decay^i over ``n_features``.
    Subclasses set ``n_features`` and redeclare fields to change their defaults and help."""

    n_features: typing.ClassVar[int] = 0
    points: int = option(10, "Densities from density_max down to density_min (log spaced), at least 2.")
    fits: int = option(5, "Models trained per density; the lowest-loss one is analysed.")
    density_min: float = option(0.05, "Sparsest density, in [2^-24, 1].")
    density_max: float = option(1.0, "Densest density, in [2^-24, 1].")
    importance_decay: float = option(0.9, "Feature i has importance decay^i.")

    def __post_init__(self):
        _check_int("points", self.points, 2, 1000)  # both ends of the range are trained
        _check_int("fits", self.fits, 1, 100_000)
        check_density("density_min", self.density_min)
        check_density("density_max", self.density_max)
        if self.density_max < self.density_min:
            raise SpecError("density_max", f"a number >= density_min ({self.density_min})", self.density_max)
        _check_float("importance_decay", self.importance_decay, 0.0, 1.0, lo_open=True)
        super().__post_init__()

    def densities(self) -> np.ndarray:
        """(points,) from density_max down to density_min, log spaced."""
        return np.logspace(np.log10(self.density_max), np.log10(self.density_min), self.points)

    def importance(self) -> np.ndarray:
        """(n_features,) decay^i."""
        return self.importance_decay ** np.arange(self.n_features)


def spec_fields(spec_cls) -> list[tuple[dataclasses.Field, type]]:
    """(field, python type) for every field of a spec class, in declaration order."""
    hints = typing.get_type_hints(spec_cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(spec_cls)]


@dataclass(frozen=True, eq=False)
class Job:
    """One homogeneous group of instances trained together: one model shape and variant.

    data: one row per instance (K, n). history_every > 0 records the loss every that many steps;
    snapshot_steps: steps after which W and b are recorded (0 = the initialisation).
    """

    name: str
    model: ModelSpec
    data: DataSpec
    train: TrainSpec
    history_every: int = 0
    snapshot_steps: tuple = ()

    def __post_init__(self):
        _check_int("history_every", self.history_every, 0)
        if self.snapshot_steps and not self.model.tied:
            raise SpecError("snapshot_steps", "empty for a model without one W (weight snapshots are of W and b)",
                            self.snapshot_steps)
        check_dataset(self.data, self.train)
        for t in self.snapshot_steps:
            _check_int("snapshot_steps", t, 0, self.train.steps)

    @property
    def n_instances(self) -> int:
        return self.data.n_instances


@dataclass
class JobResult:
    """Trained instances of a job, in its DataSpec's row order (float32 CPU tensors).

    W (K, m, n), b (K, n), loss (K,) final loss; history (T, K) or None; snapshots: W_snapshots
    (S, K, m, n) and b_snapshots (S, K, n) after the steps in ``snapshot_steps`` (S,), or None.
    """

    W: torch.Tensor | None
    b: torch.Tensor | None
    loss: torch.Tensor
    history: torch.Tensor | None = None
    snapshot_steps: tuple = ()
    W_snapshots: torch.Tensor | None = None
    b_snapshots: torch.Tensor | None = None
    params: dict | None = None  # {name: (K, *shape)}, ModelSpec.param_shapes; tied: W and b as above

    def __post_init__(self):
        if self.params is None:
            self.params = {"W": self.W, "b": self.b}

    @property
    def diverged(self) -> np.ndarray:
        """bool (K,): instances whose final loss or any parameter holds a NaN or inf. They are flagged
        in the tables (column ``diverged``), never chosen by :func:`best_of_fits`, never classified."""
        return diverged(self.loss, *self.params.values())


def diverged(loss: torch.Tensor, *params: torch.Tensor) -> np.ndarray:
    """bool (K,) from loss (K,) and parameter tensors (K, ...): any non-finite value of the instance."""
    ok = torch.isfinite(loss)
    for t in params:
        ok = ok & torch.isfinite(t.flatten(1)).all(1)
    return (~ok).numpy()


def check(name: str, claim: str, measured, passed: bool, expected: str) -> dict:
    """One paper check for summary.json: a named claim, the figure measured, what passing means.
    A measurement holding NaN or inf (a point whose models all diverged) never passes."""
    if isinstance(measured, (np.floating, np.integer)):
        measured = measured.item()
    return {"name": name, "claim": claim, "measured": measured, "expected": expected,
            "passed": bool(passed) and _all_finite(measured)}


def check_not_run(name: str, claim: str, needs: str) -> dict:
    """A paper check this run could not make (its sweep misses the regime the claim is about):
    listed as not run, never as passed, so a run whose options skip a claim says so. passed is None."""
    return {"name": name, "claim": claim, "measured": None, "expected": needs, "passed": None}


def status_word(c: dict) -> str:
    """'pass', 'FAIL' or 'not run' for a check of summary.json."""
    return "not run" if c["passed"] is None else ("pass" if c["passed"] else "FAIL")


def _all_finite(v) -> bool:
    if isinstance(v, dict):
        return all(_all_finite(x) for x in v.values())
    if isinstance(v, (list, tuple, np.ndarray)):
        return all(_all_finite(x) for x in v)
    if isinstance(v, (float, np.floating)):
        return bool(np.isfinite(v))
    return True


def kept_column(n: int, kept: np.ndarray, diverged: np.ndarray) -> np.ndarray:
    """bool (n,): the instances an analysis drew (``kept`` indices), never a diverged one (a point
    whose fits all diverged has none)."""
    out = np.zeros(n, bool)
    out[np.asarray(kept)] = True
    return out & ~np.asarray(diverged, bool)


def divergence_check(results: dict) -> dict | None:
    """A failed check when any instance diverged (None otherwise): the analysis left them out, and
    a point whose models all diverged has no model, so the run is not a clean reproduction."""
    counts = {name: int(res.diverged.sum()) for name, res in results.items()}
    if not any(counts.values()):
        return None
    return check("no-divergence", "every instance trained without diverging (diverged ones are flagged and left "
                 "out of the analysis)", counts, False, "0 diverged instances")


def lowest_loss(loss: np.ndarray, diverged: np.ndarray | None = None) -> np.ndarray:
    """Per row of loss (points, fits): the column of the lowest loss, (points,). A diverged fit
    (NaN or inf loss, or flagged in ``diverged`` of the same shape) never wins; a row whose fits
    all diverged gets its first column (its model is diverged: analyses flag it, never classify it)."""
    loss = np.asarray(loss, dtype=np.float64)
    bad = ~np.isfinite(loss) if diverged is None else (~np.isfinite(loss) | np.asarray(diverged, bool).reshape(loss.shape))
    return np.argmin(np.where(bad, np.inf, loss), axis=1)


def best_of_fits(loss: np.ndarray, fits: int, diverged: np.ndarray | None = None) -> np.ndarray:
    """Index of the lowest-loss fit of each point: loss (points * fits,) in point-major order ->
    (points,) instance indices. The paper's protocol for figures drawn from one model per point.
    diverged: bool (points * fits,) instances that may never be chosen (JobResult.diverged)."""
    loss = np.asarray(loss, dtype=np.float64).reshape(-1, fits)
    div = None if diverged is None else np.asarray(diverged, bool).reshape(-1, fits)
    return np.arange(loss.shape[0]) * fits + lowest_loss(loss, div)


class _Placeholder(dict):
    """format_map values: the given ones, and "<key>" for any other key."""

    def __missing__(self, key):
        return f"<{key}>"


class Experiment:
    """Base of every experiment. Subclasses set the class attributes and implement jobs/analyse."""

    name: str = ""
    title: str = ""            # one line for `supbench list`
    spec_cls: type = CommonSpec
    presets: dict = {}         # "quick", "paper" and optionally "quick-fused": {field: value}
    results_format: int = 1    # bump when what a given spec trains changes (RNG, init, optimiser)
    outputs: tuple = ()        # files the analysis writes (besides spec.json and summary.json)
    quick_cost: str = ""       # measured wall time of the quick preset, for `supbench list`

    analysis_fields: tuple = ()  # spec fields only the analysis reads: changing them never retrains
    # Rows per count of active features of the equal-density expected loss its fits are ranked by
    # (engine.expected_loss.equal_density_expected_losses); 0: not ranked that way. bench.probe_ranking_noise reads it.
    ranking_rows: int = 0

    def preset_name(self, preset: str, backend: str) -> str:
        """The preset ``preset`` (quick or paper) becomes for the backend that will train it:
        ``quick-fused`` when a fused backend trains and the experiment has one."""
        if preset == "quick" and backend in FUSED_BACKENDS and "quick-fused" in self.presets:
            return "quick-fused"
        return preset

    def preset_fields(self, preset: str, backend: str) -> dict:
        """The spec fields of ``preset`` for the backend that will train it."""
        return dict(self.presets[self.preset_name(preset, backend)])

    def make_spec(self, **fields):
        return self.spec_cls(**fields)

    # The default run directory under runs/: {name}, {preset} and any spec field, e.g. {size}.
    out_template = "{name}-{preset}"

    def default_out(self, spec, preset: str) -> Path:
        return Path("runs") / self.out_template.format(name=self.name, preset=preset, **dataclasses.asdict(spec))

    def default_out_help(self) -> str:
        """default_out as --help writes it: <field> for each part a run's options choose."""
        return "runs/" + self.out_template.format_map(_Placeholder(name=self.name))

    def jobs(self, spec) -> list[Job]:
        raise NotImplementedError

    def job_sizes(self, spec) -> list:
        """What ``jobs(spec)`` will train, as engine.experiments.memory.JobSize s, for the memory
        check made before anything is built. This default builds the jobs; experiments whose sweeps
        can grow past memory (phase-diagram's grid^2 x seeds) override it with arithmetic."""
        from .memory import JobSize
        return [JobSize(j.name, j.n_instances, j.model.n_features, j.model.n_hidden,
                        -(-j.train.steps // j.history_every) if j.history_every else 0, len(j.snapshot_steps),
                        not j.model.tied, j.train.batch_size if j.data.examples else 0, j.data.examples)
                for j in self.jobs(spec)]

    def analyse(self, spec, results: dict, run_dir) -> dict:
        """Write tables and figures into run_dir; return summary entries (with a ``checks`` list)."""
        raise NotImplementedError

    def report(self, spec, summary: dict) -> list[str]:
        """Lines printed at the end of a run, before the checks."""
        return []

    def identity(self, spec) -> dict:
        """What makes two runs the same computation: the experiment, its results format and every
        spec field but the plan fields (backend, chunk size) and the analysis-only fields."""
        skip = set(PLAN_FIELDS) | set(self.analysis_fields)
        fields = {k: v for k, v in spec.fields_dict().items() if k not in skip}
        return {"experiment": self.name, "results_format": self.results_format, **fields}


class DensitySweep(Experiment):
    """An experiment over a DensitySweepSpec: one job of ``points * fits`` models of one shape
    (``model``), density-major with fits within a density; the lowest-loss fit of each density is
    analysed. Subclasses set ``model`` and write analyse()."""

    model: ModelSpec = None

    def job_sizes(self, spec):
        from .memory import JobSize
        return [JobSize("models", spec.points * spec.fits, self.model.n_features, self.model.n_hidden)]

    def jobs(self, spec):
        d = np.repeat(spec.densities(), spec.fits)
        p = np.repeat(d[:, None], self.model.n_features, axis=1)
        return [Job("models", self.model, DataSpec(p, spec.importance()), spec.train_spec())]

    @staticmethod
    def kept_and_instances(spec, res: JobResult, rank_loss: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
        """(the analysed instance per density (points,), the instances.parquet columns). rank_loss
        (K,): what the fits are ranked by, also written as ``expected_loss`` (the experiment's
        expected losses); None: the training-loss window."""
        loss = res.loss.numpy()
        kept = best_of_fits(loss if rank_loss is None else rank_loss, spec.fits, res.diverged)
        extra = {} if rank_loss is None else {"expected_loss": np.asarray(rank_loss, np.float64)}
        return kept, {"instance": np.arange(len(loss)), "density": np.repeat(spec.densities(), spec.fits),
                      "fit": np.tile(np.arange(spec.fits), spec.points), "final_loss": loss, **extra,
                      "diverged": res.diverged, "kept": kept_column(len(loss), kept, res.diverged)}
