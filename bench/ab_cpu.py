"""Interleaved A/B of the tied CPU kernel against a git revision: ``python -m bench.ab_cpu [--rev HEAD]``.

The way a CPU kernel change is measured on a shared, noisy machine: the revision's kernels/ is
extracted into a temporary package (kernels_ab) and both kernels train their own copy of each
workload in this one process, rounds alternating which goes first, medians of ms per step. Prints
one line per workload with the ratio (revision time / working-tree time: > 1 means the working tree
is faster) and whether both ended bit-identical. Workloads: the CPU benchmark's (bench/workloads.py),
``dim128``, the dimensionality quick preset's model (n=400, m=30, batch 128, K=20), ``phase3``, the 3->2
phase diagram's model in the phase workload's layout (n=3, m=2: the second tiny copy, kernels/cpu_tiny.py),
``n5m2``, the intro's and non-uniform's model (n=5, m=2, K=2,000, importance 0.7^i: the third), and
``computation``, the untied kernel (kernels/cpu_train_untied.py) on the computation quick preset's
layout (n=100, m=40, batch 1024, importance 0.8^i, its 7 densities from 1 to 0.001, density-major).
``corr3x2`` and ``corr2x10`` train with feature sets (DataSpec.sets), the correlated quick preset's two
setups that take most of its time: n=6, m=2, K=70, three correlated pairs, and n=20, m=10, K=10, two
correlated sets of 10 (importance 1, densities 0.01..1 as every workload here). ``finite`` trains on
a finite dataset (DataSpec.examples), the double-descent quick preset's largest: n=100, m=2, T = batch =
3,000 examples, K=3, density 0.01.

Which kernel compiles and warms up first shifts the ratio by a few percent (code and data placement;
the working tree's module is always imported first, by the engine): run it again with
``--rev-first`` and quote both ratios. The revision's kernel compiles afresh each run (a minute or two).
"""
from __future__ import annotations

import argparse
import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from .workloads import CPU_WORKLOADS, Workload

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {**CPU_WORKLOADS, "dim128": Workload("dim128", n=400, m=30, batch=128, K=20, importance="uniform"),
             "phase3": Workload("phase3", n=3, m=2, batch=1024, K=10_000, importance="phase"),
             "n5m2": Workload("n5m2", n=5, m=2, batch=1024, K=2_000, importance="decay0.7"),
             "computation": Workload("computation", n=100, m=40, batch=1024, K=7, importance="decay0.8"),
             "corr3x2": Workload("corr3x2", n=6, m=2, batch=1024, K=70, importance="uniform"),
             "corr2x10": Workload("corr2x10", n=20, m=10, batch=1024, K=10, importance="uniform"),
             "finite": Workload("finite", n=100, m=2, batch=3000, K=3, importance="uniform")}
# train_steps' data arguments of the workloads that have them: feature sets (DataSpec.sets), a finite dataset.
DATA = {"corr3x2": {"sets": (("correlated", 0, 2), ("correlated", 2, 2), ("correlated", 4, 2))},
        "corr2x10": {"sets": (("correlated", 0, 10), ("correlated", 10, 10))},
        "finite": {"finite": True}}
DENSITY = {"finite": 0.01}  # one density for every instance, where a workload's is not 0.01..1


def extract_kernels(rev: str, into: Path) -> Path:
    """kernels/ at git revision ``rev`` as the package ``into``/kernels_ab."""
    out = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "kernels"], capture_output=True)
    if out.returncode:
        raise SystemExit(f"--rev: git archive {rev} kernels failed: {out.stderr.decode().strip()}")
    tar = out.stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (into / "kernels").rename(into / "kernels_ab")
    return into


