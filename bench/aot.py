"""Compile the training kernels for a GPU architecture without a GPU, and report their resources:
``python -m bench.aot`` (default layouts) or ``python -m bench.aot --sweep 20,5`` (layout variants).

Uses triton's bundled LLVM, ptxas and cuobjdump, so it runs on a CPU-only machine: it catches
compile errors and shows registers per thread, spilled bytes (stack + local memory) and shared
memory per layout. H100/H200: at most 227 KiB shared memory per block, 64K registers per SM.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # must precede the triton import

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import train_blocked, train_fused, train_gram, train_lanes  # noqa: E402
from kernels.layout import tile_config  # noqa: E402
from kernels.step_state import FP_FUSION  # noqa: E402

SHAPES = [(1, 1), (2, 1), (3, 2), (5, 2), (20, 5), (33, 7), (64, 64), (400, 30), (512, 8), (512, 64)]
SHARED_LIMIT = 227 * 1024
_SCALARS_I32 = ("K", "n", "m", "batch", "first_instance", "step0", "n_steps", "window_start", "hist_every")
_SCALARS_F32 = ("wd", "one_b1", "beta2", "one_b2", "eps", "inv_bn")


def _source(cfg, precision: str, shape=None) -> ASTSource:
    """The kernel of layout ``cfg`` with its constexprs; shape (n, m) sets the shape-dependent ones
    as the launcher would for batch 1024 (None: the general case, masks on)."""
    fn = {"fused": train_fused._train_fused_kernel, "lanes": train_lanes._train_lanes_kernel,
          "blocked": train_blocked._train_blocked_kernel, "gram": train_gram._train_gram_kernel}[cfg.path]
    n_ptrs = fn.arg_names.index("K")
    sig = {a: "*fp32" for a in fn.arg_names[:n_ptrs]}
    sig.update({a: "i32" for a in _SCALARS_I32})
    sig["seed"] = "i64"
    sig.update({a: "fp32" for a in _SCALARS_F32})
    if cfg.path in ("fused", "lanes"):
        const = dict(P=cfg.P, BB=cfg.BB, NP=cfg.NP, MP=cfg.MP, RELU=True, DECOUPLED=True)
    elif cfg.path == "gram":
        const = dict(BB=cfg.BB, NP=cfg.NP, MP=cfg.MP, RELU=True, DECOUPLED=True,
                     PRECISION="tf32" if precision == "tf32" else cfg.fp32_dot)
    else:
        n, m = shape or (cfg.NB + 1, cfg.MP - 1)
        const = dict(BB=cfg.BB, NB=cfg.NB, MP=cfg.MP, RELU=True, DECOUPLED=True,
                     PRECISION="tf32" if precision == "tf32" else cfg.fp32_dot,
                     EVEN=1024 % cfg.BB == 0 and n % cfg.NB == 0, DB_IN_DOT=m < cfg.MP)  # as train_blocked.launch
    if cfg.path == "lanes":
        const["EVEN"] = True  # batch 1024, a multiple of every BB
        const["MOMENTS_IN_MEMORY"] = cfg.NP * cfg.MP > 8  # as kernels/train_lanes.launch
    sig.update({k: "constexpr" for k in const})
    return ASTSource(fn, sig, const)


def resource_usage(cubin: bytes) -> dict:
    """Registers per thread and spilled bytes (stack + local), read by triton's cuobjdump."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True).stdout
    found = dict(re.findall(r"(REG|LOCAL|STACK):(\d+)", text))
    return {"registers": int(found["REG"]) if "REG" in found else None,
            "spill_bytes": int(found.get("STACK", 0)) + int(found.get("LOCAL", 0))}


def compile_layout(cfg, precision: str = "fp32", arch: int = 90, shape=None):
    """The training kernel of layout ``cfg`` compiled for sm_``arch`` (a triton CompiledKernel:
    .asm["cubin"], .asm["sass"], .metadata)."""
    return triton.compile(_source(cfg, precision, shape), target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": cfg.num_warps, "enable_fp_fusion": FP_FUSION})


def report(cfg, precision: str = "fp32", arch: int = 90, shape=None) -> dict:
    row = {"precision": precision, **asdict(cfg)}
    try:
        k = compile_layout(cfg, precision, arch, shape)
        row.update(resource_usage(k.asm["cubin"]))
        row["shared_bytes"] = k.metadata.shared
        row["fits"] = k.metadata.shared <= SHARED_LIMIT and row["registers"] is not None
        row["warps_per_sm"] = cfg.num_warps * min(65536 // (row["registers"] * 32 * cfg.num_warps),
                                                  (228 * 1024) // max(1, k.metadata.shared), 32)
    except Exception as e:  # report, do not stop: the point is to see every layout
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.aot")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--sweep", default=None, help="n,m: compile layout variants of that shape")
    ap.add_argument("--shapes", default=None, help="n,m;n,m;...: default layouts of these shapes only")
    args = ap.parse_args(argv)
    if args.sweep:
        n, m = map(int, args.sweep.split(","))
        base = tile_config(n, m, 1024)
        if base.path == "lanes":
            grid = [dict(P=P, BB=BB, num_warps=w) for P, BB, w in itertools.product((1, 2, 4), (4, 16, 128, 512), (1, 4))
                    if BB >= 4 // min(base.NP, 4)]
        else:
            grid = [dict(BB=BB, NB=NB, num_warps=w) for BB, NB, w in itertools.product((16, 32, 64), (16, 32, 64), (2, 4, 8))]
        for over in grid:
            for precision in (("fp32", "tf32") if base.path == "blocked" else ("fp32",)):
                print(json.dumps({"n": n, "m": m, **report(replace(base, **over), precision, args.arch, (n, m))}), flush=True)
        return
    shapes = [tuple(map(int, s.split(","))) for s in args.shapes.split(";")] if args.shapes else SHAPES
    for n, m in shapes:
        for precision in ("fp32", "tf32"):
            cfg = tile_config(n, m, 1024, precision)
            if precision == "tf32" and cfg.path in ("lanes", "fused"):  # no tl.dot: precision unused
                continue
            print(json.dumps({"n": n, "m": m, **report(cfg, precision, args.arch, (n, m))}), flush=True)


if __name__ == "__main__":
    main()
