"""Probe a training recipe for the computation experiment: how many features an abs-computation model
computes at given densities (the figures README.md quotes for `supbench run computation`).

    python -m bench.probe_computation --steps 30000 --densities 0.01 0.001
    python -m bench.probe_computation --batch 8192 --steps 4000 --densities 0.001
    python -m bench.probe_computation --decay 1.0 --steps 5000 --densities 0.01 0.001

Trains one n=100, m=40 model per density (cpu backend when numba is installed, else torch) and prints,
per density, the final loss and the counts of engine.experiments.computation: features with
R^2 >= 0.5 (computed), R^2 >= 0.15 (at least one sign), and the mean features carried per neuron.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from engine import DataSpec, TrainSpec, backends, train
from engine.experiments import computation as co


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
    a = ap.parse_args(argv)
    spec = co.ComputationSpec(importance_decay=a.decay, seed=a.seed)
    d = np.array(a.densities)
    p = np.repeat(d[:, None], spec.features, axis=1)
    backend = "cpu" if backends.cpu_usable() else "torch"
    t0 = time.perf_counter()
    res = train(spec.model, DataSpec(p, spec.importance()),
                TrainSpec(steps=a.steps, batch_size=a.batch, lr=a.lr, optimizer=a.optimizer,
                          weight_decay=a.weight_decay, schedule=a.schedule, seed=a.seed),
                backend=backend, progress=False)
    print(f"{backend} backend, {a.steps} steps, batch {a.batch}, lr {a.lr} {a.schedule}, {a.optimizer} "
          f"wd {a.weight_decay}, importance {a.decay}^i: {time.perf_counter() - t0:.0f} s")
    for k, density in enumerate(d):
        P = co.rescale_neurons({name: t[k] for name, t in res.params.items()})
        r2 = co.feature_r2(P, spec, float(density))
        per = co.features_per_neuron(P)
        live = per[per > 0]
        print(f"density {density:g}: loss {float(res.loss[k]):.3e}, computed (R^2 >= {co.COMPUTED}) "
              f"{int((r2 >= co.COMPUTED).sum())}, one sign (R^2 >= {co.HALF}) {int((r2 >= co.HALF).sum())}, "
              f"features per neuron {live.mean() if live.size else 0:.1f}")


if __name__ == "__main__":
    main()
