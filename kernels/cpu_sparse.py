"""Sparse products of the CPU kernels' row-by-row path: the block's terms visited only where a factor
is nonzero, with the same sums in the same order as the dense register tiles, so either way gives the
same numbers (tests/test_cpu_sparse.py checks them against each other and against float64).

A block holds R batch rows of a big model (n >= 8 features, m neurons padded to mp, a multiple of
16). At density p only a fraction p of the inputs x is nonzero, and, once a sparse model has
learned its negative biases, of the output gradient dz too (ReLU: dz = 0 wherever z <= 0). Two of
the block's five products read x, two read dz:

    h^T  (R, mp)  = x^T W^T   and dh^T = dz^T W^T        scatter_product   (row c of W^T per nonzero)
    acc (n, mp) += x dh^T     and acc += dz h^T          scatter_accumulate (row l of dh^T / h^T per nonzero)

A dense register tile does one vector multiply-add per 16 (term, output) pairs with its sums in
registers; a sparse visit loads and stores its output row, so it costs ~3.5x as much per term: a
product goes sparse when at most SPARSE_MAX_DENSITY of its factor's entries are nonzero
(measured break-even on n=400, m=30: ~0.2 for h, ~0.16 for acc).

Layouts: X (>= n, R) with rows c = features, lanes l = batch rows (the kernels' work arrays);
masks (>= n, R / 64) uint64, bit t of masks[c, w] = X[c, 64 w + t] != 0; lists (R, >= n) int32 and
counts (R,) int32: the nonzero terms of each lane, in increasing c (filled by scatter_product, read by
scatter_accumulate).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .cpu_simd import cttz, fma_row16, nonzero_bits64, popcount

# A product of n x R terms runs sparse when at most this fraction of them is nonzero.
SPARSE_MAX_DENSITY = 0.125
# Lanes per mask word (nonzero_bits64). Wide words, because scatter_product's loop over a word's set
# bits mispredicts its exit once per word: with 16-lane words that was about once per term at density
# 0.1 and made the sparse h product as slow as the dense one.
LANE_WORD = 64


@njit(inline="always", cache=True)
def sparse_lanes_ok(R):
    """Whether a block of R lanes can take the sparse products (masks cover whole 64-lane words)."""
    return R % LANE_WORD == 0


@njit(inline="always", cache=True)
def is_sparse(nnz, n, R):
    """Whether a factor with nnz nonzero entries of n x R goes through the sparse products."""
    return nnz <= SPARSE_MAX_DENSITY * n * R


@njit(inline="always", cache=True)
def look_sparse(X, n, R, masks, look):
    """(sparse, look_next) for a block's factor X (>= n rows, R lanes): whether it takes the sparse
    products (masks then hold its nonzero pattern), and whether the next block's is worth looking at
    (it was under twice the threshold). look False: nothing is read, (False, False)."""
    if not look:
        return False, False
    nnz = nonzero_masks(X, n, masks)
    return is_sparse(nnz, n, R), is_sparse(nnz, n, 2 * R)


@njit(inline="always", cache=True)
def nonzero_masks(X, n, masks):
    """masks[c, w] (c < n, w < R / 64) = the nonzero bits of X[c, 64 w: 64 w + 64]; returns their count."""
    nnz = 0
    for c in range(n):
        for w in range(masks.shape[1]):
            bits = nonzero_bits64(X, c, LANE_WORD * w)
            masks[c, w] = bits
            nnz += popcount(bits)
    return nnz


@njit(cache=True)
def scatter_product(A, X, n, masks, init, outT, lists, counts):
    """outT (R, mp) = init + the sum over c < n in order of X[c, l] A[c, :], nonzero X[c, l] only
    (A (>= n, mp), mp a multiple of 16, init (mp,)), and lists/counts = each lane's nonzero terms c
    in increasing order. outT[l, j] is then rows_times(A^T, X, init)[j, l]: the same fused
    multiply-adds in the same order (a zero term only adds 0)."""
    mp = A.shape[1]
    for l in range(outT.shape[0]):
        for j in range(mp):
            outT[l, j] = init[j]
    counts[:] = 0
    for c in range(n):
        for w in range(masks.shape[1]):
            bits = masks[c, w]
            while bits:
                l = LANE_WORD * w + cttz(bits)
                bits &= bits - np.uint64(1)
                _fma_row(outT, l, X[c, l], A, c, mp)
                lists[l, counts[l]] = c
                counts[l] += 1


@njit(cache=True)
def scatter_accumulate(acc, X, lists, counts, YT):
    """acc[c, :] += the sum over lanes l in order of X[c, l] YT[l, :], over the nonzero terms that
    scatter_product listed (acc (>= n, mp), YT (R, mp)): the dense acc_tile sum over the block's rows,
    zero terms skipped."""
    mp = acc.shape[1]
    for l in range(counts.shape[0]):
        for i in range(counts[l]):
            c = lists[l, i]
            _fma_row(acc, c, X[c, l], YT, l, mp)


@njit(inline="always", cache=True)
def _fma_row(dst, i, a, src, k, mp):
    """dst[i, :mp] += a * src[k, :mp], 16 floats at a time (mp a multiple of 16). The first two
    registers are written out: m <= 32 neurons (n=400, m=30) then runs no loop (~15% on the product)."""
    fma_row16(dst, i, 0, a, src, k, 0)
    if mp > 16:
        fma_row16(dst, i, 16, a, src, k, 16)
        for j0 in range(32, mp, 16):
            fma_row16(dst, i, j0, a, src, k, j0)
