"""The paper's introduction figure: n=5 features in m=2 dimensions as sparsity grows.

relu-output models, importance 0.9^i, densities 20^-linspace(0, 1, points) (1 down to 1/20, the
notebook's sweep), ``fits`` seeds per density of which the one with the lowest expected loss
(engine.expected_loss) is drawn. Dense: the two
most important features get the two dimensions, the rest are dropped. Sparse: all five are kept,
as a pentagon (each D_i = 2/5), and the ReLU filters out the interference.

Instance order: density-major, fits within a density.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .. import metrics
from ..expected_loss import instance_expected_losses
from ..plots import feature_arrows, plt, save
from ..spec import ModelSpec
from ..store import write_parquet, write_tensors
from .base import DensitySweep, DensitySweepSpec, check, option

N_FEATURES, N_HIDDEN = 5, 2


@dataclass(frozen=True)
class IntroSpec(DensitySweepSpec):
    n_features: ClassVar[int] = N_FEATURES
    points: int = option(10, "Densities from density_max down to density_min (log spaced), at least 2.")
    fits: int = option(5, "Models trained per density; the one with the lowest expected loss is drawn (the notebook "
                                 "trains one; several keep a stuck fit out of the figure).")
    density_min: float = option(0.05, "Sparsest density (the notebook's 1/20), in [2^-24, 1].")
    density_max: float = option(1.0, "Densest density, in [2^-24, 1].")
    importance_decay: float = option(0.9, "Feature i has importance decay^i.")


class Intro(DensitySweep):
    name = "intro"
    title = "5 features in 2 dimensions: dense keeps 2, sparse stores all 5 as a pentagon"
    spec_cls = IntroSpec
    model = ModelSpec(N_FEATURES, N_HIDDEN, "relu-output")
    presets = {
        # The notebook's optimiser (AdamW 1e-3, batch 1024, 10,000 steps) and sweep, 5 fits per point.
        "quick": dict(points=10, fits=5, steps=10_000, batch_size=1024, lr=1e-3),
        "paper": dict(points=10, fits=10, steps=10_000, batch_size=1024, lr=1e-3),
    }
    outputs = ("instances.parquet", "features.parquet", "weights.safetensors", "figures/intro.png")
    quick_cost = "50 models x 10,000 steps; 2.1 s on 2 CPU cores (cpu backend, Intel Xeon)"

    def analyse(self, spec, results, run_dir):
        res = results["models"]
        dens = spec.densities()
        # Fits ranked by expected loss (engine.expected_loss: exact in which of the 5 features are active,
        # values on a midpoint grid), not the training-loss window, as the phase diagram ranks its seeds.
        p = np.repeat(spec.densities(), spec.fits)[:, None] * np.ones(N_FEATURES)
        expected = instance_expected_losses(res.W, res.b, p, np.tile(spec.importance(), (len(p), 1)))
        kept, instances = self.kept_and_instances(spec, res, expected)
        W = res.W[kept]  # (points, m, n)
        norms = metrics.feature_norms(W).numpy()
        sup = metrics.superposition(W).numpy()
        dim = metrics.dimensionality(W).numpy()
        represented = (norms >= metrics.NORM_THRESHOLD).sum(1)
        write_parquet(run_dir.root / "instances.parquet", instances)
        P, n = norms.shape
        write_parquet(run_dir.root / "features.parquet", {
            "density": np.repeat(dens, n), "feature": np.tile(np.arange(n), P),
            "importance": np.tile(spec.importance(), P), "norm": norms.ravel(), "superposition": sup.ravel(),
            "dimensionality": dim.ravel(), "w_x": W[:, 0, :].reshape(-1).numpy(),
            "w_y": W[:, 1, :].reshape(-1).numpy(), "bias": res.b[kept].reshape(-1).numpy()})
        write_tensors(run_dir.root / "weights.safetensors", {"W": res.W, "b": res.b, "kept": torch.as_tensor(kept)},
                      metadata={"layout": "W (instances, 2, 5), b (instances, 5): rows as instances.parquet; "
                                          "kept: the instance drawn per density"})
        figure(run_dir.figures / "intro.png", dens, W.numpy(), spec.importance())
        # Every D_i of a pentagon is 2/5 (their mean is 2/5 for any clean solution with two dimensions in
        # use, e.g. two dedicated features and three dropped: test the worst one). Any tight frame of five
        # unit vectors has D_i = 2/5 too (e.g. a fan 36 degrees apart), so the angles between neighbours
        # must be the pentagon's 72 degrees as well. Dense: the two kept are the two most important, at
        # right angles (two kept antipodal in one dimension would also be "2 features").
        pentagon_err = float(np.abs(dim[-1] - 0.4).max())
        gap_err = float(np.abs(metrics.neighbour_angles(W[-1].numpy()) - 72.0).max())
        cos01 = abs(float(metrics.feature_cosines(W[:1])[0, 0, 1]))
        dense_ok = represented[0] == N_HIDDEN and bool((norms[0, :N_HIDDEN] >= metrics.NORM_THRESHOLD).all())
        checks = [
            check("dense-keeps-m", f"at the densest point (density {dens[0]:.3g}) the model keeps only as many "
                  "features as dimensions: the two most important, at right angles",
                  [int(represented[0]), round(cos01, 4)], dense_ok and cos01 < 0.1,
                  "[2 features (features 0 and 1), |cos| < 0.1]"),
            check("sparse-pentagon", f"at the sparsest density ({dens[-1]:.3g}) all 5 features are represented, "
                  "as a pentagon (every D_i near 2/5, neighbours 72 degrees apart)",
                  [int(represented[-1]), round(pentagon_err, 4), round(gap_err, 1)],
                  represented[-1] == N_FEATURES and pentagon_err < 0.05 and gap_err <= metrics.PENTAGON_ANGLE_TOLERANCE,
                  f"[5, max |D_i - 2/5| < 0.05, max |angle - 72| <= {metrics.PENTAGON_ANGLE_TOLERANCE:g} degrees]"),
        ]
        return {"densities": dens.tolist(), "represented": represented.tolist(),
                # D* = m / ||W||_F^2 (1 with 2 unit features, 2/5 for the pentagon); the mean of D_i is
                # not reported: it is about m / n for any clean solution (e.g. 2 features kept, 3 dropped)
                "dimensions_per_feature": metrics.dimensions_per_feature(W).tolist(), "checks": checks}

    def report(self, spec, summary):
        pairs = ", ".join(f"{d:.3g}: {r}" for d, r in zip(summary["densities"], summary["represented"]))
        return [f"intro (n=5, m=2): features represented by density: {pairs}"]


def figure(path, densities, W, importance) -> None:
    """One panel per density: the five columns of W (2, 5) as arrows from the origin, coloured by
    importance (the paper's yellow = most important to purple = least)."""
    P = len(densities)
    cols = min(P, 5)
    rows = math.ceil(P / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False, constrained_layout=True)
    colours = plt.cm.viridis_r(np.linspace(0.0, 1.0, W.shape[2]))
    lim = max(1.2, float(np.abs(W).max()) * 1.1)
    for k, ax in enumerate(axes.ravel()):
        if k >= P:
            ax.axis("off")
            continue
        feature_arrows(ax, W[k], colours, lim)
        ax.set_title(f"1-S = {densities[k]:.3g}", fontsize=10)
    handles = [plt.Line2D([], [], color=colours[i], lw=2, label=f"feature {i} (I={importance[i]:.2f})")
               for i in range(W.shape[2])]
    fig.legend(handles=handles, loc="outside lower center", ncol=W.shape[2], frameon=False, fontsize=8)
    fig.suptitle("5 features in 2 dimensions: the columns W_i of the lowest-loss model per density")
    save(fig, path)


EXPERIMENT = Intro()
