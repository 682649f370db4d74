"""Compile the fused kernel for a GPU architecture without a GPU, and report its resources:
``python -m bench.aot [--arch 90]``. Uses triton's bundled LLVM and ptxas, so it runs on a CPU-only
machine: it catches compile errors and shows registers, local (spill) memory and shared memory per layout
(H100/H200 allow 227 KiB of shared memory per block, 255 registers per thread).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # noqa: E402 (must precede the triton import)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import train_fused  # noqa: E402

SHAPES = [(1, 1), (2, 1), (3, 2), (5, 2), (20, 5), (33, 7), (64, 64), (400, 30), (512, 8), (512, 64)]
SHARED_LIMIT = 227 * 1024


def signature(cfg: train_fused.TileConfig, precision: str):
    fn = train_fused._train_fused_kernel
    sig = {a: "*fp32" for a in fn.arg_names[:11]}
    sig.update({a: "i32" for a in ("K", "n", "m", "batch", "first_instance", "step0", "n_steps", "window_start",
                                   "hist_every")})
    sig["seed"] = "i64"
    sig.update({a: "fp32" for a in ("wd", "beta1", "beta2", "eps", "inv_bn")})
    const = dict(P=cfg.P, BB=cfg.BB, NP=cfg.NP, MP=cfg.MP, RELU=True, DECOUPLED=True, USE_DOT=cfg.use_dot,
                 PRECISION=precision, ADAM_IN_REGISTERS=cfg.adam_in_registers)
    sig.update({k: "constexpr" for k in const})
    return sig, const


def resource_usage(cubin: bytes) -> dict:
    """Registers per thread, local-memory (spill) bytes and static shared memory, read from the
    cubin by the cuobjdump that ships with triton."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True).stdout
    found = dict(re.findall(r"(REG|LOCAL|STACK):(\d+)", text))
    # Spilled registers show up as stack (STACK) or local (LOCAL) bytes; either is slow.
    return {"registers": int(found["REG"]) if "REG" in found else None,
            "spill_bytes": int(found.get("STACK", 0)) + int(found.get("LOCAL", 0))}


def report(n, m, precision="ieee", arch=90, **overrides) -> dict:
    cfg = train_fused.tile_config(n, m, 1024, **overrides)
    sig, const = signature(cfg, precision)
    row = {"n": n, "m": m, "precision": precision, **cfg.__dict__}
    try:
        k = triton.compile(ASTSource(train_fused._train_fused_kernel, sig, const), target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": cfg.num_warps})
        row["shared_bytes"] = k.metadata.shared
        row["fits_shared"] = k.metadata.shared <= SHARED_LIMIT
        row.update(resource_usage(k.asm["cubin"]))
        row["blocks_per_sm_by_registers"] = 65536 // max(1, row["registers"] * 32 * cfg.num_warps) if row["registers"] else None
    except Exception as e:  # report, do not stop: the point is to see every layout
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.aot")
    ap.add_argument("--arch", type=int, default=90)
    args = ap.parse_args(argv)
    for n, m in SHAPES:
        for precision in (("ieee", "tf32") if train_fused.tile_config(n, m, 1024).use_dot else ("ieee",)):
            print(report(n, m, precision, args.arch), flush=True)


if __name__ == "__main__":
    main()
