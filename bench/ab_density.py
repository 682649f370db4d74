"""Per-density A/B of the CPU kernels against a git revision, from init and after training:
``python -m bench.ab_density [--rev HEAD] [--densities 0.003 0.01 0.03 0.1] [--untied]``.

bench.ab_cpu times the benchmark's workloads from their first steps; a kernel that exploits sparsity
(kernels/cpu_sparse.py) pays off most once a sparse model has learned, when its output gradient dz is
sparse too. Here each density gets its own two instances of the uniform model (n=400, m=30, batch
1024) or, with ``--untied``, of the computation model (abs-computation, n=100, m=40), trained side by
side by the revision's kernel and the working tree's (same start, same batches); at each checkpoint
step both are timed in interleaved rounds (medians of ms per instance-step) and the share of positive
pre-activations z (where dz can be nonzero) is printed. Ratios > 1: the working tree is faster. The
states must stay bit-identical (printed).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .ab_cpu import extract_kernels


def new_state(untied: bool, K: int) -> tuple[dict, int]:
    """(state, n): the start both kernels train from (the engine's initialisation, seed 0)."""
    from engine import ModelSpec, TrainSpec, fused

    model = ModelSpec(100, 40, "abs-computation") if untied else ModelSpec(400, 30)
    state = fused.new_state(model, TrainSpec(), 0, K)
    return {k: v.numpy().copy() for k, v in state.items()}, model.n_features


def positive_share(st: dict, untied: bool, density: float, n: int, g: np.random.Generator) -> float:
    """Share of z > 0 for instance 0 on a fresh batch at ``density`` (numpy, float64)."""
    x = (g.random((2048, n)) < density) * g.random((2048, n))
    if untied:
        x = np.where(x != 0, 2 * x - 1, 0)
        h = np.maximum(x @ st["W1"][0].T + st["b1"][0], 0)
        z = h @ st["W2"][0].T + st["b2"][0]
    else:
        z = x @ st["W"][0].T @ st["W"][0] + st["b"][0]
    return float(np.mean(z > 0))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--densities", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1])
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[0, 300, 2000])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--untied", action="store_true", help="the computation model instead of the uniform one")
    args = ap.parse_args(argv)
    from engine import TrainSpec, cpu_backend, fused
    from engine.machine import cpu_model

    cpu_backend.set_threads(cpu_backend.max_threads())
    K, B = 2, 1024
    train = TrainSpec(batch_size=B, steps=max(args.checkpoints) + 3 * args.rounds + 10)
    sched = fused.schedule_table(train).numpy()
    module = "cpu_train_untied" if args.untied else "cpu_train"
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(extract_kernels(args.rev, Path(tmp))))
        mods = {"tree": importlib.import_module(f"kernels.{module}"),
                "rev": importlib.import_module(f"kernels_ab.{module}")}
        model = "untied n=100 m=40" if args.untied else "tied n=400 m=30"
        print(f"CPU {cpu_model()}, {cpu_backend.max_threads()} threads; {args.rev} against the working tree, "
              f"{model}, batch {B}, ms per instance-step", flush=True)
        for density in args.densities:
            g = np.random.default_rng(0)
            start, n = new_state(args.untied, K)
            states = {name: {k: v.copy() for k, v in start.items()} for name in mods}
            p = np.full((K, n), density, np.float32)
            imp = (np.tile(0.8 ** np.arange(n), (K, 1)) if args.untied else np.ones((K, n))).astype(np.float32)
            extra = {} if args.untied else {"relu": True}

            def run(name: str, step0: int, n_steps: int) -> float:
                t0 = time.perf_counter()
                mods[name].train_steps(states[name], p, imp, sched, np.zeros(K, np.float32), None, batch=B,
                                       first_instance=0, step0=step0, n_steps=n_steps, window_start=10**9,
                                       hist_every=0, seed=0, weight_decay=train.weight_decay, beta1=train.beta1,
                                       beta2=train.beta2, eps=train.eps, decoupled=train.optimizer == "adamw", **extra)
                return (time.perf_counter() - t0) / n_steps / K * 1e3

            if density == args.densities[0]:  # load / compile both kernels and warm up, on a copy
                kept = states
                states = {name: {k: v.copy() for k, v in start.items()} for name in mods}
                run("tree", 0, 2)
                run("rev", 0, 2)
                states = kept
            step, parts = 0, []
            for cp in args.checkpoints:
                if cp > step:
                    run("tree", step, cp - step)
                    run("rev", step, cp - step)
                    step = cp
                times = {"tree": [], "rev": []}
                for r in range(args.rounds):
                    for name in (("tree", "rev") if r % 2 == 0 else ("rev", "tree")):
                        times[name].append(run(name, step, 3))
                    step += 3
                rev, tree = np.median(times["rev"]), np.median(times["tree"])
                share = positive_share(states["tree"], args.untied, density, n, g)
                parts.append(f"step {cp}: z>0 {share:.3f}, {args.rev} {rev:.3f} tree {tree:.3f} ({rev / tree:.2f}x)")
            same = all(np.array_equal(states["tree"][k], states["rev"][k]) for k in start)
            print(f"density {density:g}: " + "; ".join(parts) + f" (bit-identical: {same})", flush=True)


if __name__ == "__main__":
    main()
