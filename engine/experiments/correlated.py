"""Correlated and anticorrelated features (the paper's section of that name).

Four setups (importance 1, ``fits`` models each, the one with the lowest expected loss analysed:
engine.expected_loss.set_expected_losses, exact in which sets are active):
- ``corr2x2``: n=4 in m=2, 2 sets of 2 correlated features, at ``density``;
- ``anti2x2``: n=4 in m=2, 2 sets of 2 anticorrelated features, at ``density``;
- ``corr3x2``: n=6 in m=2, 3 sets of 2 correlated features, densities log spaced from density_min
  to density_max (the collapse to a PCA-like solution as density rises);
- ``corr2x10``: n=20 in m=10, 2 sets of 10 correlated features, at ``density`` (local bases).
Paper: correlated features are represented orthogonally, anticorrelated ones antipodally; a
correlated set collapses onto its principal component (members share one direction) when dense;
sets of correlated features get local almost-orthogonal bases.

Geometry from the cosine cos(W_i, W_j) of feature columns: a set is *collapsed* when its members
are represented (||W_i|| >= 0.5) and all pairwise cosines exceed COLLAPSED (0.9); correlated
members are *orthogonal* when |cos| <= ORTHOGONAL (0.2); anticorrelated members *antipodal* when
cos <= -COLLAPSED. The sampling rule of sets is engine.reference.features_from_uniform.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import metrics
from ..errors import SpecError
from ..expected_loss import set_expected_losses
from ..plots import feature_arrows, plt, save
from ..spec import DataSpec, ModelSpec, _check_int, check_density
from ..store import write_parquet, write_tensors
from .base import CommonSpec, Experiment, Job, best_of_fits, check, check_not_run, kept_column, option

COLLAPSED, ORTHOGONAL = 0.9, 0.2
# corr2x10: a fit has local bases when its mean |cos| within a set is <= LOCAL_WITHIN and the mean
# across sets is > LOCAL_RATIO x that (represented features only); the check wants it of the kept fit
# and of at least LOCAL_SHARE of all fits. Quick run: 10 of 10 fits (ratios 9-51; 20 of 20 with 20 fits); trained on
# independent features (sets removed from the data), 1 of 10 (the rest about equal within and across),
# and that one is what the set-aware ranking kept, so the kept fit alone passed the control (an audit).
LOCAL_WITHIN, LOCAL_RATIO, LOCAL_SHARE = 0.05, 3.0, 0.5
# ... and across >= LOCAL_ACROSS with at least half of each set represented: the quick run's fits have
# 0.14-0.25 across and all 20 represented; the independent-feature control's 0.04-0.08.
LOCAL_ACROSS = 0.1
# name: (n, m, sets)
SETUPS = {
    "corr2x2": (4, 2, (("correlated", 0, 2), ("correlated", 2, 2))),
    "anti2x2": (4, 2, (("anticorrelated", 0, 2), ("anticorrelated", 2, 2))),
    "corr3x2": (6, 2, (("correlated", 0, 2), ("correlated", 2, 2), ("correlated", 4, 2))),
    "corr2x10": (20, 10, (("correlated", 0, 10), ("correlated", 10, 10))),
}


@dataclass(frozen=True)
class CorrelatedSpec(CommonSpec):
    density: float = option(0.03, "Density of every feature set in corr2x2, anti2x2 and corr2x10, in [2^-24, 1].")
    points: int = option(7, "Densities of the corr3x2 sweep, log spaced from density_min to density_max.")
    density_min: float = option(0.01, "Sparsest density of the corr3x2 sweep, in [2^-24, 1].")
    density_max: float = option(1.0, "Densest density of the corr3x2 sweep, in [2^-24, 1].")
    fits: int = option(10, "Models trained per setup and density; the one with the lowest expected loss is analysed.")

    def __post_init__(self):
        check_density("density", self.density)
        _check_int("points", self.points, 2, 1000)  # both ends of the range are trained
        check_density("density_min", self.density_min)
        check_density("density_max", self.density_max)
        if self.density_max < self.density_min:
            raise SpecError("density_max", f"a number >= density_min ({self.density_min})", self.density_max)
        _check_int("fits", self.fits, 1, 100_000)
        super().__post_init__()

    def sweep(self) -> np.ndarray:
        """corr3x2 densities (points,), log spaced, sparsest first."""
        return np.logspace(math.log10(self.density_min), math.log10(self.density_max), self.points)

    def densities(self, setup: str) -> np.ndarray:
        return self.sweep() if setup == "corr3x2" else np.array([self.density])


def cosines(W: torch.Tensor) -> np.ndarray:
    """cos(W_i, W_j) of feature columns, (K, n, n) from W (K, m, n); 0 for an unlearned column."""
    W = W.double()
    unit = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.einsum("kmi,kmj->kij", unit, unit).numpy()


def set_geometry(W: torch.Tensor, sets) -> list[dict]:
    """Per model (K) and set: represented members, the members' smallest and largest pairwise
    cosine, and whether the set is collapsed. Returns a list (K) of lists (sets) of dicts."""
    C, norms = cosines(W), metrics.feature_norms(W).numpy()
    out = []
    for k in range(W.shape[0]):
        row = []
        for _, a, size in sets:
            idx = np.arange(a, a + size)
            pair = C[k][np.ix_(idx, idx)][~np.eye(size, dtype=bool)]
            rep = int((norms[k, idx] >= metrics.NORM_THRESHOLD).sum())
            row.append({"represented": rep, "min_cos": float(pair.min()), "max_cos": float(pair.max()),
                        "max_abs_cos": float(np.abs(pair).max()), "collapsed": bool(rep == size and pair.min() > COLLAPSED)})
        out.append(row)
    return out


def block_cosines(W: torch.Tensor, sets) -> tuple[float, float]:
    """(mean |cos| between members of one set, mean |cos| between features of different sets) of one
    model W (m, n), over the represented features (||W_i|| >= 0.5) of the sets; NaN where no such
    pair exists (an unlearned column's cosine 0 would read as orthogonal: a zero model gave (0, 0))."""
    C = np.abs(cosines(W[None])[0])
    label = np.full(W.shape[1], -1)
    for s, (_, a, size) in enumerate(sets):
        label[a:a + size] = s
    rep = (metrics.feature_norms(W[None])[0].numpy() >= metrics.NORM_THRESHOLD) & (label >= 0)
    both = rep[:, None] & rep[None, :]
    same = (label[:, None] == label[None, :]) & ~np.eye(len(label), dtype=bool) & both
    other = (label[:, None] != label[None, :]) & both
    return (float(C[same].mean()) if same.any() else float("nan"),
            float(C[other].mean()) if other.any() else float("nan"))


def local_bases(W: torch.Tensor, sets) -> bool:
    """Whether one corr2x10 fit W (m, n) has local bases: at least half of every set represented, mean
    |cos| within sets <= LOCAL_WITHIN, across sets >= LOCAL_ACROSS and > LOCAL_RATIO x within
    (block_cosines; False where either is NaN). Without the first two, a model that learned 3 of 20
    features, or 10 in dimensions of their own, passed (a review)."""
    norms = metrics.feature_norms(W[None])[0].numpy()
    if any((norms[a:a + size] >= metrics.NORM_THRESHOLD).sum() * 2 < size for _, a, size in sets):
        return False
    within, across = block_cosines(W, sets)
    return bool(within <= LOCAL_WITHIN and across >= LOCAL_ACROSS and across > LOCAL_RATIO * within)


def fit_shares(results) -> dict:
    """Shares of all converged fits (not only the kept) with each setup's geometry: corr2x2 with both sets
    orthogonal, anti2x2 with both antipodal, corr2x10 with local bases. What the ranking leaves out: in
    the 2x2 setups training alone reaches the paper's geometry about as often as symmetry does by chance
    (trained on independent features, 20 of 30 fits were orthogonal and 10 of 30 antipodal: 2/3 and 1/3;
    on anticorrelated sets 21 of 60 antipodal, on correlated sets 50 of 60 orthogonal). There the kept
    fit shows the lower-expected-loss solution, which ranking by the set-aware expected loss finds."""
    out = {}
    for name, rule in (("corr2x2", lambda g: g["represented"] == 2 and g["max_abs_cos"] <= ORTHOGONAL),
                       ("anti2x2", lambda g: g["represented"] == 2 and g["max_cos"] <= -COLLAPSED)):
        res = results[name]
        ok = ~np.asarray(res.diverged)
        geo = set_geometry(res.W[torch.as_tensor(ok)], SETUPS[name][2])
        out[name + ("_orthogonal" if name == "corr2x2" else "_antipodal")] = (
            float(np.mean([all(rule(g) for g in row) for row in geo])) if geo else float("nan"))
    res = results["corr2x10"]
    fits = [k for k in range(res.W.shape[0]) if not res.diverged[k]]
    out["corr2x10_local_bases"] = (float(np.mean([local_bases(res.W[k], SETUPS["corr2x10"][2])
                                                  for k in fits])) if fits else float("nan"))
    return out


class Correlated(Experiment):
    name = "correlated"
    title = "correlated features go orthogonal, anticorrelated antipodal; dense correlated sets collapse (PCA-like)"
    spec_cls = CorrelatedSpec
    presets = {
        # 20 fits: in corr3x2 at density 0.046 only about a quarter of fits find the best solution (all
        # three pairs at cos ~0.45, none collapsed; 7 of 30 fits over seeds 1-3), so 10 fits missed it on
        # seed 2 and kept a fit with one pair collapsed, 2.5% higher in expected loss (sets-collapse failed).
        "quick": dict(fits=20, steps=10_000, batch_size=1024, lr=1e-3, points=7),
        "paper": dict(fits=50, steps=10_000, batch_size=1024, lr=1e-3, points=13),
    }
    outputs = ("instances.parquet", "sets.parquet", "weights.safetensors", "figures/correlated.png")
    quick_cost = "200 models x 10,000 steps; 27 s on 2 CPU cores (cpu backend, AMD EPYC Zen 4)"

    def job_sizes(self, spec):
        from .memory import JobSize
        return [JobSize(name, spec.densities(name).size * spec.fits, n, m) for name, (n, m, _) in SETUPS.items()]

    def jobs(self, spec):
        jobs = []
        for name, (n, m, sets) in SETUPS.items():
            d = np.repeat(spec.densities(name), spec.fits)
            p = np.repeat(d[:, None], n, axis=1)
            jobs.append(Job(name, ModelSpec(n, m), DataSpec(p, 1.0, sets), spec.train_spec()))
        return jobs

    def analyse(self, spec, results, run_dir):
        instances, set_rows, tensors, kept_W = [], [], {}, {}
        for name, (n, m, sets) in SETUPS.items():
            res = results[name]
            dens = spec.densities(name)
            loss = res.loss.numpy()
            p = np.repeat(dens, spec.fits)[:, None] * np.ones(n)
            expected = set_expected_losses(res.W, res.b, p, np.ones_like(p), sets, seed=spec.seed)
            kept = best_of_fits(expected, spec.fits, res.diverged)
            kept_W[name] = res.W[kept]
            instances.append({"setup": [name] * len(loss), "instance": np.arange(len(loss)), "density": np.repeat(dens, spec.fits),
                              "fit": np.tile(np.arange(spec.fits), len(dens)), "final_loss": loss, "expected_loss": expected,
                              "diverged": res.diverged, "kept": kept_column(len(loss), kept, res.diverged)})
            for j, geo in enumerate(set_geometry(res.W[kept], sets)):
                for s, g in enumerate(geo):
                    set_rows.append({"setup": name, "density": float(dens[j]), "set": s, "kind": sets[s][0],
                                     "size": sets[s][2], **g})
            tensors[f"W_{name}"], tensors[f"b_{name}"] = res.W, res.b
            tensors[f"kept_{name}"] = torch.as_tensor(kept)
        cat = {k: np.concatenate([np.asarray(r[k]) for r in instances]) for k in instances[0]}
        write_parquet(run_dir.root / "instances.parquet", cat)
        write_parquet(run_dir.root / "sets.parquet", {k: [r[k] for r in set_rows] for k in set_rows[0]})
        write_tensors(run_dir.root / "weights.safetensors", tensors,
                      metadata={"layout": "W_<setup> (instances, m, n), b_<setup> (instances, n): rows as "
                                          "instances.parquet for that setup; kept_<setup>: the instance analysed "
                                          "per density"})
        geo = {name: set_geometry(kept_W[name], SETUPS[name][2]) for name in SETUPS}
        shares = fit_shares(results)
        within, across = block_cosines(kept_W["corr2x10"][0], SETUPS["corr2x10"][2])
        figure(run_dir.figures / "correlated.png", spec, kept_W, within, across)

        corr = geo["corr2x2"][0]
        anti = geo["anti2x2"][0]
        sweep = geo["corr3x2"]
        collapsed = [sum(g["collapsed"] for g in row) for row in sweep]
        represented = [sum(g["represented"] == 2 for g in row) for row in sweep]
        # The paper: no pair collapsed at <= 0.05, one at 0.05-0.15, two at 0.15-0.2, all at 0.25-0.5,
        # then a PCA-like spread of all features (density 1: not a collapse of pairs, so not counted).
        sweep_d = [d for d in spec.sweep() if d <= 0.5]
        upto = collapsed[:len(sweep_d)]
        collapse_claim = ("as density rises the correlated pairs collapse onto shared directions one by one (corr3x2, "
                          "densities <= 0.5: none collapsed at <= 0.05, the count never falls, all 3 at the densest)")
        checks = [
            check("correlated-orthogonal", f"correlated features are represented orthogonally (corr2x2 at density "
                  f"{spec.density:.3g}: each set's members represented, |cos| <= {ORTHOGONAL})",
                  [round(g["max_abs_cos"], 4) for g in corr],
                  all(g["represented"] == 2 and g["max_abs_cos"] <= ORTHOGONAL for g in corr), f"<= {ORTHOGONAL} each"),
            check("anticorrelated-antipodal", f"anticorrelated features are represented antipodally (anti2x2 at "
                  f"density {spec.density:.3g}: cos <= -{COLLAPSED})", [round(g["max_cos"], 4) for g in anti],
                  all(g["represented"] == 2 and g["max_cos"] <= -COLLAPSED for g in anti), f"<= -{COLLAPSED} each"),
            check("sets-collapse", collapse_claim, upto, bool(upto) and all(c == 0 for c, d in zip(upto, sweep_d) if d <= 0.05)
                  and all(a <= b for a, b in zip(upto, upto[1:])) and upto[-1] == 3,
                  "0 at <= 0.05, non-decreasing, 3 at the last") if upto else
            check_not_run("sets-collapse", collapse_claim, "corr3x2 densities <= 0.5 (--density-min; this run's "
                          f"sparsest is {spec.sweep().min():.3g})"),
            check("local-bases", f"2 sets of 10 correlated features in m=10 get local orthogonal bases (mean |cos| "
                  f"within a set <= {LOCAL_WITHIN}, across sets >= {LOCAL_ACROSS} and > {LOCAL_RATIO:g}x that, half of each "
                  f"set represented; density "
                  f"{spec.density:.3g}; over represented features): [kept fit's within, its across, share of all fits "
                  "with local bases]",
                  [round(within, 4), round(across, 4), round(shares["corr2x10_local_bases"], 3)],
                  local_bases(kept_W["corr2x10"][0], SETUPS["corr2x10"][2])
                  and shares["corr2x10_local_bases"] >= LOCAL_SHARE,
                  f"[<= {LOCAL_WITHIN}, >= {LOCAL_ACROSS} and > {LOCAL_RATIO:g}x within, >= {LOCAL_SHARE}]"),
        ]
        return {"corr3x2_densities": spec.sweep().tolist(), "corr3x2_sets_collapsed": collapsed,
                "corr3x2_sets_represented": represented, "corr2x10_mean_abs_cos": {"within": within, "across": across},
                "share_of_fits": shares, "checks": checks}

    def report(self, spec, summary):
        rows = ", ".join(f"{d:.3g}: {r} rep / {c} collapsed" for d, r, c in zip(
            summary["corr3x2_densities"], summary["corr3x2_sets_represented"], summary["corr3x2_sets_collapsed"]))
        return [f"correlated: 3 sets of 2 correlated features in m=2, sets represented / collapsed by density: {rows}"]


SET_COLOURS = ("#c44e52", "#3b75af", "#55a868")


def figure(path, spec, kept_W, within, across) -> None:
    """Top: the columns of W for corr2x2, anti2x2 and each corr3x2 density (arrows, one colour per
    set); bottom right: |cos| between the 20 features of corr2x10 (two diagonal blocks = two sets)."""
    sweep = spec.sweep()
    panels = [("corr2x2", 0, f"2 correlated pairs\n1-S = {spec.density:.3g}"),
              ("anti2x2", 0, f"2 anticorrelated pairs\n1-S = {spec.density:.3g}")]
    panels += [("corr3x2", j, f"3 correlated pairs\n1-S = {d:.3g}") for j, d in enumerate(sweep)]
    cols = min(5, len(panels) + 1)
    rows = math.ceil((len(panels) + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.8 * rows), squeeze=False, constrained_layout=True)
    axes = axes.ravel()
    for ax, (name, j, title) in zip(axes, panels):
        W = kept_W[name][j].numpy()
        sets = SETUPS[name][2]
        colours = [SET_COLOURS[s] for s, (_, a, size) in enumerate(sets) for _ in range(size)]
        feature_arrows(ax, W, colours, max(1.2, float(np.abs(W).max()) * 1.1))
        ax.set_title(title, fontsize=9)
    ax = axes[len(panels)]
    C = np.abs(cosines(kept_W["corr2x10"][:1])[0])
    im = ax.imshow(C, cmap="viridis", vmin=0, vmax=1)
    ax.set_title(f"2 sets of 10 in m=10: |cos|\nwithin {within:.3f}, across {across:.3f}", fontsize=9)
    ax.set_xticks([4.5, 14.5], ["set 1\n(0-9)", "set 2\n(10-19)"], fontsize=8)
    ax.set_yticks([4.5, 14.5], ["set 1", "set 2"], fontsize=8)
    for at in (ax.axhline, ax.axvline):  # the boundary between the sets
        at(9.5, color="w", lw=0.8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    for ax in axes[len(panels) + 1:]:
        ax.axis("off")
    fig.suptitle("Correlated and anticorrelated features: lowest expected loss model per setup (colour = feature set)")
    save(fig, path)


EXPERIMENT = Correlated()