class Timed:
    """Workload ``wl`` on one kernel module (kernels.cpu_train or a revision's copy): its own state from the
    engine's initialisation (seed 0), and ``run(step0)``, the ms per step of one call of ``steps`` steps."""

    def __init__(self, module, wl: Workload):
        from engine import ModelSpec, TrainSpec, fused

        self.untied = wl.name == "computation"
        if self.untied:  # the untied kernel beside ``module`` (kernels or a revision's kernels_ab)
            from engine.experiments.computation import DENSITIES

            module = importlib.import_module(module.__name__.rsplit(".", 1)[0] + ".cpu_train_untied")
            self.p = np.repeat(np.array(DENSITIES, np.float32)[:, None], wl.n, axis=1)
            self.imp = np.tile(0.8 ** np.arange(wl.n), (wl.K, 1)).astype(np.float32)
        else:
            self.p, self.imp = wl.arrays()
            if wl.name in DENSITY:
                self.p[:] = DENSITY[wl.name]
        self.module, self.wl = module, wl
        self.train = TrainSpec(batch_size=wl.batch, steps=10_000)
        self.sched = fused.schedule_table(self.train).numpy()
        self.steps = 5 if wl.n * wl.m * wl.K * wl.batch > 1e8 else 20  # about 40 ms or more per call
        model = ModelSpec(wl.n, wl.m, "abs-computation" if self.untied else "relu-output")
        self.state = {k: v.numpy().copy() for k, v in fused.new_state(model, self.train, 0, wl.K).items()}

    def run(self, step0: int) -> float:
        wl, train = self.wl, self.train
        loss = np.zeros(wl.K, np.float32)
        tied = {} if self.untied else {"relu": True}
        tied.update(DATA.get(wl.name, {}))
        t0 = time.perf_counter()
        self.module.train_steps(self.state, self.p, self.imp, self.sched, loss, None, batch=wl.batch, first_instance=0,
                                step0=step0, n_steps=self.steps, window_start=train.steps - train.loss_window,
                                hist_every=0, seed=0, weight_decay=train.weight_decay, beta1=train.beta1,
                                beta2=train.beta2, eps=train.eps, decoupled=train.optimizer == "adamw", **tied)
        return (time.perf_counter() - t0) / self.steps * 1e3


def time_pair(kernels: dict, wl: Workload, rounds: int, order: list[str]) -> tuple[dict, bool]:
    """Median ms per step of each kernel module on workload ``wl``, and whether their states agree bit for bit."""
    timed = {name: Timed(module, wl) for name, module in kernels.items()}
    for name in order:  # compile / load and warm up
        timed[name].run(0)
    times = {name: [] for name in kernels}
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            times[name].append(timed[name].run(timed[name].steps * (r + 1)))
    first, second = (timed[name].state for name in order)
    same = all(np.array_equal(first[k], second[k]) for k in first)
    return {name: float(np.median(t)) for name, t in times.items()}, same


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD", help="git revision to compare the working tree with")
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--rev-first", action="store_true", help="compile and warm up the revision's kernel first")
    args = ap.parse_args(argv)
    from engine import cpu_backend
    from engine.machine import cpu_model

    cpu_backend.set_threads(cpu_backend.max_threads())
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(extract_kernels(args.rev, Path(tmp))))
        names = ["rev", "tree"] if args.rev_first else ["tree", "rev"]
        modules = {"rev": importlib.import_module("kernels_ab.cpu_train"),
                   "tree": importlib.import_module("kernels.cpu_train")}
        print(f"CPU {cpu_model()}, {cpu_backend.max_threads()} threads; {args.rev} against the working tree, "
              f"{names[0]} warmed up first, {args.rounds} interleaved rounds", flush=True)
        for name in args.workloads:
            ms, same = time_pair(modules, WORKLOADS[name], args.rounds, names)
            print(f"{name}: {args.rev} {ms['rev']:.2f} ms/step, working tree {ms['tree']:.2f} ms/step, "
                  f"ratio {ms['rev'] / ms['tree']:.3f}x (bit-identical: {same})", flush=True)


if __name__ == "__main__":
    main()
