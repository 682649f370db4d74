"""Probe a training recipe for the computation experiment: how many features an abs-computation model
computes at given densities (the figures README.md quotes for `supbench run computation`).

    python -m bench.probe_computation --steps 30000 --densities 0.01 0.001
    python -m bench.probe_computation --batch 8192 --steps 4000 --densities 0.001
    python -m bench.probe_computation --decay 1.0 --steps 5000 --densities 0.01 0.001
    python -m bench.probe_computation --w2-scale 1 --fits 4 --steps 5000 --densities 1 0.3 0.1 0.03 0.01 0.003 0.001

Trains ``--fits`` n=100, m=40 models per density (cpu backend when numba is installed, else torch) and
prints, per density, the kept (lowest training loss) model's float64 test loss (200,000 fresh examples
at that density) and the counts of engine.experiments.computation: features with R^2 >= 0.5
(computed), R^2 >= 0.15 (at least one sign), and the mean features carried per neuron; with several
fits, every fit's test loss and computed count. ``--w2-scale`` overrides reference.W2_INIT_SCALE (the
initial size of W2 relative to its Xavier draw) for this probe only.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from engine import DataSpec, TrainSpec, backends, reference, rng, train
from engine.experiments import computation as co


def test_loss(P: dict, spec: co.ComputationSpec, density: float, examples: int = 200_000) -> float:
    """Float64 importance-weighted loss of one model (P: {name: tensor}) on fresh examples from the
    evaluation stream, every feature at ``density``: the training objective without batch noise."""
    n = spec.features
    u = rng.uniforms(spec.seed + 1, torch.tensor([0]), 0, examples, n, stream=rng.STREAM_EVAL)
    x = reference.features_from_uniform(u, torch.full((1, n), density), signed=True)[0].double()
    Pd = {k: v.double()[None] for k, v in P.items()}  # one instance
    imp = torch.as_tensor(spec.importance(), dtype=torch.float64)[None]
    return float(reference.params_instance_loss(Pd, x[None], imp, spec.model)[0])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--schedule", default="constant")
    ap.add_argument("--decay", type=float, default=0.8, help="importance decay^i")
    ap.add_argument("--densities", type=float, nargs="+", default=[0.01, 0.001])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fits", type=int, default=1, help="models per density; the lowest training loss is kept")
    ap.add_argument("--w2-scale", type=float, default=reference.W2_INIT_SCALE,
                    help=f"initial W2 relative to its Xavier draw (default {reference.W2_INIT_SCALE})")
    a = ap.parse_args(argv)
    default_scale, reference.W2_INIT_SCALE = reference.W2_INIT_SCALE, a.w2_scale  # init_params reads it per call
    try:
        spec = co.ComputationSpec(importance_decay=a.decay, seed=a.seed)
        d = np.repeat(np.array(a.densities), a.fits)
        p = np.repeat(d[:, None], spec.features, axis=1)
        backend = "cpu" if backends.cpu_usable() else "torch"
        t0 = time.perf_counter()
        res = train(spec.model, DataSpec(p, spec.importance()),
                    TrainSpec(steps=a.steps, batch_size=a.batch, lr=a.lr, optimizer=a.optimizer,
                              weight_decay=a.weight_decay, schedule=a.schedule, seed=a.seed),
                    backend=backend, progress=False)
        print(f"{backend} backend, {a.steps} steps, batch {a.batch}, lr {a.lr} {a.schedule}, {a.optimizer} "
              f"wd {a.weight_decay}, importance {a.decay}^i, W2 init scale {a.w2_scale}, {a.fits} fit(s): "
              f"{time.perf_counter() - t0:.0f} s")
        for j, density in enumerate(a.densities):
            fits = range(j * a.fits, (j + 1) * a.fits)
            rows = []
            for k in fits:
                P = {name: t[k] for name, t in res.params.items()}
                rescaled = co.rescale_neurons(P)  # the same function: the test loss may take either
                rows.append((test_loss(P, spec, float(density)), co.feature_r2(rescaled, spec, float(density)),
                             co.features_per_neuron(rescaled)))
            kept = int(np.argmin(res.loss[list(fits)].numpy()))
            loss, r2, per = rows[kept]
            live = per[per > 0]
            line = (f"density {density:g}: test loss {loss:.3e}, computed (R^2 >= {co.COMPUTED}) "
                    f"{int((r2 >= co.COMPUTED).sum())}, one sign (R^2 >= {co.HALF}) {int((r2 >= co.HALF).sum())}, "
                    f"features per neuron {live.mean() if live.size else 0:.1f}")
            if a.fits > 1:
                line += " | every fit: " + ", ".join(f"{r[0]:.2e}/{int((r[1] >= co.COMPUTED).sum())}" for r in rows)
            print(line)
    finally:
        reference.W2_INIT_SCALE = default_scale


if __name__ == "__main__":
    main()
