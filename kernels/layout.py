"""Which kernel trains an (n, m) model, and with what tile sizes.

Two paths: ``fused`` (kernels/train_fused.py; small models, several instances per program, all
state in registers) and ``blocked`` (kernels/train_blocked.py; one instance per program, W in
memory, feature blocks, tl.dot). Sizes were chosen with ``python -m bench.aot`` (registers,
spills, shared memory for sm_90) pending GPU timings from ``python -m bench.tune``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import triton

# Padded m x n up to which the fused path is used (its (P, BB, MP, NP) temporaries grow with it).
FUSED_MAX = 1024
# Limits of the blocked path. It loops over feature blocks, so n is bounded only by memory
# (interpreter tests reach n=400, bench.aot compiles n=512); m sets the (BB, MP) register tiles.
BLOCKED_MAX_N = 4096
BLOCKED_MAX_M = 64


@dataclass(frozen=True)
class TileConfig:
    path: str               # "fused" or "blocked"
    P: int                  # instances per program (blocked: 1)
    BB: int                 # batch rows per tile
    NP: int                 # fused: n padded to a power of two; blocked: unused (0)
    MP: int                 # m padded to a power of two (blocked: >= 16 for tl.dot)
    NB: int                 # blocked: features per block; fused: 0
    num_warps: int
    fp32_dot: str = "ieee"  # blocked path at fp32: "ieee" (exact FMA) or "tf32x3" (3-pass tensor cores, ~fp32)


def tile_config(n: int, m: int, batch: int, precision: str = "fp32", **override) -> TileConfig:
    """The layout for an (n, m) model; keyword arguments override any field (tests, tuning).

    tf32 sends every model with n >= 16 to the blocked path: only tl.dot uses tensor cores.
    """
    NP, MP = triton.next_power_of_2(n), triton.next_power_of_2(m)
    blocked = NP * MP > FUSED_MAX or (precision == "tf32" and n >= 16)
    path = override.pop("path", "blocked" if blocked else "fused")
    if path == "fused":
        # Up to 32 parameter elements (16 instances) per program and a product tile of about 512
        # elements at 4 warps: the largest tiles that compile without spills for sm_90
        # (python -m bench.aot: 2x1 P=16 BB=16 128 registers; 3x2 P=8 BB=8 141; 20x5 P=1 BB=4 96;
        # P=64 or 4x bigger tiles spill). Which of these is fastest needs GPU timings (bench.tune).
        P = max(1, min(16, 32 // (NP * MP)))
        BB = max(4, min(64, triton.next_power_of_2(batch), 512 // (P * NP * MP)))
        cfg = TileConfig("fused", P, BB, NP, MP, 0, 4)
    else:
        # No spills for sm_90 at n=400, m=30 (python -m bench.aot): fp32 (ieee, FMA) BB=32 NB=16
        # 178 registers; tf32 BB=64 NB=32 208 registers; both at 8 warps.
        # m = 64 needs half the rows (h, dh are (BB, MP)): fp32 BB=16 235 registers, tf32 BB=32 NB=32 224.
        BB, NB = (64, 32) if precision == "tf32" else (32, 16)
        if MP >= 64:
            BB //= 2
        cfg = TileConfig("blocked", 1, BB, 0, max(16, MP), NB, 8)
    return replace(cfg, **override)


def supported(n: int, m: int) -> str | None:
    """None if a path trains (n, m); else the reason, naming the limit."""
    if n > BLOCKED_MAX_N or m > BLOCKED_MAX_M:
        return (f"triton backend: n_features must be <= {BLOCKED_MAX_N} and n_hidden <= {BLOCKED_MAX_M} "
                f"(got n_features={n}, n_hidden={m}); use --backend torch for this shape")
    return None
