"""Non-uniform superposition: a pentagon collapses into two digons (Elhage et al. 2022, "The Geometry
of Superposition: Non-Uniform Superposition").

n = 5, m = 2 relu-output models, every importance 1, every feature of density ``density`` (0.05)
except feature 0, whose density is ``density * r`` for a relative density r swept log-spaced from
``rel_min`` to ``rel_max`` (1 is added to the grid when missing: the uniform pentagon is the
reference). ``fits`` models per point; the kept one is the lowest-loss fit (base.best_of_fits),
its loss being the float64 expected loss on the fixed evaluation sample (below), a far less noisy
estimate than the training loss window: near the transition the two geometries differ by a few
percent, about the noise of the last 100 training batches.

Geometry of a model (:func:`classify_geometry`, from engine.metrics' norms and dimensionalities):
- pentagon: all 5 features represented (||W_i|| > 0.5) with D_i within 0.05 of 2/5;
- two digons: exactly 4 features represented, each with D_i within 0.05 of 1/2 and an antipodal
  partner (cosine < -0.9, the pairing mutual); the fifth (the "dropped" feature) not represented;
- other: anything else.

Loss curves: the paper shows the losses of the competing solutions crossing at the transition.
Every kept pentagon and every kept two-digon model is evaluated on every point's distribution;
per point the best pentagon and the best digons (lowest loss among them there) give the two
curves.

Expected losses (float64, engine.reference.instance_loss) come from one fixed evaluation sample
stratified by which features are active (:func:`eval_sample`): for each of the 32 active sets, its
examples (active features uniform from the Philox stream keyed by (seed, set index, step 0,
stream 2), which no training draw uses; the rest 0) give the loss given that set, and a point's
expected loss is their mix with the exact probabilities of the sets under its densities. Every
model sees the same examples, at every point (common random numbers), and which features are
active is exact rather than sampled: a plain sample's realised frequency of the rare feature is
noisy enough to flip the comparison near the transition (see :func:`expected_losses`).

Instance order: row-major over (point index, fit index).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.ticker import NullFormatter, ScalarFormatter

from .. import metrics
from ..expected_loss import conditional_losses, expected_losses, stratified_sample
from ..errors import SpecError
from ..plots import feature_arrows, plt, save
from ..spec import MIN_PROBABILITY, DataSpec, ModelSpec, _check_float, _check_int, check_density
from ..store import write_parquet, write_tensors
from .base import CommonSpec, Experiment, Job, best_of_fits, check, kept_column, option

NAME = "non-uniform"
N_FEATURES, N_HIDDEN = 5, 2

GEOMETRIES = ("pentagon", "two digons", "other", "diverged")
PENTAGON, DIGONS, OTHER, DIVERGED = 0, 1, 2, 3
D_TOLERANCE = 0.05          # |D_i - 2/5| or |D_i - 1/2|: the two values are 0.1 apart
ANTIPODAL_COSINE = -0.9     # a digon partner points the opposite way
# The paper: the pentagon breaks when one feature is ~2.5x sparser than the others; accepted range.
TRANSITION_RANGE = (1 / 4, 1 / 1.5)

PRESETS = {
    # The torch backend's quick run (its n=5 step costs ~30x the cpu backend's): a grid point every
    # 10^0.2 (0.25 and 0.40 are on it), 8 fits per point.
    "quick": dict(points=21, fits=8, steps=4000, batch_size=1024, lr=1e-3),
    # The quick run on a fused backend: 410 models x 5,000 steps (see quick_cost). 41 points put a grid
    # point every 10^0.1 (0.25, 0.32, 0.40, ... are on the grid); 5,000 steps at lr 1e-3 settle (the best
    # pentagon's and digons' losses agree with 10,000- and 20,000-step runs to 0.5%).
    "quick-fused": dict(points=41, fits=10, steps=5000, batch_size=1024, lr=1e-3),
    # The notebook's optimiser settings, 10,000 steps, a grid twice as fine, 20 fits per point.
    "paper": dict(points=81, fits=20, steps=10_000, batch_size=1024, lr=1e-3),
}


@dataclass(frozen=True)
class NonUniformSpec(CommonSpec):
    """Everything needed to re-run the sweep; the CLI options map one-to-one onto these fields."""

    density: float = option(0.05, "Density of every feature but feature 0 (the pentagon's density).")
    rel_min: float = option(1e-3, "Lowest relative density of feature 0 (its density / density).")
    rel_max: float = option(10.0, "Highest relative density of feature 0.")
    points: int = option(41, "Relative densities, log-spaced from rel-min to rel-max (1 is added if missing).")
    fits: int = option(10, "Models trained per point; the one with the lowest expected loss is analysed.")
    eval_samples: int = option(16384, "Rows of the evaluation sample per single-feature active set (a quarter of "
                               "that per pair, and so on): expected losses, choice of the kept fit.")
    steps: int = option(5000, "Training steps per model.")

    def __post_init__(self):
        check_density("density", self.density)
        _check_float("rel_min", self.rel_min, 0.0, 1.0, lo_open=True)
        if self.density * self.rel_min < MIN_PROBABILITY:
            raise SpecError("rel_min", f"at least 2^-24 / density = {MIN_PROBABILITY / self.density:.3g} (feature 0's "
                                       "density density * rel_min must be >= 2^-24)", self.rel_min)
        _check_float("rel_max", self.rel_max, 1.0, 1e6)
        if self.density * self.rel_max > 1:
            raise SpecError("rel_max", f"at most 1 / density = {1 / self.density:g} (feature 0's density "
                                       "density * rel_max must be <= 1)", self.rel_max)
        _check_int("points", self.points, 2, 1000)
        _check_int("fits", self.fits, 1, 1000)
        _check_int("eval_samples", self.eval_samples, 256, 2**22)
        super().__post_init__()

    @property
    def model(self) -> ModelSpec:
        return ModelSpec(N_FEATURES, N_HIDDEN, "relu-output")

    def rel_axis(self) -> np.ndarray:
        """Relative densities of feature 0 (P,): ``points`` log-spaced values, plus 1 when missing."""
        r = np.logspace(math.log10(self.rel_min), math.log10(self.rel_max), self.points)
        if not np.any(np.isclose(r, 1.0, rtol=1e-9, atol=0)):
            r = np.sort(np.append(r, 1.0))
        return r


def instance_table(spec: NonUniformSpec) -> dict:
    """Per-instance coordinates, numpy arrays of length P * fits (row-major over point, fit)."""
    r = spec.rel_axis()
    pi, fi = np.meshgrid(np.arange(r.size), np.arange(spec.fits), indexing="ij")
    pi, fi = pi.ravel(), fi.ravel()
    return {"instance": np.arange(pi.size), "point_index": pi, "fit": fi, "rel_density": r[pi],
            "density_feature0": spec.density * r[pi]}


def feature_probability(spec: NonUniformSpec, rel: np.ndarray) -> np.ndarray:
    """Densities (len(rel), 5): ``density`` everywhere, ``density * rel`` for feature 0."""
    p = np.full((len(rel), N_FEATURES), spec.density)
    p[:, 0] = spec.density * np.asarray(rel)
    return p


def classify_geometry(W) -> tuple[np.ndarray, np.ndarray]:
    """Geometry of each model, W (K, 2, 5): codes (K,) indexing :data:`GEOMETRIES`, and the dropped
    (unrepresented) feature of two-digon models (K,), -1 for the others."""
    norms = metrics.feature_norms(W).numpy()
    dims = metrics.dimensionality(W).numpy()
    Wd = torch.as_tensor(W, dtype=torch.float64)
    cos = metrics.feature_cosines(Wd).numpy()  # (K, n, n)
    rep = norms > metrics.NORM_THRESHOLD
    codes = np.full(len(norms), OTHER, dtype=np.int64)
    dropped = np.full(len(norms), -1, dtype=np.int64)
    for k in range(len(norms)):
        if (rep[k].all() and np.all(np.abs(dims[k] - 2 / 5) <= D_TOLERANCE)
                and np.all(np.abs(metrics.neighbour_angles(W[k]) - 72.0) <= metrics.PENTAGON_ANGLE_TOLERANCE)):
            # (every D_i = 2/5 also holds for other tight frames of five vectors: a fan 36 degrees apart)
            codes[k] = PENTAGON
        elif rep[k].sum() == N_FEATURES - 1:
            idx = np.flatnonzero(rep[k])
            c = cos[k][np.ix_(idx, idx)] + 2 * np.eye(idx.size)  # never one's own partner
            partner = np.argmin(c, axis=1)
            paired = np.all(c[np.arange(idx.size), partner] < ANTIPODAL_COSINE) and np.all(
                partner[partner] == np.arange(idx.size))
            if paired and np.all(np.abs(dims[k][idx] - 1 / 2) <= D_TOLERANCE):
                codes[k] = DIGONS
                dropped[k] = int(np.flatnonzero(~rep[k])[0])
    codes[~torch.isfinite(Wd.flatten(1)).all(1).numpy()] = DIVERGED  # NaN/inf weights: no geometry
    return codes, dropped


def eval_sample(spec: NonUniformSpec) -> list[torch.Tensor]:
    """The fixed evaluation sample (engine.expected_loss.stratified_sample): for each of the 32 active
    sets, float64 examples (rows, 5) drawn given that exactly those features are active."""
    return stratified_sample(spec.seed, N_FEATURES, spec.eval_samples)


def crossing(rel: np.ndarray, pent: np.ndarray, dig: np.ndarray) -> float | None:
    """Relative density below 1 where the digons stop being better than the pentagon: the largest
    r_k < 1 with digons < pentagon at r_k and pentagon <= digons at r_{k+1}, refined by linear
    interpolation of log(pentagon / digons) in log r. None if the curves do not cross there."""
    gap = np.log(pent / dig)  # > 0: digons better
    found = None
    for k in range(len(rel) - 1):
        if rel[k] < 1 and np.isfinite(gap[k]) and np.isfinite(gap[k + 1]) and gap[k] > 0 >= gap[k + 1]:
            t = gap[k] / (gap[k] - gap[k + 1])
            found = float(10 ** (np.log10(rel[k]) + t * (np.log10(rel[k + 1]) - np.log10(rel[k]))))
    return found


def transition(rel: np.ndarray, codes: np.ndarray) -> float | None:
    """The largest relative density < 1 whose kept model is not a pentagon (None if none is)."""
    below = np.flatnonzero((rel < 1) & (codes != PENTAGON))
    return float(rel[below[-1]]) if below.size else None


def check_pentagon(rel, codes, dims) -> dict:
    """The kept model at relative density 1 is a pentagon. rel (P,), codes (P,), dims (P, 5)."""
    k = int(np.argmin(np.abs(np.log(rel))))
    return check("pentagon-at-uniform", "with every feature equally sparse (relative density 1) the five features "
                 "form a pentagon (D_i = 2/5, neighbours 72 degrees apart)", [round(float(d), 3) for d in dims[k]],
                 codes[k] == PENTAGON and np.isclose(rel[k], 1.0), "D_i of the kept model at r = 1 within 0.05 of 0.4")


def check_digons(rel, codes, dropped, at_most: float = 0.1) -> dict:
    """Kept models where feature 0 is much sparser (rel <= at_most) are two digons without feature 0."""
    sel = rel <= at_most
    frac = float(np.mean((codes[sel] == DIGONS) & (dropped[sel] == 0))) if sel.any() else None
    return check("digons-when-sparse", f"when feature 0 is much sparser (relative density <= {at_most:g}) the other "
                 "four form two antipodal pairs (digons) and feature 0 is dropped", frac,
                 frac is not None and frac >= 0.9, ">= 0.9 of those points")


def check_transition(c: float | None) -> dict:
    """c: the relative density where the best pentagon's and the best digons' expected losses cross
    (interpolated between grid points, so the check does not hinge on which points the grid has;
    loss-curves-cross ties it to the trained geometry)."""
    lo, hi = TRANSITION_RANGE
    return check("transition", "the pentagon breaks when feature 0 is ~1.5-4x sparser than the rest (the paper: "
                 "~2.5x); measured: the relative density of feature 0 where the pentagon's and the digons' "
                 "expected losses cross", c, c is not None and lo <= c <= hi, f"in [{lo:.3g}, {hi:.3g}]")


def check_crossing(t: float | None, c: float | None, factor: float = 1.5) -> dict:
    ok = t is not None and c is not None and abs(math.log(c / t)) <= math.log(factor)
    return check("loss-curves-cross", "the best pentagon's and the best digons' expected losses cross near the "
                 "transition", c, ok, f"within a factor {factor} of the transition ({t if t is None else round(t, 4)})")


def plot_geometry(path, rel, W, codes, picks) -> None:
    """A row of 2-D panels: the kept W's five columns as arrows (feature 0 red) at rel[picks]."""
    fig, axes = plt.subplots(1, len(picks), figsize=(2.1 * len(picks), 2.7), constrained_layout=True)
    axes = np.atleast_1d(axes)
    lim = max(1.2, float(np.abs(W[picks]).max()) * 1.1)
    colors = ["#c44e52"] + ["#3b75af"] * (N_FEATURES - 1)  # feature 0 red
    for ax, k in zip(axes, picks):
        feature_arrows(ax, W[k], colors, lim, lw=1.8)
        ax.set_title(f"r = {rel[k]:.3g}\n{GEOMETRIES[codes[k]]}", fontsize=9)
    fig.suptitle("Kept model's W columns (feature 0 red) as feature 0 gets sparser (r = its relative density)",
                 fontsize=10)
    save(fig, path)


