"""Which kernel trains an (n, m) model, and with what tile sizes.

Paths: ``lanes`` (kernels/train_lanes.py; small models, batch rows across the lanes, state in
registers; the default up to padded m*n = 1024), ``gram`` (kernels/train_gram.py; tl.dot on
G = W^T W, state in registers; the default only for 16 <= n <= 32, see tile_config; any n by
override, padded to at least 16), ``blocked`` (kernels/train_blocked.py; one
instance per program, W in memory, feature blocks, tl.dot; larger models and tf32) and ``fused``
(kernels/train_fused.py; the first small-model layout, rows on an inner axis; only reachable by
override, kept as the baseline ``bench.tune`` times lanes against until a GPU run settles it).
Sizes were chosen with ``python -m bench.aot`` (registers, spills, shared memory for sm_90) and
``python -m bench.sass`` (static instruction cost of the hot loop); the blocked fp32 default (m <= 32)
by an H200's timings (``python -m bench.tune``); the rest await GPU timings.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import triton

# Padded m x n up to which a register-resident path (lanes) is used: every thread holds its share
# of W, the Adam moments and the per-row gradient partials.
LANES_MAX_PARAMS = 1024
# Largest padded n for which the Gram-form path is the default (an override is not checked against
# it): its G and dG are NP x NP in registers; at NP = 64 they spill in the hot loop (bench.sass).
# For n >> m it also does n/m times the two-sided work.
GRAM_MAX_N = 32
# Limits of the blocked path. It loops over feature blocks, so n is bounded only by memory
# (interpreter tests reach n=400, bench.aot compiles n=512); m sets the (BB, MP) register tiles.
BLOCKED_MAX_N = 4096
BLOCKED_MAX_M = 64


@dataclass(frozen=True)
class TileConfig:
    path: str               # "lanes", "gram", "blocked" or "fused"
    P: int                  # instances per program (gram, blocked: 1)
    BB: int                 # batch rows per tile
    NP: int                 # n padded to a power of two (gram: >= 16 for tl.dot); blocked: unused (0)
    MP: int                 # m padded to a power of two (gram, blocked: >= 16 for tl.dot)
    NB: int                 # blocked: features per block; other paths: 0
    num_warps: int
    fp32_dot: str = "ieee"  # gram, blocked at fp32: "ieee" (FMA) or "tf32x3" (3 tensor-core passes, fp32-class)


def tile_config(n: int, m: int, batch: int, precision: str = "fp32", **override) -> TileConfig:
    """The layout for an (n, m) model; keyword arguments override any field (tests, tuning).

    Defaults, by the static cost of each path's hot loop (python -m bench.sass, triton 3.6), except
    the blocked path's at fp32 for m <= 32, timed on an H200 (below):
    - 16 <= n <= 32: gram at tf32 (only tl.dot uses tensor cores), and at fp32 too when m is
      at least half of n (then W^T W costs fewer FLOPs than the two-sided products);
    - other models up to padded m*n = 1024: lanes; tf32 with n > 32, and anything larger: blocked.
    """
    NP, MP = triton.next_power_of_2(n), triton.next_power_of_2(m)
    if n >= 16 and NP <= GRAM_MAX_N and (precision == "tf32" or 2 * MP >= NP):
        default = "gram"
    elif NP * MP > LANES_MAX_PARAMS or (precision == "tf32" and n >= 16):
        default = "blocked"
    else:
        default = "lanes"
    path = override.pop("path", default)
    if path == "lanes":
        S = NP * MP
        if S <= 8:
            # Whole rows per thread, one warp (the once-per-step gradient reduction is then
            # shuffles only: at 4 warps it went through shared memory and cost +50% at 2x1).
            # NP <= 2 draws 4/NP rows per Philox call: BB >= 4/NP * 32 gives each thread exactly
            # its own calls' rows (no shuffle through shared memory). Two instances per program
            # for 1- and 2-parameter models: more independent work per thread, at a register
            # count that still lets 14+ warps share an SM (P=4 would leave 8).
            # Triton 3.6, sm_90 (python -m bench.aot / bench.sass), SM-cycles per instance-row
            # including the step overhead: 1x1 P=2 BB=128 95 registers 0.59; 2x1 P=2 BB=64 144
            # registers 1.14 (the first fused layout: 5.07 before overhead); 3x2 P=1 BB=64 158
            # registers 2.65 (fused: 24).
            P = 2 if S <= 2 else 1
            BB = 128 if NP == 1 else 64
            cfg = TileConfig("lanes", P, BB, NP, MP, 0, 1)
        else:
            # One warp; rows across 32 / (32 / BB) lanes, features split over the rest, so each
            # thread holds S * BB / 32 parameters: the fewest rows that compile without spills.
            # bench.sass (first written under triton 3.9, fused layout in brackets): 5x2 BB=16 9.8
            # cycles/instance-row (33); 20x5 BB=8 57 (302); 33x7 BB=4 118 (563); 64x16 BB=2 213
            # (860); bigger BB spill in the loop (LDL/STL). With the later sampling changes, triton
            # 3.6, step overhead included: 5x2 5.2, 20x5 32.0, 33x7 68.9, 64x16 157.9.
            BB = 16 if S <= 16 else 8 if S <= 256 else 4 if S <= 512 else 2
            cfg = TileConfig("lanes", 1, BB, NP, MP, 0, 1)
    elif path == "gram":
        # tl.dot needs every dimension >= 16. One warp per instance (the design prototype found
        # fewer warps faster; so does bench.sass). SM-cycles per instance-row with step overhead:
        # tf32 16x16 BB=16 18.6 (BB=32 2 warps 20.9, BB=64 4 warps 23.5); 20x5 BB=32 30.2 (BB=64
        # 4 warps 49.5; the blocked path ~130-166); fp32 16x16 23.9 (lanes 30.1), 32x32 49.8
        # (lanes 237), but 20x5 47.8 (lanes 32.0).
        NPg = max(16, NP)
        BB = 32 if precision == "tf32" and NPg == 32 else 16
        cfg = TileConfig("gram", 1, BB, NPg, max(16, MP), 0, 1)
    elif path == "fused":
        # Up to 32 parameter elements (16 instances) per program and a product tile of about 512
        # elements at 4 warps: the largest tiles that compile without spills for sm_90
        # (python -m bench.aot: 2x1 P=16 BB=16 128 registers; 3x2 P=8 BB=8 141; 20x5 P=1 BB=4 96;
        # P=64 or 4x bigger tiles spill). Which of these is fastest needs GPU timings (bench.tune).
        P = max(1, min(16, 32 // (NP * MP)))
        BB = max(4, min(64, triton.next_power_of_2(batch), 512 // (P * NP * MP)))
        cfg = TileConfig("fused", P, BB, NP, MP, 0, 4)
    else:
        # Timed on an H200 (python -m bench.tune --workloads uniform, n=400 m=30 B=1024 K=1000, ms
        # per step, one process, 2026-12-04): fp32 with the first static choice, ieee (FMA) BB=32
        # NB=16 8 warps, 31.6; ieee BB=64 NB=16 4 warps 14.7 (BB=32 NB=32 4 warps 14.8, BB=64
        # NB=64 8 warps 16.5, BB=16 23.2, BB=128 223); tf32x3 (three tf32 tensor-core passes that
        # keep fp32 accuracy: one-step W-gradient error vs float64 4.1e-7, ieee 3.8e-7) BB=64
        # NB=16 4 warps 9.8; tf32 at BB=64 NB=16 4 warps 5.6 (suite). So fp32 takes tf32x3 at
        # the tf32 tiles. NB=16 divides n=400, so no feature masks. m = 64 needs half the rows
        # (h, dh are (BB, MP)); there fp32 keeps its first static choice (ieee, BB=16, 8 warps:
        # no GPU timing yet, and tf32x3 at BB=32 spills 64 bytes for sm_90).
        if MP >= 64:
            BB, NB, warps, dot = (32, 16, 4, "ieee") if precision == "tf32" else (16, 16, 8, "ieee")
        else:
            BB, NB, warps, dot = 64, 16, 4, "ieee" if precision == "tf32" else "tf32x3"
        cfg = TileConfig("blocked", 1, BB, 0, max(16, MP), NB, warps, dot)
    return replace(cfg, **override)


def supported(n: int, m: int) -> str | None:
    """None if a path trains (n, m); else the reason, naming the limit."""
    if n > BLOCKED_MAX_N or m > BLOCKED_MAX_M:
        return (f"triton backend: n_features must be <= {BLOCKED_MAX_N} and n_hidden <= {BLOCKED_MAX_M} "
                f"(got n_features={n}, n_hidden={m}); choose the torch backend for this shape")
    return None
