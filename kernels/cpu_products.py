"""The dense matrix products of the CPU kernels (numba), in register tiles (kernels/cpu_tiles.py).

Two shapes of product, both IEEE-exact (one FMA per term, terms in a fixed order, no reassociation), so
every tiling gives the same numbers as the plain loop (tests/test_cpu_tiles.py checks them bit for bit):

    rows_times        out (rows, lanes) = init + A^T X over the active terms c   (h = W x, z = W^T h + b, dh = W dz)
    _accumulate_dense acc (n_pad, mp) += X YT over a block's R rows               (the weight gradient, row by row)

Narrow tiles (8 or 4 rows x 16 lanes) serve every host. The row-by-row path (models too big for
per-lane gradients) takes wide tiles (8 rows x 32 lanes: rows_times_wide, _accumulate_wide) where
WIDE_TILES says so (Intel AVX-512 hosts given 512-bit code): on a core with two 512-bit FMA pipes an
8 x 16 tile needs 9 loads for its 8 FMAs per term and is load-bound; 8 x 32 has 10 for 16. There the
row-by-row path computes h and dh transposed (hT, dhT (R, mp): R rows of batch, mp neurons padded to
16) so that their products have R = 128 rows and whole 32-lane chunks instead of m rows (m=30: 8, 8,
8 and a 6-row tile).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .cpu_tiles import (FASTMATH, LANES as TILE_LANES, WIDE_LANES, acc_tile_4, acc_tile_8, tile_1, tile_2, tile_3,
                        tile_4, tile_5, tile_6, tile_7, tile_8, wide_acc_tile_8, wide_tile_8)


def _host_has_avx512() -> bool:
    """Whether the CPU numba compiles for has AVX-512 (32 vector registers of 16 floats), else
    AVX2's 16 of 8: an 8 x 16 tile's 16 accumulators then fill every register and spill."""
    try:
        from llvmlite import binding
        return bool(binding.get_host_cpu_features().get("avx512f", False))
    except Exception:  # unknown host: keep the tiles measured on the AVX-512 machine
        return True


# Rows per register tile in the products' main loops (rows_times, _accumulate_dense). Measured side by
# side (python -m bench.ab_cpu, CPU AMD EPYC 2 cores): with AVX-512, 8 (the tiles were sized there);
# without (AVX2, znver3), 4: uniform n=400 m=30 1.24-1.30x, dim128 1.20-1.30x, basic 1.02-1.03x (6-row
# tiles: 1.10x on uniform). The sums are the same either way (each output its terms in order), so results are too.
# Numba's disk cache is keyed by the host CPU's features, so each kind compiles its own.
TILE_ROWS = 8 if _host_has_avx512() else 4


def _compiles_wide_vectors() -> bool:
    """Whether numba compiles this process's kernels for AVX-512 with 512-bit vectors preferred where
    LLVM would not: kernels/__init__.py asks for that on Intel's AVX-512 CPUs (_wide_vector_features
    there); it cannot once numba has made its code generator (the process compiled numba code first)."""
    try:
        from numba.core.registry import cpu_target
        features = cpu_target.target_context.codegen().magic_tuple()[2]
    except Exception:
        return False
    words = features.split(",")
    return "+avx512f" in words and "-prefer-256-bit" in words


# Whether this process's kernels got 512-bit code on an AVX-512 CPU that LLVM would keep to 256 bits
# (Intel's): recorded with benchmarks; tests check the tiles' registers by it.
WIDE_VECTORS = _compiles_wide_vectors()


# Whether the row-by-row path takes the wide tiles: where this process got 512-bit code on an Intel
# AVX-512 CPU (WIDE_VECTORS; two 512-bit FMA pipes per core there: one core's sgemm ran 62-76 FLOP per
# nominal cycle). Measured there (CPU Intel Xeon, model 167, 2 cores), each product of n=400, m=30 in
# isolation: h 1.13-1.15x, z 1.33-1.34x, the gradient's accumulation 1.32-1.37x, bit-identical. AMD's
# Zen 4 runs 512-bit FMAs on 256-bit halves (one per cycle): unmeasured there, so it keeps 8 x 16.
# A compile-time constant of the kernels (numba freezes globals; its disk cache is keyed by the CPU's
# features, which decide this), so each host compiles only the tiles it uses.
WIDE_TILES = WIDE_VECTORS and TILE_ROWS == 8


# Sums of fewer terms than this take the plain loop (rows_times): a tile's call would cost more than it saves.
# 4, not 8, since a tile covers all of a block's lanes in one call: basic's z = W^T h + b (5 terms) is
# then tiled too (part of the 1.21x of the commit that set it; phase's 1- and 2-term sums stay plain).
TILE_MIN_TERMS = 4

# A start index of 0 for the tiles' calls: typed int64 like every other, where a literal 0 would have
# numba compile the called tile once more for that argument type (Literal[int](0)); four copies of
# tile_8 once cost the row-by-row kernel 15 s of its cold compilation.
ZERO = np.int64(0)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def rows_times(A, X, active, init, out):
    """out[r, l] = init[r] + the sum over c in order, active c only, of A[c, r] X[c, l]: every product
    of the CPU kernels (A (>= C, rows) float32, X (>= C, R), active (C,) bool: the C terms, init (rows,),
    out (>= rows, R)).

    Sums of at least TILE_MIN_TERMS terms run in register tiles (_rows_times_tiled, ~3x the plain
    loop on n=400, m=30); short ones (tiny models) take the plain loop, inlined here because a call
    would cost more than their arithmetic. Both add the same terms in the same order (one FMA each),
    so out is the same either way."""
    C, rows = active.shape[0], A.shape[1]
    R = out.shape[1]
    if C >= TILE_MIN_TERMS and R >= TILE_LANES:
        _rows_times_tiled(A, X, active, init, out, TILE_ROWS, ZERO, rows, ZERO)
    else:
        for r in range(rows):
            for l in range(R):
                out[r, l] = init[r]
            for c in range(C):
                if active[c]:
                    w = A[c, r]
                    for l in range(R):
                        out[r, l] += w * X[c, l]


@njit(cache=True, fastmath=FASTMATH)
def _rows_times_tiled(A, X, active, init, out, tile_rows, r_begin, r_end, l_begin):
    """rows_times for the rows r_begin..r_end-1 and the lanes from l_begin (a multiple of TILE_LANES):
    tiles of tile_rows (8 or 4: TILE_ROWS) rows while 8 or more are left, then one tile of the last
    1-7, each over every whole chunk of TILE_LANES lanes (kernels/cpu_tiles.py), their sums in
    registers; the lanes past the last whole chunk (R not a multiple of TILE_LANES) take the plain
    loop. Not inlined: one compiled copy serves every call site (compile time)."""
    C = active.shape[0]
    R = out.shape[1]
    l_tiled = R - R % TILE_LANES
    r0 = r_begin
    while r_end - r0 >= 8:  # then one tile for the last 1-7 rows (m=5: one tile_5, not tile_4 + tile_1)
        if tile_rows == 8:
            tile_8(A, X, active, init, out, r0, l_begin, l_tiled)
        else:
            tile_4(A, X, active, init, out, r0, l_begin, l_tiled)
        r0 += tile_rows
    rest = r_end - r0  # one tile for the last 1-7 rows: X is read once per chunk, not once per power of two
    if rest == 7:
        tile_7(A, X, active, init, out, r0, l_begin, l_tiled)
    elif rest == 6:
        tile_6(A, X, active, init, out, r0, l_begin, l_tiled)
    elif rest == 5:
        tile_5(A, X, active, init, out, r0, l_begin, l_tiled)
    elif rest == 4:
        tile_4(A, X, active, init, out, r0, l_begin, l_tiled)
    elif rest == 3:
        tile_3(A, X, active, init, out, r0, l_begin, l_tiled)
    elif rest == 2:
        tile_2(A, X, active, init, out, r0, l_begin, l_tiled)
    elif rest == 1:
        tile_1(A, X, active, init, out, r0, l_begin, l_tiled)
    for r in range(r_begin, r_end):
        for l in range(max(l_tiled, l_begin), R):
            out[r, l] = init[r]
        for c in range(C):
            if active[c]:
                w = A[c, r]
                for l in range(max(l_tiled, l_begin), R):
                    out[r, l] += w * X[c, l]


@njit(cache=True, fastmath=FASTMATH)
def rows_times_wide(A, X, active, init, out):
    """rows_times (same arguments, the same numbers) by wide tiles, 8 rows x WIDE_LANES lanes, over
    the rows and lanes they cover; the rest (rows past the last 8, lanes past the last 32) by the
    narrow tiles. Only the row-by-row path calls it, where WIDE_TILES holds."""
    C, rows = active.shape[0], A.shape[1]
    R = out.shape[1]
    r8 = rows - rows % 8
    l_wide = R - R % WIDE_LANES
    if C < TILE_MIN_TERMS or r8 == 0 or l_wide == 0:
        rows_times(A, X, active, init, out)
        return
    for r0 in range(0, r8, 8):
        wide_tile_8(A, X, active, init, out, r0, ZERO, l_wide)
    if l_wide < R:
        _rows_times_tiled(A, X, active, init, out, TILE_ROWS, ZERO, r8, l_wide)
    if r8 < rows:
        _rows_times_tiled(A, X, active, init, out, TILE_ROWS, r8, rows, ZERO)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _accumulate_dense(acc, X, YT):
    """acc (n_pad, mp) += the sum over the block's lanes l, in order, of X[f, l] YT[l, j] (X (n_pad, R),
    rows past n zero; YT (R, mp), h or dh transposed): half of a weight gradient, summed over the
    block's rows as a matrix product whose terms are the R batch rows, in register tiles of 8 (or 4)
    rows of acc x 16 neurons (acc_tile_8, acc_tile_4 in kernels/cpu_tiles.py; n_pad a multiple of 4),
    or 8 x 32 where WIDE_TILES holds (_accumulate_wide). Storing every partial sum instead, as an outer
    product per row, was store-bound and cost half of the step on n=400, m=30. Tiles of 4 rows only
    where TILE_ROWS says so (AVX2)."""
    if WIDE_TILES:
        _accumulate_wide(acc, X, YT)
    else:
        _accumulate_tiles(acc, X, YT, TILE_ROWS, ZERO, ZERO)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _accumulate_tiles(acc, X, YT, tile_rows, r_begin, l_begin):
    """_accumulate_dense for the rows from r_begin and the lanes from l_begin (multiples of 4 and of
    TILE_LANES) with tiles of tile_rows (8 or 4) rows, the last one of 4 if need be."""
    rows, mp = acc.shape
    r0 = r_begin
    if tile_rows == 8:
        while r0 + 8 <= rows:
            acc_tile_8(X, YT, acc, r0, l_begin, mp)
            r0 += 8
    while r0 < rows:
        acc_tile_4(X, YT, acc, r0, l_begin, mp)
        r0 += 4


@njit(cache=True, fastmath=FASTMATH)
def _accumulate_wide(acc, X, YT):
    """_accumulate_dense (the same sums) by wide tiles, 8 rows x WIDE_LANES neurons, over the rows and
    lanes they cover; the rest (a last 4 rows, the last 16 neurons of mp) by the narrow tiles."""
    rows, mp = acc.shape
    r8 = rows - rows % 8
    l_wide = mp - mp % WIDE_LANES
    for r0 in range(0, r8, 8):
        if l_wide > 0:
            wide_acc_tile_8(X, YT, acc, r0, ZERO, l_wide)
        if l_wide < mp:
            acc_tile_8(X, YT, acc, r0, l_wide, mp)
    if r8 < rows:
        _accumulate_tiles(acc, X, YT, TILE_ROWS, r8, ZERO)
