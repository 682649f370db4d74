"""Uniform superposition: dimensions per feature against sparsity (Elhage et al. 2022, "The
Geometry of Superposition: Uniform Superposition" and "Feature Dimensionality").

n = 400, m = 30 relu-output models, every feature importance 1 and the same density 1 - S. The
sweep takes 1/(1-S) = 1/density log-spaced from 1 to ``inv_density_max`` (~100), ``fits`` models
per density; the lowest-loss one of each density is analysed (base.best_of_fits, the paper's
protocol for one-model-per-point figures). What the paper shows and this checks:
- D* = m / ||W||_F^2 (metrics.dimensions_per_feature) is ~1 for dense features and has a plateau at
  1/2 (features in antipodal pairs) before falling further;
- the per-feature dimensionalities D_i (metrics.dimensionality) are "sticky" at fractions: points
  pile up on the lines 1, 3/4, 2/3, 1/2, 2/5, 3/8 (counted within metrics.FRACTION_TOLERANCE).

Instance order: row-major over (density index, fit index).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import metrics
from ..errors import SpecError
from ..plots import fraction_line, plt, save
from ..spec import DataSpec, ModelSpec, _check_float, _check_int
from ..store import write_parquet, write_tensors
from .base import CommonSpec, Experiment, Job, best_of_fits, check, kept_column, option

NAME = "dimensionality"

# D* counts as on the 1/2 plateau within these bounds, and as dense ("1") within DENSE_TOLERANCE of 1
# (both ways: weights shrunk to nothing also give D* above 1).
PLATEAU = (0.45, 0.55)
# ... and is a plateau only where D* is flat there: its log-log slope over the run's flattest
# PLATEAU_STEP decades at most PLATEAU_FLATNESS x the slope over PLATEAU_SIDE decades of 1/(1-S) on
# either side (one side where the run is that close to the sweep's end). Two points inside the band
# alone were met by a smooth power law with no plateau (an audit's finding); the quick run has slopes
# 1.33 before, 0.105 on, 0.72 after the plateau (ratios 0.08 and 0.15). The slope on the plateau is
# that of its flattest PLATEAU_STEP-decade window, not the run's end to end (a finer grid, the paper
# preset's 30 points, puts points of the steep flanks inside the band: end to end the quick curve
# resampled at 30 points read 0.40 against 0.34), nor of its flattest step between neighbours (on a
# fine grid 1% noise on a power law made one flat step: 62% of draws passed at 60 points, a review).
PLATEAU_SIDE = 0.2
PLATEAU_FLATNESS = 0.5
PLATEAU_STEP = 0.1  # decades of 1/(1-S): the width over which the slope on the plateau is measured
DENSE_TOLERANCE = 0.05
# A feature on the 1/2 line counts as half of an antipodal pair when another feature's column points
# the opposite way, cosine below this.
ANTIPODAL_COS = -0.9

PRESETS = {
    # The peers' recipe for this figure (AdamW lr 1e-2, wd 1e-2, batch 128, cosine) at 2,000 steps. At
    # n=400, m=30 the 1/2 plateau spans 1/(1-S) ~ 3.0..5.0 (0.22 decades; measured with 13 densities
    # in 1.5..6), so 20 log-spaced densities (0.105 decades apart) put two on it: 3.36 and 4.28, D*
    # 0.478..0.490 in both fits of seeds 0 and 1. Measured cost: see Dimensionality.quick_cost.
    "quick": dict(points=20, fits=2, steps=2000, batch_size=128, lr=1e-2, weight_decay=1e-2, schedule="cosine"),
    # The paper's scale and the notebook's optimiser (AdamW lr 1e-3, wd 1e-2, batch 1024, constant, 10,000
    # steps) with the paper's 10 fits per point.
    "paper": dict(points=30, fits=10, steps=10_000, batch_size=1024, lr=1e-3, weight_decay=1e-2,
                  schedule="constant"),
}


@dataclass(frozen=True)
class UniformSpec(CommonSpec):
    """The uniform-superposition model: n features of equal importance and density, m hidden
    dimensions, relu-output. Shared by the dimensionality and learning-dynamics experiments."""

    features: int = option(400, "Features n (the paper's uniform-superposition model has 400).")
    hidden: int = option(30, "Hidden dimensions m (the paper's: 30).")

    def __post_init__(self):
        _check_int("features", self.features, 2, 100_000)
        _check_int("hidden", self.hidden, 1, 100_000)
        if self.hidden >= self.features:
            raise SpecError("hidden", f"an integer < features ({self.features}): superposition needs m < n",
                            self.hidden)
        super().__post_init__()

    @property
    def model(self) -> ModelSpec:
        return ModelSpec(self.features, self.hidden, "relu-output")

    def data_spec(self, density: np.ndarray) -> DataSpec:
        """density (K,) -> every feature of instance k has density[k], importance 1."""
        p = np.repeat(np.asarray(density, np.float64)[:, None], self.features, axis=1)
        return DataSpec(p, np.ones_like(p))


@dataclass(frozen=True)
class DimensionalitySpec(UniformSpec):
    """Everything needed to re-run the sweep; the CLI options map one-to-one onto these fields."""

    points: int = option(20, "Densities in the sweep: 1/(1-S) log-spaced from 1 to inv-density-max.")
    inv_density_max: float = option(100.0, "Largest 1/(1-S) = 1/density of the sweep (its sparsest point).")
    fits: int = option(2, "Models trained per point; the one with the lowest final training loss is "
                                 "analysed (final_loss: the mean over the last steps).")
    steps: int = option(2000, "Training steps per model.")
    batch_size: int = option(128, "Examples per training step.")
    lr: float = option(1e-2, "Learning rate.")
    schedule: str = option("cosine", "Learning-rate schedule.", choices=("constant", "linear", "cosine"))

    def __post_init__(self):
        _check_int("points", self.points, 2, 1000)
        _check_float("inv_density_max", self.inv_density_max, 1.0, 1e6, lo_open=True)
        _check_int("fits", self.fits, 1, 1000)
        super().__post_init__()

    def inv_density(self) -> np.ndarray:
        """1/(1-S) of every point (points,), log-spaced from 1 (dense) to inv_density_max."""
        return np.logspace(0.0, math.log10(self.inv_density_max), self.points)


def instance_table(spec: DimensionalitySpec) -> dict:
    """What each trained instance is (numpy columns of length points * fits, row-major)."""
    inv = spec.inv_density()
    di, fi = np.meshgrid(np.arange(spec.points), np.arange(spec.fits), indexing="ij")
    di, fi = di.ravel(), fi.ravel()
    return {"instance": np.arange(di.size), "density_index": di, "fit": fi, "density": 1.0 / inv[di],
            "inv_density": inv[di]}


def plateau_run(inv_density, d_star, lo: float = PLATEAU[0], hi: float = PLATEAU[1]) -> dict:
    """The longest run of consecutive sweep points with lo <= D* <= hi, and how flat D* is there.

    inv_density, d_star: (P,) in sweep order (1/(1-S) ascending). Returns {"points": run length (0 if
    none), "inv_density_range": [first, last] 1/(1-S) of the run (None if none), "slopes": [before,
    on, after]}: |d log10 D* / d log10 1/(1-S)| over PLATEAU_SIDE decades before the run's first
    point, the smallest over PLATEAU_STEP decades inside the run, and over PLATEAU_SIDE decades after
    its last (log D* interpolated linearly in log 1/(1-S); NaN where that reaches past the sweep or
    the run has one point). The first run wins a tie.
    """
    d_star = np.asarray(d_star, np.float64)
    inside = (d_star >= lo) & (d_star <= hi)
    best, best_start, start = 0, 0, None
    for i, ok in enumerate(list(inside) + [False]):
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            if i - start > best:
                best, best_start = i - start, start
            start = None
    rng = [float(inv_density[best_start]), float(inv_density[best_start + best - 1])] if best else None
    nan = float("nan")
    slopes = [nan, nan, nan]
    if best:
        x = np.log10(np.asarray(inv_density, np.float64))
        y = np.log10(np.maximum(d_star, 1e-300))
        a, b = x[best_start], x[best_start + best - 1]

        def slope(u, v):  # |d log D* / d log inv| between u < v (decades of 1/(1-S)) inside the sweep
            if u < x[0] - 1e-9 or v > x[-1] + 1e-9 or not v > u:
                return nan
            return float(abs(np.interp(v, x, y) - np.interp(u, x, y)) / (v - u))
        # The flattest window of PLATEAU_STEP decades inside the run (starting or ending at one of its
        # points, where the piecewise-linear curve bends; the whole run if it is narrower): wide enough
        # that one noisy point cannot make a flat step on a fine grid.
        pts = x[best_start:best_start + best]
        starts = [u for u in np.r_[pts, pts - PLATEAU_STEP] if a - 1e-9 <= u and u + PLATEAU_STEP <= b + 1e-9]
        on = min(slope(u, u + PLATEAU_STEP) for u in starts) if starts else slope(a, b)
        slopes = [slope(a - PLATEAU_SIDE, a), on, slope(b, b + PLATEAU_SIDE)]
    return {"points": best, "inv_density_range": rng, "slopes": slopes}


def is_plateau(run: dict) -> bool:
    """A plateau_run that is a plateau: >= 2 points, D* flatter on it than PLATEAU_FLATNESS x each side
    the sweep reaches (at least one)."""
    before, on, after = run["slopes"]
    sides = [v for v in (before, after) if np.isfinite(v)]
    return run["points"] >= 2 and bool(sides) and bool(np.isfinite(on)) and on <= PLATEAU_FLATNESS * min(sides)


def most_opposed_cosines(W: torch.Tensor) -> np.ndarray:
    """(K, n) for W (K, m, n): each feature's lowest cosine with another feature's column (1 where n = 1;
    a zero column counts as direction 0, cosine 0)."""
    cos = metrics.feature_cosines(W)                                # (K, n, n), float64
    cos.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    lowest = cos.min(dim=2).values
    return torch.where(torch.isinf(lowest), torch.ones_like(lowest), lowest).numpy()


def dense_point(inv_density, d_star) -> tuple[float, float]:
    """(1/(1-S), D*) of the densest sweep point (the smallest 1/(1-S))."""
    i = int(np.argmin(inv_density))
    return float(inv_density[i]), float(np.asarray(d_star)[i])


def analyse_weights(spec: DimensionalitySpec, W: torch.Tensor, loss: np.ndarray,
                    diverged: np.ndarray | None = None) -> tuple[dict, dict, dict]:
    """Per-instance, per-point and per-feature tables of a sweep.

    W: (points * fits, m, n) trained weights, loss: (points * fits,) final losses, diverged: bool
    (points * fits,) instances never kept (JobResult.diverged), all in instance order.
    The point and feature tables describe the kept (lowest-loss) fit of each density.
    """
    table = instance_table(spec)
    inv = spec.inv_density()
    d_star_all = metrics.dimensions_per_feature(W).numpy()
    kept = best_of_fits(loss, spec.fits, diverged)
    Wk = W[torch.as_tensor(kept)]
    D = metrics.dimensionality(Wk).numpy()          # (points, n)
    norms = metrics.feature_norms(Wk).numpy()       # (points, n)
    d_star = d_star_all[kept]
    diverged = np.zeros(len(loss), bool) if diverged is None else np.asarray(diverged, bool)
    is_kept = kept_column(len(loss), kept, diverged)
    instances = {**table, "final_loss": np.asarray(loss, np.float64), "diverged": diverged,
                 "D_star": d_star_all, "kept": is_kept}
    near = metrics.nearest_fraction(D)
    points = {"density_index": np.arange(spec.points), "density": 1.0 / inv, "inv_density": inv,
              "kept_instance": kept, "kept_fit": table["fit"][kept], "D_star": d_star,
              "features_per_dimension": 1.0 / d_star, "final_loss": np.asarray(loss, np.float64)[kept],
              "represented": (norms >= metrics.NORM_THRESHOLD).sum(1)}
    for k, (_, label) in enumerate(metrics.FRACTIONS):
        points["on_" + label.replace("/", "_")] = (near == k).sum(1)
    # On the 1/2 line because antipodal: the most opposed other feature at cosine below ANTIPODAL_COS.
    # (Any tight frame of 2m unit vectors in m dimensions also puts every D_i at 1/2, antipodal or not.)
    half = next(k for k, (v, _) in enumerate(metrics.FRACTIONS) if v == 0.5)
    points["on_1_2_antipodal"] = ((near == half) & (most_opposed_cosines(Wk) < ANTIPODAL_COS)).sum(1)
    P, n = D.shape
    labels = np.array([label for _, label in metrics.FRACTIONS] + [""])
    features = {"density_index": np.repeat(np.arange(P), n), "density": np.repeat(1.0 / inv, n),
                "inv_density": np.repeat(inv, n), "feature": np.tile(np.arange(n), P),
                "dimensionality": D.ravel(), "norm": norms.ravel(), "fraction_line": labels[near.ravel()].tolist()}
    return instances, points, features


def figure(path, spec: DimensionalitySpec, points: dict, features: dict) -> None:
    """The paper's two panels: D* against 1/(1-S) with lines at 1 and 1/2; below it every D_i."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8.5), sharex=True, constrained_layout=True,
                                      gridspec_kw={"height_ratios": [1, 1.3]})
    inv = points["inv_density"]
    top.plot(inv, points["D_star"], "o-", color="#3b75af", ms=4, lw=1.2, label="D* of the lowest-loss fit")
    for v, label in ((1.0, "1"), (0.5, "1/2")):
        fraction_line(top, v, label)
    top.set_xscale("log")
    top.set_ylim(0, 1.1)
    top.set_ylabel("dimensions per feature  D* = m / ||W||$_F^2$")
    top.set_title(f"Uniform superposition (n={spec.features}, m={spec.hidden}): dimensions per feature")
    top.legend(loc="upper right", frameon=False, fontsize=8)
    # A little multiplicative jitter in x (deterministic) so stacks of equal D_i read as stacks.
    x = np.asarray(features["inv_density"]) * np.exp(np.random.default_rng(0).uniform(-0.03, 0.03,
                                                                                   len(features["inv_density"])))
    bottom.scatter(x, features["dimensionality"], s=3, alpha=0.15, color="#c44e52", linewidths=0)
    for v, label in metrics.FRACTIONS:
        fraction_line(bottom, v, label)
    bottom.set_xscale("log")
    bottom.set_ylim(-0.03, 1.1)
    bottom.set_ylabel("feature dimensionality  D$_i$")
    bottom.set_xlabel("1 / (1 - S)  (1 / feature density; points jittered by ±3% in x)")
    bottom.set_title(f"every feature of the lowest-loss model at each density ({spec.fits} fits per density)")
    save(fig, path)


