"""Double descent (Henighan et al. 2023, "Superposition, Memorization, and Double Descent"; ARENA).

relu-output models with m=2 hidden dimensions and n features of density ``density`` (importance 1),
each trained on a finite dataset of T examples (DataSpec.examples: drawn once from the Philox
dataset stream; every step trains on the whole dataset), T log spaced from ``examples_min`` to
``examples_max``, ``fits`` seeds per T. The test loss is measured on one fixed fresh sample
(``test_examples`` rows of the Philox evaluation stream, float64), the same for every model.
Expected: small datasets are memorized (train loss ~0), large ones generalize (train ~ test, and a
test loss clearly below the memorizers' and the zero model's), and between the two regimes the test
loss peaks. The checks read the median over fits per size, so one fit cannot make a peak that the
others do not share (the quick run's peak rests on half its fits, T=139: 3.41, 3.41, 6.51, 7.77 x 1e-3).

Geometry (the lowest-train-loss fit per T): features represented (||W_i|| >= 0.5) and data points
memorized (training examples whose hidden vector h = W x has norm >= 0.5).

The recipe is the notebook's AdamW (lr 1e-3, weight decay 1e-2) with a cosine schedule (ARENA adds
a 2,500-step warm-up, which engine schedules do not have). ``--batch-size`` is not used.
Instance order: job ``T<examples>`` per dataset size, fits within it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import metrics, reference, rng
from ..errors import SpecError
from ..plots import plt, save
from ..spec import DataSpec, ModelSpec, TrainSpec, _check_int, check_density
from ..store import write_parquet, write_tensors
from .base import CommonSpec, Experiment, Job, check, check_not_run, option

N_HIDDEN = 2
PEAK_MARGIN = 1.1  # the peak's test loss must exceed both ends' by 10%
# The largest dataset's test loss must lie this many standard errors below the smallest's and the zero
# model's. The quick run measures 32 and 56; a model that learned nothing (the zero model) scores 0.
GENERALIZE_Z = 5.0
MEDIAN_FITS = 3  # fits per size the peak check needs: a median of 1 or 2 is one fit's value


@dataclass(frozen=True)
class DoubleDescentSpec(CommonSpec):
    features: int = option(100, "Number of features n (the paper: 10,000; ARENA: 1,000).")
    density: float = option(0.01, "Feature density 1 - S, in [2^-24, 1].")
    points: int = option(10, "Dataset sizes T, log spaced from examples_min to examples_max.")
    examples_min: int = option(3, "Smallest dataset size T.")
    examples_max: int = option(3000, "Largest dataset size T.")
    fits: int = option(3, "Seeds per dataset size (the checks use their median test loss, the peak check "
                                 "from 3 seeds on; the geometry is the best fit's).")
    test_examples: int = option(20_000, "Fresh examples the test loss is measured on (analysis only).")
    # Kept at CommonSpec's default, never used: runs recorded before the field was refused keep their identity.
    batch_size: int = option(1024, "Not used: every step trains on the whole dataset (batch = T); only the default "
                                   "is accepted.")

    def __post_init__(self):
        _check_int("features", self.features, 1, 100_000)
        check_density("density", self.density)
        _check_int("points", self.points, 2, 100)
        _check_int("examples_min", self.examples_min, 1, 2**20)
        _check_int("examples_max", self.examples_max, 1, 2**20)
        if self.examples_max <= self.examples_min:
            raise SpecError("examples_max", f"an integer > examples_min ({self.examples_min})", self.examples_max)
        _check_int("fits", self.fits, 1, 10_000)
        _check_int("test_examples", self.test_examples, 1, 10_000_000)
        if self.batch_size != 1024:
            raise SpecError("batch_size", "left at its default, 1024 (unused: double-descent trains every step on its "
                                          "whole dataset, batch = T)", self.batch_size)
        top = max(p for p in range(2, self.points + 1) if len(self._sizes(p)) == p)
        if top < self.points:
            raise SpecError("points", f"at most {top} here: log spacing gives only {top} distinct dataset sizes from "
                                      f"{self.examples_min} to {self.examples_max}", self.points)
        super().__post_init__()

    def train_spec(self, batch_size: int | None = None) -> TrainSpec:
        """Each job's batch is its dataset (batch_size = T, jobs()); examples_max when no T is given."""
        return super().train_spec(batch_size or self.examples_max)

    def sizes(self) -> list[int]:
        """Dataset sizes T (points,), log spaced, distinct, ascending."""
        return self._sizes(self.points)

    def _sizes(self, points: int) -> list[int]:
        T = np.unique(np.round(np.logspace(math.log10(self.examples_min), math.log10(self.examples_max),
                                           points)).astype(int))
        return [int(t) for t in T]


