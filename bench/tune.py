"""Time layout variants of the fused kernel on one GPU: ``python -m bench.tune [--out DIR]``.

For each workload, every candidate (instances per program P, rows per tile BB, tl.dot or not,
warps) is first checked against the float64 reference for one step (norm-wise gradient error),
then timed over ``--steps`` fused steps. Prints a table and writes tune.json to --out; the
default configuration (kernels/train_fused.tile_config) is marked so a better one is visible.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from engine import ModelSpec, TrainSpec, reference
from engine import triton_backend as tb
from kernels import train_fused
from kernels.sampling import sample_batch

from .workloads import WORKLOADS


def candidates(n, m):
    NP, MP = max(1, n), max(1, m)
    small = NP * MP <= train_fused.DOT_THRESHOLD
    packs = (1, 4, 16, 32, 64) if small else (1,)
    for P, BB, warps, dot in itertools.product(packs, (8, 16, 32, 64), (1, 2, 4, 8), (False, True)):
        if dot and BB < 16:
            continue
        if not small and not dot:
            continue
        yield dict(pack=P, rows=BB, num_warps=warps, use_dot=dot)


def check(wl, tile) -> float:
    """Norm-wise relative error of one step's W gradient against float64, on 64 instances."""
    K = min(wl.K, 64)
    model, train = ModelSpec(wl.n, wl.m), TrainSpec(batch_size=wl.batch)
    p, imp = (torch.as_tensor(a[:K], device="cuda") for a in wl.arrays())
    st = tb.new_state(model, train, 0, K, "cuda")
    W0, b0 = st["W"].double().cpu(), st["b"].double().cpu()
    tb.run_steps(model, train, st, p, imp, 0, 0, 1, torch.zeros(K, device="cuda"), **tile)
    x = sample_batch(p, wl.batch, 0, train.seed).double().cpu()
    _, dW, _ = reference.loss_and_grads(W0, b0, x, imp.double().cpu(), model.variant)
    got = st["mW"].double().cpu() / (1 - train.beta1)
    return ((got - dW).norm() / dW.norm()).item()


def time_variant(wl, tile, steps, precision="fp32") -> float:
    model, train = ModelSpec(wl.n, wl.m), TrainSpec(batch_size=wl.batch, precision=precision)
    p, imp = (torch.as_tensor(a, device="cuda") for a in wl.arrays())
    st = tb.new_state(model, train, 0, wl.K, "cuda")
    sched = tb.schedule_table(train, "cuda")
    loss = torch.zeros(wl.K, device="cuda")
    tb.run_steps(model, train, st, p, imp, 0, 0, 2, loss, sched=sched, **tile)  # compile + warm
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        tb.run_steps(model, train, st, p, imp, 0, 0, steps, loss, sched=sched, **tile)
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.tune")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--max-variants", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args(argv)
    rows = []
    for name in args.workloads.split(","):
        wl = WORKLOADS[name]
        d = train_fused.tile_config(wl.n, wl.m, wl.batch)
        default = dict(pack=d.P, rows=d.BB, num_warps=d.num_warps, use_dot=d.use_dot)
        variants = [default] + [c for c in candidates(wl.n, wl.m) if c != default][: args.max_variants]
        for tile in variants:
            row = {"workload": name, **tile, "default": tile == default}
            try:
                row["grad_rel_err"] = check(wl, tile)
                row["ms_per_step"] = time_variant(wl, tile, args.steps)
                if tile.get("use_dot"):
                    row["ms_per_step_tf32"] = time_variant(wl, tile, args.steps, "tf32")
            except Exception as e:  # a variant that does not compile is reported, not fatal
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune.json").write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