def plot_losses(path, rel, pent, dig, kept_loss, t, c) -> None:
    """Expected loss of the best pentagon and best digons against relative density, and their ratio."""
    fig, (top, bot) = plt.subplots(2, 1, figsize=(6.4, 5.6), sharex=True, constrained_layout=True,
                                   gridspec_kw={"height_ratios": [2, 1]})
    top.plot(rel, pent, "-", color="#3b75af", label="best pentagon found")
    top.plot(rel, dig, "-", color="#c44e52", label="best two digons found (one feature dropped)")
    top.plot(rel, kept_loss, "o", ms=3, color="black", label="kept model at each point")
    top.set_yscale("log")
    top.set_ylabel("expected loss")
    bot.plot(rel, pent / dig, "-", color="#555555")
    bot.axhline(1.0, color="#999999", lw=0.8)
    bot.set_yscale("log")
    bot.yaxis.set_major_formatter(ScalarFormatter())
    bot.yaxis.set_minor_formatter(NullFormatter())
    bot.set_ylabel("pentagon / digons")
    bot.set_xlabel("relative density of feature 0")
    bot.set_xscale("log")
    for ax in (top, bot):
        if t is not None:
            ax.axvline(t, color="#2ca02c", ls="--", lw=1, label=f"transition (last non-pentagon < 1): r = {t:.3g}")
        if c is not None:
            ax.axvline(c, color="#9467bd", ls=":", lw=1.2, label=f"losses cross: r = {c:.3g}")
    top.legend(fontsize=8, frameon=False)
    top.set_title("Non-uniform superposition (n=5, m=2): competing solutions' losses", fontsize=10)
    save(fig, path)