class Dimensionality(Experiment):
    name = NAME
    title = "uniform superposition: dimensions per feature D* and every D_i against 1/(1-S) (n=400, m=30)"
    spec_cls = DimensionalitySpec
    presets = PRESETS
    results_format = 1
    outputs = ("instances.parquet", "points.parquet", "features.parquet", "weights.safetensors",
               "figures/dimensionality.png")
    quick_cost = "40 models (n=400, m=30) x 2,000 steps at batch 128; 8 s on 2 CPU cores (cpu backend, Intel Xeon)"

    def job_sizes(self, spec):
        from .memory import JobSize
        return [JobSize("models", spec.points * spec.fits, spec.model.n_features, spec.model.n_hidden)]

    def jobs(self, spec):
        table = instance_table(spec)
        return [Job("models", spec.model, spec.data_spec(table["density"]), spec.train_spec())]

    def analyse(self, spec, results, run_dir):
        res = results["models"]
        loss = res.loss.numpy()
        instances, points, features = analyse_weights(spec, res.W, loss, res.diverged)
        write_parquet(run_dir.root / "instances.parquet", instances)
        write_parquet(run_dir.root / "points.parquet", points)
        write_parquet(run_dir.root / "features.parquet", features)
        write_tensors(run_dir.root / "weights.safetensors",
                      {"W": res.W, "b": res.b, "kept": torch.as_tensor(points["kept_instance"], dtype=torch.int64)},
                      metadata={"layout": "W (instances, n_hidden, n_features), b (instances, n_features); rows as "
                                          "instances.parquet; kept (points,): the instance analysed at each density"})
        figure(run_dir.figures / "dimensionality.png", spec, points, features)

        inv, d_star = points["inv_density"], points["D_star"]
        run = plateau_run(inv, d_star)
        dense_inv, dense_d = dense_point(inv, d_star)
        counts = {f"{x:.4g}": {label: int(points["on_" + label.replace("/", "_")][i])
                               for _, label in metrics.FRACTIONS} for i, x in enumerate(inv)}
        most_half = int(np.max(points["on_1_2_antipodal"]))
        checks = [
            check("half-plateau", f"D* has a plateau at 1/2: within [{PLATEAU[0]}, {PLATEAU[1]}] over at least 2 "
                  f"consecutive sparsities, and flat there (the log-log slope over its flattest {PLATEAU_STEP} "
                  f"decades <= {PLATEAU_FLATNESS} x the slope over {PLATEAU_SIDE} decades of 1/(1-S) before and "
                  "after it, one side at the sweep's end; None: past the sweep)",
                  {"points": run["points"], "inv_density_range": run["inv_density_range"],
                   "slopes_before_on_after": [round(v, 4) if np.isfinite(v) else None for v in run["slopes"]]},
                  is_plateau(run), f">= 2 consecutive points; slope on <= {PLATEAU_FLATNESS} x before and after"),
            check("dense", f"dense features are not superposed: D* within {DENSE_TOLERANCE} of 1 at the densest "
                  f"point (1/(1-S) = {dense_inv:.3g}; ||W||_F^2 ~ m)", dense_d,
                  abs(dense_d - 1.0) <= DENSE_TOLERANCE, f"in [{1 - DENSE_TOLERANCE:g}, {1 + DENSE_TOLERANCE:g}]"),
            check("sticky-half", f"D_i are sticky at 1/2: at some density at least m = {spec.hidden} features lie "
                  f"within {metrics.FRACTION_TOLERANCE} of the 1/2 line with another feature opposite (cosine < "
                  f"{ANTIPODAL_COS}: m/2 antipodal pairs)", most_half, most_half >= spec.hidden, f">= {spec.hidden}"),
        ]
        return {"inv_density": inv.tolist(), "D_star": d_star.tolist(), "final_loss": points["final_loss"].tolist(),
                "half_plateau": run, "dense": {"inv_density": dense_inv, "D_star": dense_d},
                "fraction_counts": counts, "fraction_tolerance": metrics.FRACTION_TOLERANCE, "checks": checks}

    def report(self, spec, summary):
        run = summary["half_plateau"]
        lo, hi = run["inv_density_range"] or (None, None)
        where = f"1/(1-S) {lo:.3g}..{hi:.3g} ({run['points']} points)" if run["points"] else "no point"
        return [f"uniform superposition n={spec.features}, m={spec.hidden}: {spec.points} densities x {spec.fits} "
                f"fits, {spec.steps} steps on {summary['backend']}",
                f"D* = {summary['dense']['D_star']:.3f} dense; within [{PLATEAU[0]}, {PLATEAU[1]}] at {where}; "
                f"{summary['D_star'][-1]:.3f} at 1/(1-S) = {summary['inv_density'][-1]:.3g}"]


EXPERIMENT = Dimensionality()
