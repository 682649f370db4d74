"""Time layout variants of the training kernels on one GPU: ``python -m bench.tune [--out DIR]``.

For each workload, every candidate layout (kernels.layout.TileConfig fields: path, instances
per program P, rows BB, feature block NB, warps, fp32 dot precision) is first checked against
the float64 reference for one step (norm-wise relative error of the W gradient), then timed
over ``--steps`` fused steps at fp32 and, on the tl.dot paths (gram, blocked), tf32. Prints one JSON line per
variant and writes tune.json to --out; the default layout is marked, so a better one is visible.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from engine import ModelSpec, TrainSpec
from engine import triton_backend as tb
from kernels.layout import tile_config

from .workloads import WORKLOADS


def baselines(n, m):
    """Layouts always timed beside the default: the first small-model layout (rows on an inner
    axis), which bench.sass predicts 3-8x slower than lanes, and for 16 <= n <= 32 the Gram form;
    the GPU has the last word."""
    if tile_config(n, m, 1024).path == "lanes":
        yield dict(path="fused")
    if 16 <= n <= 32:  # the Gram form, fp32 (and tf32, below) beside the two-sided kernels
        yield dict(path="gram")


def candidates(n, m):
    """Layout overrides worth timing for an (n, m) model (the default comes first, separately)."""
    cfg = tile_config(n, m, 1024)
    if cfg.path == "lanes":
        min_bb = 4 // min(cfg.NP, 4)  # whole Philox calls per tile
        for P, BB, w in itertools.product((1, 2, 4), (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), (1, 2, 4, 8)):
            if BB >= min_bb and (P, BB, w) != (cfg.P, cfg.BB, cfg.num_warps):
                yield dict(path="lanes", P=P, BB=BB, num_warps=w)
    if 16 <= n <= 32:
        for BB, w, dot in itertools.product((16, 32, 64), (1, 2, 4), ("ieee", "tf32x3")):
            yield dict(path="gram", BB=BB, num_warps=w, fp32_dot=dot)
    if n >= 16:
        for BB, NB, w, dot in itertools.product((16, 32, 64), (16, 32, 64), (2, 4, 8), ("ieee", "tf32x3")):
            yield dict(path="blocked", P=1, BB=BB, NB=NB, num_warps=w, fp32_dot=dot, MP=max(16, tile_config(n, m, 1024).MP))


def check(wl, layout) -> float:
    """Norm-wise relative error of one step's W gradient against float64, on up to 64 instances."""
    K = min(wl.K, 64)
    p, imp = (torch.as_tensor(a[:K], device="cuda") for a in wl.arrays())
    return tb.one_step_gradient_error(ModelSpec(wl.n, wl.m), TrainSpec(batch_size=wl.batch), p, imp, **layout)


def time_layout(wl, layout, steps, precision="fp32") -> float:
    """Best of 3 timings, ms per step for all K instances."""
    model, train = ModelSpec(wl.n, wl.m), TrainSpec(batch_size=wl.batch, precision=precision)
    p, imp = (torch.as_tensor(a, device="cuda") for a in wl.arrays())
    st = tb.new_state(model, train, 0, wl.K, "cuda")
    sched = tb.schedule_table(train, "cuda")
    loss = torch.zeros(wl.K, device="cuda")
    tb.run_steps(model, train, st, p, imp, 0, 0, 2, loss, sched=sched, **layout)  # compile + warm up
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        tb.run_steps(model, train, st, p, imp, 0, 0, steps, loss, sched=sched, **layout)
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.tune")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--max-variants", type=int, default=8, help="per workload, after the default (evenly spread)")
    ap.add_argument("--layouts", type=json.loads, default=None,
                    help='JSON list of layout overrides timed after the default, instead of the baselines and the spread, '
                         'e.g. \'[{"path": "blocked", "BB": 64, "NB": 32, "num_warps": 4}]\'')
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args(argv)
    if args.layouts is not None and not (isinstance(args.layouts, list)
                                         and all(isinstance(x, dict) for x in args.layouts)):
        ap.error("--layouts: a JSON list of objects, e.g. '[{\"BB\": 64}]'")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.workloads.split(","):
        wl = WORKLOADS[name]
        default = {k: v for k, v in asdict(tile_config(wl.n, wl.m, wl.batch)).items()}
        cands = list(candidates(wl.n, wl.m))
        variants = ([default] + (args.layouts if args.layouts is not None else list(baselines(wl.n, wl.m))
                                 + cands[:: max(1, len(cands) // args.max_variants)][: args.max_variants]))
        for layout in variants:
            row = {"workload": name, **layout, "default": layout is default}
            try:
                row["grad_rel_err"] = check(wl, layout)
                row["ms_per_step"] = time_layout(wl, layout, args.steps)
                if tile_config(wl.n, wl.m, wl.batch, **layout).path in ("blocked", "gram"):
                    row["ms_per_step_tf32"] = time_layout(wl, layout, args.steps, "tf32")
            except Exception as e:  # a variant that does not compile or launch is reported, not fatal
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
            # Rewritten after every variant: a run cut short by its time limit keeps what it measured.
            (args.out / "tune.json").write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