def panel_points(rel: np.ndarray, t: float | None) -> list[int]:
    """Indices of the panels: the ends, r = 0.1 and 1, and the two points around the transition."""
    targets = [rel[0], 0.1, 1.0, rel[-1]]
    if t is not None:
        k = int(np.argmin(np.abs(np.log(rel / t))))
        targets += [rel[k], rel[min(k + 1, len(rel) - 1)]]
    return sorted({int(np.argmin(np.abs(np.log(rel / x)))) for x in targets})


class NonUniform(Experiment):
    name = NAME
    title = "non-uniform superposition: a pentagon (n=5, m=2) collapses into two digons as one feature gets sparser"
    spec_cls = NonUniformSpec
    presets = PRESETS
    results_format = 1
    analysis_fields = ("eval_samples",)  # analysis only: changing them never retrains
    outputs = ("points.parquet", "instances.parquet", "weights.safetensors", "figures/geometry.png",
               "figures/loss_curves.png")
    quick_cost = "410 models x 5,000 steps; 9 s on 2 CPU cores (cpu backend, Intel Xeon)"

    def job_sizes(self, spec):
        from .memory import JobSize
        return [JobSize("models", spec.rel_axis().size * spec.fits, spec.model.n_features, spec.model.n_hidden)]

    def jobs(self, spec):
        table = instance_table(spec)
        p = feature_probability(spec, table["rel_density"])
        return [Job("models", spec.model, DataSpec(p, np.ones_like(p)), spec.train_spec())]

    def analyse(self, spec, results, run_dir):
        res = results["models"]
        W, b, train_loss = res.W, res.b, res.loss.numpy().astype(np.float64)
        table = instance_table(spec)
        rel = spec.rel_axis()
        P, F = rel.size, spec.fits
        probs = feature_probability(spec, rel)
        cond = conditional_losses(W, b, eval_sample(spec))  # (P * F, 32)
        everywhere = expected_losses(cond, probs)  # (P * F, P): every model on every point's distribution
        eval_loss = everywhere[np.arange(P * F), table["point_index"]]
        kept = best_of_fits(eval_loss, F, res.diverged)
        codes_all, dropped_all = classify_geometry(W)
        codes_all[res.diverged] = DIVERGED  # also a finite W whose loss is inf
        norms = metrics.feature_norms(W).numpy()
        dims = metrics.dimensionality(W).numpy()
        codes, dropped = codes_all[kept], dropped_all[kept]

        cross = everywhere[kept]  # cross[j, k] = loss of kept model j at point k

        def best_of(code):
            """Per point, the lowest loss there among the kept models of one geometry, and which."""
            rows = np.flatnonzero(codes == code)
            if rows.size == 0:
                return np.full(P, np.nan), np.full(P, -1)
            j = rows[np.argmin(cross[rows], axis=0)]
            return cross[j, np.arange(P)], j
        pent, pent_src = best_of(PENTAGON)
        dig, dig_src = best_of(DIGONS)
        t = transition(rel, codes)
        c = crossing(rel, pent, dig)

        points = {"point_index": np.arange(P), "rel_density": rel, "density_feature0": probs[:, 0],
                  "instance": kept, "geometry": [GEOMETRIES[g] for g in codes], "dropped_feature": dropped,
                  "expected_loss": eval_loss[kept], "final_loss": train_loss[kept],
                  "represented": (norms[kept] > metrics.NORM_THRESHOLD).sum(1),
                  **{f"D_{i}": dims[kept, i] for i in range(N_FEATURES)},
                  **{f"norm_{i}": norms[kept, i] for i in range(N_FEATURES)},
                  "pentagon_loss": pent, "pentagon_from_rel": np.where(pent_src >= 0, rel[pent_src], np.nan),
                  "digons_loss": dig, "digons_from_rel": np.where(dig_src >= 0, rel[dig_src], np.nan)}
        is_kept = kept_column(P * F, kept, res.diverged)
        instances = {**table, "final_loss": train_loss, "expected_loss": eval_loss, "diverged": res.diverged,
                     "geometry": [GEOMETRIES[g] for g in codes_all], "dropped_feature": dropped_all,
                     "represented": (norms > metrics.NORM_THRESHOLD).sum(1), "kept": is_kept}
        write_parquet(run_dir.root / "points.parquet", points)
        write_parquet(run_dir.root / "instances.parquet", instances)
        write_tensors(run_dir.root / "weights.safetensors", {"W": W, "b": b},
                      metadata={"layout": "W (instances, n_hidden=2, n_features=5), b (instances, 5); rows as "
                                          "instances.parquet (point-major, fits within a point); kept rows in "
                                          "points.parquet 'instance'"})
        Wk = W[kept].numpy()
        plot_geometry(run_dir.figures / "geometry.png", rel, Wk, codes, panel_points(rel, t))
        plot_losses(run_dir.figures / "loss_curves.png", rel, pent, dig, eval_loss[kept], t, c)

        checks = [check_pentagon(rel, codes, dims[kept]), check_digons(rel, codes, dropped), check_transition(c),
                  check_crossing(t, c)]
        return {"transition_rel_density": t, "transition_sparser_factor": None if t is None else 1 / t,
                "loss_crossing_rel_density": c,
                "geometry_counts": {g: int((codes == k).sum()) for k, g in enumerate(GEOMETRIES)},
                "fit_geometry_counts": {g: int((codes_all == k).sum()) for k, g in enumerate(GEOMETRIES)},
                "points": P, "checks": checks}

    def report(self, spec, summary):
        t, c = summary["transition_rel_density"], summary["loss_crossing_rel_density"]
        counts = ", ".join(f"{v} {k}" for k, v in summary["geometry_counts"].items())
        line = (f"pentagon breaks below relative density {t:.3g} ({1 / t:.2f}x sparser)" if t is not None
                else "no non-pentagon point below relative density 1")
        cross = f"losses cross at r = {c:.3g}" if c is not None else "loss curves do not cross below r = 1"
        return [f"non-uniform: {summary['points']} relative densities x {spec.fits} fits, {spec.steps} steps; "
                f"kept models: {counts}", f"{line}; {cross}"]


EXPERIMENT = NonUniform()