def test_sample(spec: DoubleDescentSpec) -> torch.Tensor:
    """The fixed test set (test_examples, n), float64: fresh draws of the Philox evaluation stream."""
    u = rng.uniforms(spec.seed, torch.tensor([0]), 0, spec.test_examples, spec.features, stream=rng.STREAM_EVAL)
    return reference.features_from_uniform(u, torch.full((1, spec.features), spec.density))[0].double()


def test_losses(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor, rows: int = 4096) -> np.ndarray:
    """Loss (K,) of each model W (K, m, n), b (K, n) on the test set x (N, n), float64, in row blocks."""
    return (sum(blk.sum(1) for blk in _row_loss_blocks(W, b, x, rows)) / x.shape[0]).numpy()


def row_losses(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """Per test example, the loss averaged over the models W (K, m, n), b (K, n): (N,) float64. The
    paired differences of two such rows (two dataset sizes, or a size and the zero model, on the same
    test set) give the standard error of their difference in test loss (``paired_z``)."""
    return torch.cat([blk.mean(0) for blk in _row_loss_blocks(W, b, x, rows)])


def _row_loss_blocks(W, b, x, rows):
    """(K, r) losses (mean over features) of each model on each test example, r rows at a time."""
    W, b = W.double(), b.double()
    for r in range(0, x.shape[0], rows):
        xb = x[r:r + rows].expand(W.shape[0], -1, -1)
        d = reference.forward(W, b, xb, "relu-output") - xb
        yield (d * d).mean(2)


def paired_z(lower: torch.Tensor, higher: torch.Tensor) -> float:
    """How many standard errors the mean of ``higher`` (N,) lies above that of ``lower`` (N,), both
    losses on the same N test examples (a paired difference, so the test set's own noise cancels)."""
    d = (higher - lower).double()
    se = float(d.std()) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    if se > 0:
        return float(d.mean()) / se
    mean = float(d.mean())  # no spread: identical losses (0, no evidence), or a constant difference
    return 0.0 if mean == 0 else math.copysign(math.inf, mean)


def _fit_statistics(test: np.ndarray, train: np.ndarray) -> dict:
    """Median and mean over one size's converged fits of their test (F,) and train (F,) losses
    (NaN where every fit diverged)."""
    stat = (lambda f, v: float(f(v)) if len(v) else float("nan"))
    return {"median_test_loss": stat(np.median, test), "median_train_loss": stat(np.median, train),
            "mean_test_loss": stat(np.mean, test), "mean_train_loss": stat(np.mean, train)}


def descent_checks(test: np.ndarray, train: np.ndarray, examples: list, first_rows: torch.Tensor,
                   last_rows: torch.Tensor, zero_rows: torch.Tensor, fits: int = 3) -> list[dict]:
    """The paper checks from the median over fits of the test (P,) and train (P,) losses per dataset
    size (ascending ``examples``), and the per-test-example losses (N,) of the smallest size's and the
    largest size's fits (averaged over fits) and of the zero model.

    Medians, so one fit cannot make (or hide) a peak: a median >= 1.1x the ends means at least half of
    that size's fits are (an odd number of fits: the middle one; even: the upper middle one). With
    fewer than MEDIAN_FITS fits per size a median is one fit's, so the peak check is not run. A peak
    one grid size wide is a real one: the paper preset (n=1000, T=3..3000, 10 sizes) peaks at T=300
    in 5 of 5 fits (3.6-31.9 x 1e-3 against 3.5 and 3.3 at the ends) with its neighbours at 1.0x. The
    largest dataset must generalize: its test loss below the smallest's (memorized) and the zero
    model's, each by more than GENERALIZE_Z standard errors of the paired difference on the shared test
    set (a model that learned nothing scores 0 there)."""
    peak = int(np.nanargmax(test)) if np.isfinite(test).any() else 0
    interior = 0 < peak < len(test) - 1
    z_small, z_zero = paired_z(last_rows, first_rows), paired_z(last_rows, zero_rows)
    peak_claim = (f"the test loss peaks between the regimes: the median over fits of the test loss is highest at an "
                  f"inner dataset size, and there at least {PEAK_MARGIN:.1f}x the test loss at both ends")
    if fits < MEDIAN_FITS:
        peak_check = check_not_run("test-loss-peak", peak_claim, f"--fits >= {MEDIAN_FITS} (this run: {fits}; "
                                   "with fewer, one fit makes a size's median)")
    else:
        peak_check = check("test-loss-peak", peak_claim, {"peak_examples": examples[peak], "peak": float(test[peak]),
                                                          "smallest": float(test[0]), "largest": float(test[-1])},
                           interior and test[peak] >= PEAK_MARGIN * np.max([test[0], test[-1]]),  # NaN: fail
                           f"inner peak, >= {PEAK_MARGIN:.1f}x both ends")
    return [
        peak_check,
        check("memorize-then-generalize", "the smallest dataset is memorized (train loss <= 1% of test loss) and "
              "the largest generalizes (train loss within 10% of test loss; medians over fits)",
              [float(train[0] / test[0]), float(train[-1] / test[-1])],
              train[0] <= 0.01 * test[0] and abs(train[-1] / test[-1] - 1) <= 0.1, "[<= 0.01, 0.9..1.1]"),
        check("large-data-beats-memorizing", "the largest dataset's models have learned the distribution: their "
              "test loss is below the smallest dataset's and the zero model's, in standard errors of the paired "
              "difference on the shared test set", [z_small, z_zero],
              z_small > GENERALIZE_Z and z_zero > GENERALIZE_Z, f"[> {GENERALIZE_Z:g}, > {GENERALIZE_Z:g}]"),
    ]


class DoubleDescent(Experiment):
    name = "double-descent"
    title = "finite datasets: memorize small ones, generalize from large ones; the test loss peaks between"
    spec_cls = DoubleDescentSpec
    presets = {
        # 4 fits, not 3: each size's job trains its fits in parallel over the cores, and on 2 cores 3 left one
        # idle a third of the time; 4 took the same wall (19.0 / 18.3 s against 18.1 s, CPU Intel Xeon, stop 28).
        "quick": dict(features=100, points=10, fits=4, steps=10_000, lr=1e-3, weight_decay=1e-2, schedule="cosine"),
        "paper": dict(features=1000, points=10, fits=5, steps=15_000, lr=1e-3, weight_decay=1e-2, schedule="cosine"),
    }
    analysis_fields = ("test_examples",)
    outputs = ("instances.parquet", "sizes.parquet", "weights.safetensors", "figures/double_descent.png")
    quick_cost = ("40 models (n=100, m=2) x 10,000 steps on 3..3,000 examples; 18 s on 2 CPU cores "
                  "(cpu backend, Intel Xeon)")

    def job_sizes(self, spec):
        from .memory import JobSize
        return [JobSize(f"T{T}", spec.fits, spec.features, N_HIDDEN, batch=T, examples=T) for T in spec.sizes()]

    def jobs(self, spec):
        jobs = []
        for T in spec.sizes():
            p = np.full((spec.fits, spec.features), spec.density)
            train = spec.train_spec(batch_size=T)  # every step: the whole dataset
            jobs.append(Job(f"T{T}", ModelSpec(spec.features, N_HIDDEN), DataSpec(p, 1.0, examples=T), train))
        return jobs

    def analyse(self, spec, results, run_dir):
        x_test = test_sample(spec)
        zero_rows = (x_test ** 2).mean(1)  # (N,) the zero model's loss per test example
        zero_loss = float(zero_rows.mean())
        rows, sizes, tensors, kept, end_rows = [], [], {}, {}, []
        for T in spec.sizes():
            res = results[f"T{T}"]
            train_loss = res.loss.numpy().astype(np.float64)
            test = test_losses(res.W, res.b, x_test)
            ok = ~res.diverged
            k = int(np.argmin(np.where(ok, train_loss, np.inf)))
            if T in (spec.sizes()[0], spec.sizes()[-1]):  # the ends' per-example losses, for paired_z
                end_rows.append(row_losses(res.W[ok], res.b[ok], x_test) if ok.any()
                                else torch.full_like(zero_rows, float("nan")))
            data = reference.features_from_uniform(rng.dataset_uniforms(spec.train_spec().seed, torch.tensor([k]),
                                                                        T, spec.features),
                                                   torch.full((1, spec.features), spec.density))[0].double()
            h = data @ res.W[k].double().T  # (T, m) hidden vectors of the training examples
            norms = metrics.feature_norms(res.W[k:k + 1])[0].numpy()
            kept[T] = (res.W[k].numpy(), h.numpy())
            rows.append({"examples": [T] * len(train_loss), "instance": np.arange(len(train_loss)),
                         "fit": np.arange(len(train_loss)), "final_loss": train_loss,
                         "test_loss": test, "diverged": res.diverged, "kept": (np.arange(len(train_loss)) == k) & ok})
            sizes.append({"examples": T, **_fit_statistics(test[ok], train_loss[ok]),
                          "features_represented": int((norms >= metrics.NORM_THRESHOLD).sum()),
                          "points_memorized": int((h.norm(dim=1) >= 0.5).sum())})
            tensors[f"W_T{T}"], tensors[f"b_T{T}"] = res.W, res.b
        write_parquet(run_dir.root / "instances.parquet",
                      {k: np.concatenate([np.asarray(r[k]) for r in rows]) for k in rows[0]})
        write_parquet(run_dir.root / "sizes.parquet", {k: [s[k] for s in sizes] for k in sizes[0]})
        write_tensors(run_dir.root / "weights.safetensors", tensors,
                      metadata={"layout": f"W_T<examples> (fits, {N_HIDDEN}, n), b_T<examples> (fits, n): rows as "
                                          "instances.parquet for that dataset size"})
        figure(run_dir.figures / "double_descent.png", spec, rows, sizes, kept, zero_loss)
        checks = descent_checks(np.array([s["median_test_loss"] for s in sizes]),
                                np.array([s["median_train_loss"] for s in sizes]),
                                [s["examples"] for s in sizes], *end_rows, zero_rows, fits=spec.fits)
        return {"examples": [s["examples"] for s in sizes],
                **{key: [s[key] for s in sizes] for key in ("median_test_loss", "median_train_loss",
                                                           "mean_test_loss", "mean_train_loss")},
                "zero_model_test_loss": zero_loss,
                "features_represented": [s["features_represented"] for s in sizes],
                "points_memorized": [s["points_memorized"] for s in sizes], "checks": checks}

    def report(self, spec, summary):
        rows = ", ".join(f"T={t}: {v:.3g}" for t, v in zip(summary["examples"], summary["median_test_loss"]))
        return [f"double descent (n={spec.features}, m=2, density {spec.density:g}): median test loss {rows} "
                f"(zero model {summary['zero_model_test_loss']:.3g})"]


def figure(path, spec, rows, sizes, kept, zero_loss) -> None:
    """Left: train and test loss against dataset size (dots: fits; lines: their median; a memorized
    dataset's train loss, down to ~1e-13, is drawn at 1e-9 and the legend says so), the zero
    model's test loss dashed. Right: the hidden space of the best fit at 4 sizes: feature columns W_i
    (lines) and the training examples' hidden vectors W x (dots)."""
    T = np.array([s["examples"] for s in sizes])
    fig = plt.figure(figsize=(11, 4.8), constrained_layout=True)
    grid = fig.add_gridspec(2, 3, width_ratios=[2.2, 1, 1])
    ax = fig.add_subplot(grid[:, 0])
    for r in rows:
        ax.scatter(r["examples"], r["test_loss"], s=10, color="#c44e52", alpha=0.5)
        ax.scatter(r["examples"], np.maximum(r["final_loss"], 1e-9), s=10, color="#3b75af", alpha=0.5)
    ax.plot(T, [s["median_test_loss"] for s in sizes], color="#c44e52", label="test loss (median of fits)")
    floor = any(np.any(np.asarray(r["final_loss"]) < 1e-9) for r in rows)
    ax.plot(T, np.maximum([s["median_train_loss"] for s in sizes], 1e-9), color="#3b75af",
            label="train loss (median)" + (" (below 1e-9 drawn at 1e-9)" if floor else ""))
    ax.axhline(zero_loss, color="0.5", ls="--", lw=1, label="zero model (test)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training set size T")
    ax.set_ylabel("loss")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(f"n={spec.features}, m=2, density {spec.density:g}")
    shown = [T[int(round(i))] for i in np.linspace(0, len(T) - 1, 6)[[0, 2, 3, 5]]]
    for j, t in enumerate(shown):
        a = fig.add_subplot(grid[j // 2, 1 + j % 2])
        W, h = kept[t]
        lim = max(1.0, float(np.abs(W).max()), float(np.abs(h).max()) if h.size else 0) * 1.1
        for i in np.flatnonzero(np.linalg.norm(W, axis=0) > 0.1):
            a.plot([0, W[0, i]], [0, W[1, i]], color="#3b75af", lw=1)
        a.scatter(h[:, 0], h[:, 1], s=6, color="#c44e52")
        a.set_xlim(-lim, lim)
        a.set_ylim(-lim, lim)
        a.set_aspect("equal")
        a.set_xticks([])
        a.set_yticks([])
        a.set_title(f"T = {t}", fontsize=9)
    fig.text(0.99, 0.01, "blue: features W_i; red: training examples W x", ha="right", fontsize=8)
    save(fig, path)


EXPERIMENT = DoubleDescent()
