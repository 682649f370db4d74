"""The fused CPU training loop (numba): every step of every instance in one compiled call.

For each instance (instances run in parallel over the cores, ``prange``), for each step of the
segment: draw the batch with Philox (kernels/cpu_rng.py, bit-exact with the GPU sampler), run
forward, importance-weighted loss and backward block by block, then AdamW/Adam with the lr
schedule, the loss window and the history. The batch never exists in memory: a block of R rows
lives in small arrays and is gone after it has added its share to the gradient.

Layout: batch rows on the last axis of every work array (``x`` (n, R), ``h`` (m, R), ...), so
every inner loop runs over R rows: straight-line, vectorisable code with no reduction. The
gradient's sum over rows is deferred: per-row-lane accumulators (``acc_w`` (m, n, R)) collect it
through the whole step and are summed once at its end (a plain sum does not vectorise without
fastmath's reassociation, and we keep IEEE order so results do not depend on the machine's vector
width). Big models, whose per-lane accumulators would not fit in cache (m n R floats past
ROWWISE_BYTES, e.g. n=400, m=30), instead sum the gradient over the block's rows as a matrix product
in register tiles into its transpose (n, m) (_backward_rows, _accumulate_dense, vectorised over
neurons, shared with the untied model). Sparse inputs are exploited per block: a feature no row of
the block uses (or whose output gradient is zero for every row) is skipped in the products it would
only add zeros to; and, row by row, a block whose x (or dz) is at most 1/8 nonzero takes the sparse
products of kernels/cpu_sparse.py for the two products that read it, which visit only the nonzero
entries and give the same numbers (1.1-1.6x on instances at density <= 0.03, n=400, m=30).

The three products of a block (h = W x, z = W^T h + b, dh = W dz) go through rows_times, whose
register tiles (kernels/cpu_tiles.py, generated) keep their sums in registers: 1.5-1.7x on the
whole step for n=400, m=30, bit-identical to the plain loops; row by row, on Intel AVX-512 hosts
given 512-bit code, through wide tiles with h and dh computed transposed (kernels/cpu_products.py).
Instances are dealt to the threads round robin in small groups (instance_groups), not in one
contiguous share each.

Each instance's arithmetic is the same whatever the thread count or chunking, so results are
deterministic and resume is bit-identical.
"""
from __future__ import annotations

import types as pytypes

import numba
import numpy as np
from numba import njit, prange

from .cpu_rng import M32, feature, philox, philox_features16, uniform_at
from .cpu_sparse import LANE_WORD, look_sparse, scatter_accumulate, scatter_product, sparse_lanes_ok
from .cpu_products import TILE_LANES, WIDE_TILES, WIDE_VECTORS, _accumulate_dense, rows_times, rows_times_wide
# 'contract' lets LLVM fuse a*b+c into FMA (as the GPU kernels do); nothing else of fastmath:
# no reassociation, so sums keep their written order.
from .cpu_tiles import FASTMATH, slp_vectorize

STREAM_DATASET = 3  # engine.rng.STREAM_DATASET: the Philox stream of finite datasets

# Feature-set kinds in the (S, 3) int32 ``sets`` array (kind, first feature, size) the kernels take.
SET_KIND = {"correlated": 1, "anticorrelated": 2}

# Work arrays start on a cache line: numba allocates arrays 32 bytes past one (NRT's alignment is 32),
# so every 512-bit load or store of a row of lanes straddled two lines, which cost the 2->1 phase
# diagram 8% on an Intel AVX-512 host once its kernels got 512-bit code (WIDE_VECTORS).
CACHE_LINE = 64


@njit(cache=True)
def zeros_aligned(shape):
    """np.zeros(shape, np.float32), C order, starting on a CACHE_LINE boundary (rows of a multiple of
    16 floats then all start on one). shape: a tuple of ints."""
    size = 1
    for d in shape:
        size *= d
    pad = CACHE_LINE // 4
    buf = np.zeros(size + pad - 1, np.float32)
    off = ((CACHE_LINE - buf.ctypes.data % CACHE_LINE) % CACHE_LINE) // 4
    return buf[off:off + size].reshape(shape)


# Whether _draw_block draws 16 lanes at a time with philox_features16 (kernels/cpu_rng.py): where this
# process got 512-bit code on an Intel AVX-512 CPU (WIDE_VECTORS), where it was measured: 1.40x on a
# block of n=400 draws alone (CPU Intel Xeon, model 167). Elsewhere the scalar philox, vectorised by
# LLVM over the lanes (the intrinsic's 512-bit vectors are unmeasured on AMD and would be split on AVX2).
PHILOX_16 = WIDE_VECTORS


@njit(inline="always", cache=True)
def lane_row(l, r0, R, n):
    """The batch row that lane l of the block starting at row r0 holds (see _draw_block)."""
    if n >= 3:
        return r0 + l
    if n == 2:
        return r0 + 2 * (l % (R // 2)) + l // (R // 2)
    return r0 + 4 * (l % (R // 4)) + l // (R // 4)


@njit(inline="always", cache=True)
def _draw_block(x, act, p, inv, r0, batch, n, c1, c2, c3, k0, k1):
    """Fill x (n_pad, R) with the draws of batch rows r0.. (lanes past the batch get 0) and act (n,)
    with whether any lane of feature f is nonzero; p, inv (n_pad,) are the feature probabilities
    and their float32 reciprocals, padded with 0 (see padded_rule). Lane <-> row: n >= 3, lane l is row r0 + l;
    n = 2, lanes l and l + R/2 are rows r0 + 2l, r0 + 2l + 1 (one call); n = 1, lanes l + kR/4
    are rows r0 + 4l + k. The training step sums over rows, so the order is free."""
    R = x.shape[1]
    # PHILOX_16: the first whole groups of 16 lanes (of each half or quarter for n = 2, 1) by
    # philox_features16, the same calls and words as the loops below, which draw the rest. (Inside
    # "if PHILOX_16:", which numba prunes: elsewhere the intrinsic is not compiled at all.)
    if n >= 3:
        # x, p and inv have 4 * ceil(n/4) rows, the padding with p = 0 (never active), so every
        # word of every call is stored without a condition.
        n4 = x.shape[0] // 4
        l16 = R - R % 16 if PHILOX_16 else 0
        for q in range(n4):
            f = 4 * q
            p0, p1, p2, p3 = p[f], p[f + 1], p[f + 2], p[f + 3]
            i0, i1, i2, i3 = inv[f], inv[f + 1], inv[f + 2], inv[f + 3]
            if PHILOX_16:
                for l in range(0, l16, 16):
                    philox_features16(x, p, inv, f, f + 1, f + 2, f + 3, l, l, l, l, np.uint64((r0 + l) * n4 + q),
                                      n4, c1, c2, c3, k0, k1)
            for l in range(l16, R):
                o0, o1, o2, o3 = philox(np.uint64((r0 + l) * n4 + q), c1, c2, c3, k0, k1)
                x[f, l] = feature(o0, p0, i0)
                x[f + 1, l] = feature(o1, p1, i1)
                x[f + 2, l] = feature(o2, p2, i2)
                x[f + 3, l] = feature(o3, p3, i3)
    elif n == 2:
        H = R // 2
        h16 = H - H % 16 if PHILOX_16 else 0
        if PHILOX_16:
            for l in range(0, h16, 16):
                philox_features16(x, p, inv, 0, 1, 0, 1, l, l, l + H, l + H, np.uint64(r0 // 2 + l), 1, c1, c2, c3,
                                  k0, k1)
        for l in range(h16, H):
            o0, o1, o2, o3 = philox(np.uint64(r0 // 2 + l), c1, c2, c3, k0, k1)
            x[0, l] = feature(o0, p[0], inv[0])
            x[1, l] = feature(o1, p[1], inv[1])
            x[0, l + H] = feature(o2, p[0], inv[0])
            x[1, l + H] = feature(o3, p[1], inv[1])
    else:
        Q = R // 4
        q16 = Q - Q % 16 if PHILOX_16 else 0
        if PHILOX_16:
            for l in range(0, q16, 16):
                philox_features16(x, p, inv, 0, 0, 0, 0, l, l + Q, l + 2 * Q, l + 3 * Q, np.uint64(r0 // 4 + l), 1,
                                  c1, c2, c3, k0, k1)
        for l in range(q16, Q):
            o0, o1, o2, o3 = philox(np.uint64(r0 // 4 + l), c1, c2, c3, k0, k1)
            x[0, l] = feature(o0, p[0], inv[0])
            x[0, l + Q] = feature(o1, p[0], inv[0])
            x[0, l + 2 * Q] = feature(o2, p[0], inv[0])
            x[0, l + 3 * Q] = feature(o3, p[0], inv[0])
    if r0 + R > batch:  # the last block: lanes past the batch hold no row
        for l in range(R):
            if lane_row(l, r0, R, n) >= batch:
                for f in range(n):
                    x[f, l] = 0.0
    for f in range(n):
        a = False
        for l in range(R):
            a |= x[f, l] != 0.0
        act[f] = a


@njit(inline="always", cache=True)
def _apply_sets(x, act, sets, p, inv, r0, batch, n, c1, c2, c3, k0, k1):
    """After _draw_block: rewrite the features of correlated / anticorrelated sets (sets (S, 3):
    kind, first, size) by engine.reference.features_from_uniform's rule, from the same uniforms
    (recomputed with uniform_at), and refresh act for them."""
    R = x.shape[1]
    for s in range(sets.shape[0]):
        kind, a, size = sets[s, 0], sets[s, 1], sets[s, 2]
        for l in range(R):
            row = lane_row(l, r0, R, n)
            if row >= batch:
                continue
            u0 = uniform_at(row, a, n, c1, c2, c3, k0, k1)
            on = u0 < p[a]
            if kind == 1:
                for f in range(a + 1, a + size):
                    x[f, l] = uniform_at(row, f, n, c1, c2, c3, k0, k1) if on else np.float32(0.0)
            else:
                for f in range(a, a + size):
                    x[f, l] = 0.0
                if on:
                    j = min(int(np.floor(u0 * inv[a] * np.float32(size))), size - 1)
                    x[a + j, l] = uniform_at(row, a + 1, n, c1, c2, c3, k0, k1)
        for f in range(a, a + size):
            any_on = False
            for l in range(R):
                any_on |= x[f, l] != 0.0
            act[f] = any_on


@njit(cache=True)
def padded_rule(p):
    """(p_pad, inv_pad): p (n,) float32 and float32(1) / p, both padded with zeros to the rows the
    sampler fills (4 * ceil(n / 4) for n >= 3, else n); a padded feature is never active."""
    n = p.shape[0]
    n_pad = 4 * ((n + 3) // 4) if n >= 3 else n
    pp = np.zeros(n_pad, np.float32)
    inv = np.zeros(n_pad, np.float32)
    for f in range(n):
        pp[f] = p[f]
        inv[f] = np.float32(1.0) / p[f]
    return pp, inv


@njit(inline="always", cache=True)
def _lane_mask(valid, r0, n, batch):
    """valid (R,) float32: 1 where the lane holds a real batch row, 0 past the batch."""
    R = valid.shape[0]
    for l in range(R):
        valid[l] = 1.0 if lane_row(l, r0, R, n) < batch else 0.0


# Which path a compiled copy of the two templates below takes (_specialise): ROWWISE True for
# models that sum their weight gradient row by row (uses_rowwise), False for per-lane ones. A compile-
# time constant, so numba prunes the other path and each copy compiles only its own (the per-lane copy,
# all the 2->1 phase diagram needs, compiled in 25 s instead of 37 on a cold cache, CPU Intel Xeon).
ROWWISE = None
# In a segment copy: the compiled _train_instance copy of its path (_specialise).
_train_instance = None


def _train_instance_template(W, b, mW, vW, mb, vb, p, imp, sched, loss_acc, hist, k, K, batch, inst, step0,
                             n_steps, window_start, hist_every, k0, k1, weight_decay, one_b1, beta2, one_b2, eps,
                             relu, decoupled, R, relu_hidden, sets, finite):
    """Steps [step0, step0 + n_steps) of instance k (global id ``inst``); see _train_segment_template.
    The template of _train_instance_lanes and _train_instance_rows (ROWWISE); never called itself."""
    m, n = W.shape[1], W.shape[2]
    f32 = np.float32
    pk, inv = padded_rule(p[k])
    grad_scale = f32(2.0) / f32(batch * n)
    cz = np.empty(n, np.float32)      # d loss / d x'_f per unit error: 2 I_f / (B n)
    for f in range(n):
        cz[f] = grad_scale * imp[k, f]
    x = zeros_aligned((pk.shape[0], R))
    act = np.empty(n, np.bool_)
    h = zeros_aligned((m, R))
    # rows past n stay 0 (the gradient tiles read x's padded rows)
    dz = zeros_aligned((pk.shape[0], R))
    dzact = np.empty(n, np.bool_)
    dh = zeros_aligned((m, R))
    # Big models (m n R floats past ROWWISE_BYTES) sum the weight gradient over each block's rows
    # into accT: per-lane accumulators would stream m n R floats through memory at every block.
    rowwise = ROWWISE  # uses_rowwise(n, m, R): train_steps picks the copy
    acc_w = zeros_aligned((m, n, 0 if rowwise else R))
    # Row by row: the weight gradient transposed, accT (n_pad, mp), neurons padded to whole registers;
    # hT, dhT (R, mp) are h and dh transposed (their padding stays 0). See _backward_rows.
    mp = TILE_LANES * ((m + TILE_LANES - 1) // TILE_LANES) if rowwise else 0
    accT = zeros_aligned((pk.shape[0] if rowwise else 0, mp))
    hT = zeros_aligned((R if rowwise else 0, mp))
    dhT = zeros_aligned((R if rowwise else 0, mp))
    # Row by row, sparse factors (kernels/cpu_sparse.py): W^T padded to mp columns (also the wide
    # tiles' factor of hT and dhT), the nonzero masks of x or dz, and each lane's nonzero terms of x
    # (x_terms) and of dz (dz_terms).
    sparse = rowwise and sparse_lanes_ok(R)
    ns = n if sparse else 0
    WTp = zeros_aligned((n if sparse or (rowwise and WIDE_TILES) else 0, mp))
    masks = np.empty((ns, R // LANE_WORD), np.uint64)
    terms, counts = np.empty((2, R if sparse else 0, ns), np.int32), np.empty((2, R if sparse else 0), np.int32)
    x_terms, dz_terms, x_count, dz_count = terms[0], terms[1], counts[0], counts[1]
    zeros_mp = np.zeros(mp, np.float32)
    zeros_r = np.zeros(R if rowwise else 0, np.float32)
    acc_b = zeros_aligned((n, R))
    acc_l = zeros_aligned((R,))
    valid = zeros_aligned((R,))
    valid[:] = 1.0
    WT = np.empty((n, m), np.float32)  # W transposed, refreshed every step (rows_times reads A[c, r])
    # The step's gradients, laid out like W and b: big models' adam_update, small ones' lane sums.
    gW = np.empty((m, n), np.float32)
    gb = np.empty(n, np.float32)
    zeros_m = np.zeros(m, np.float32)
    all_m = np.ones(m, np.bool_)
    last_r0 = ((batch - 1) // R) * R
    c2 = np.uint64(inst) & M32
    # A finite dataset (examples > 0) is the batch of step 0 of the dataset stream, drawn again at
    # every step (every step trains on the whole dataset): engine.rng.dataset_uniforms.
    c3 = np.uint64(STREAM_DATASET if finite else 0)
    for t in range(step0, step0 + n_steps):
        c1 = np.uint64(0) if finite else np.uint64(t) & M32
        if not (rowwise and WIDE_TILES):  # (the wide row-by-row path reads W^T from WTp only)
            transpose_into(W[k], WT)
        if WTp.shape[0]:
            transpose_into(W[k], WTp[:, :m])
        acc_w[:] = 0.0
        accT[:] = 0.0
        acc_b[:] = 0.0
        acc_l[:] = 0.0
        valid[:] = 1.0
        for r0 in range(0, batch, R):
            _draw_block(x, act, pk, inv, r0, batch, n, c1, c2, c3, k0, k1)
            if sets.shape[0]:
                _apply_sets(x, act, sets, pk, inv, r0, batch, n, c1, c2, c3, k0, k1)
            if r0 == last_r0 and batch % R != 0:
                _lane_mask(valid, r0, n, batch)
            # h = W x (relu-hidden: ReLU(W x)); sparse x: straight into hT, then h
            # Sparse or dense gives the same numbers; the choice only saves time. A factor is looked at
            # (nonzero_masks, ~2% of a dense block) in a step's first block and after a sparse-enough one.
            if rowwise:  # (nested, not "rowwise and sparse_x": only a branch on ROWWISE itself is pruned)
                if r0 == 0:
                    try_x = try_dz = sparse
                sparse_x, try_x = look_sparse(x, n, R, masks, try_x)
                # (Branches on WIDE_TILES alone: numba prunes those, not "sparse_x or WIDE_TILES".)
                if WIDE_TILES:  # hT = x^T W^T, transposed: R rows, whole 32-lane chunks (cpu_products)
                    if sparse_x:
                        scatter_product(WTp, x, n, masks, zeros_mp, hT, x_terms, x_count)
                    else:
                        rows_times_wide(x, WTp, act, zeros_r, hT)
                    _hidden_from_transposed(hT, h, relu_hidden)
                elif sparse_x:
                    scatter_product(WTp, x, n, masks, zeros_mp, hT, x_terms, x_count)
                    _hidden_from_transposed(hT, h, relu_hidden)
                else:
                    _hidden_dense(WT, x, act, zeros_m, h, relu_hidden)
            else:
                _hidden_dense(WT, x, act, zeros_m, h, relu_hidden)
            # z = W^T h + b, the loss and dz = d loss / d z
            if rowwise:
                if WIDE_TILES:
                    rows_times_wide(W[k], h, all_m, b[k], dz)
                else:
                    rows_times(W[k], h, all_m, b[k], dz)
            else:
                rows_times(W[k], h, all_m, b[k], dz)
            for f in range(n):
                c = cz[f]
                i_f = imp[k, f]
                any_dz = False
                for l in range(R):
                    z = dz[f, l]
                    y = max(z, f32(0.0)) if relu else z
                    d = (y - x[f, l]) * valid[l]
                    acc_l[l] += i_f * d * d
                    g = c * d if (z > 0.0 or not relu) else f32(0.0)
                    dz[f, l] = g
                    acc_b[f, l] += g
                    any_dz |= g != 0.0
                dzact[f] = any_dz
            if rowwise:
                sparse_dz, try_dz = look_sparse(dz, n, R, masks, try_dz)
                _backward_rows(accT, WT, WTp, x, h, hT, dz, dzact, dh, dhT, zeros_m, zeros_mp, zeros_r, relu_hidden,
                               sparse_x, sparse_dz, masks, x_terms, x_count, dz_terms, dz_count)
            else:
                # dh = W dz, then dW += h dz^T + dh x^T (per row lane)
                rows_times(WT, dz, dzact, zeros_m, dh)
                if relu_hidden:  # through the hidden ReLU: h > 0 exactly where W x > 0
                    for j in range(m):
                        for l in range(R):
                            dh[j, l] = dh[j, l] if h[j, l] > 0.0 else f32(0.0)
                for j in range(m):
                    for f in range(n):
                        if dzact[f]:
                            for l in range(R):
                                acc_w[j, f, l] += h[j, l] * dz[f, l]
                        if act[f]:
                            for l in range(R):
                                acc_w[j, f, l] += dh[j, l] * x[f, l]
        # End of step: sum the lanes, record the loss, Adam/AdamW (kernels/adam.py's formula).
        _record_loss(acc_l, grad_scale, t, k, window_start, hist_every, loss_acc, hist)
        decay, step_size, inv_sqrt_bias2 = sched[t, 0], sched[t, 1], sched[t, 2]
        if rowwise:  # big models: vectorised updates (adam_update)
            transpose_into(accT[:n, :m], gW)
            sum_lanes(acc_b, gb)
            adam_update(W, mW, vW, gW, k, decay, step_size, inv_sqrt_bias2, weight_decay, one_b1, beta2, one_b2, eps,
                        decoupled)
            adam_update_vector(b, mb, vb, gb, k, decay, step_size, inv_sqrt_bias2, weight_decay, one_b1, beta2, one_b2,
                               eps, decoupled)
        else:  # small models: one scalar pass (no vector set-up), the lane sums first (independent chains)
            if m * n >= 8:
                sum_lanes(acc_w, gW)
                sum_lanes(acc_b, gb)
            else:  # tiny ones (the phase diagram's): each sum as its parameter comes
                for j in range(m):
                    for f in range(n):
                        g = f32(0.0)
                        for l in range(R):
                            g += acc_w[j, f, l]
                        gW[j, f] = g
                for f in range(n):
                    g = f32(0.0)
                    for l in range(R):
                        g += acc_b[f, l]
                    gb[f] = g
            for j in range(m):
                for f in range(n):
                    W[k, j, f], mW[k, j, f], vW[k, j, f] = _adam(W[k, j, f], gW[j, f], mW[k, j, f], vW[k, j, f], decay,
                                                                 step_size, inv_sqrt_bias2, weight_decay, one_b1,
                                                                 beta2, one_b2, eps, decoupled)
            for f in range(n):
                b[k, f], mb[k, f], vb[k, f] = _adam(b[k, f], gb[f], mb[k, f], vb[k, f], decay, step_size,
                                                    inv_sqrt_bias2, weight_decay, one_b1, beta2, one_b2, eps, decoupled)


@njit(inline="always", cache=True)
def _hidden_from_transposed(hT, h, relu_hidden):
    """h (m, R) from hT (R, mp) = (W x)^T, neurons padded: relu-hidden's ReLU on hT first, then h = hT^T."""
    m, R = h.shape
    if relu_hidden:
        for l in range(R):
            for j in range(m):
                hT[l, j] = max(hT[l, j], np.float32(0.0))
    transpose_into(hT[:, :m], h)


@njit(inline="always", cache=True)
def _mask_by_hidden(dhT, hT, m):
    """relu-hidden's backward through the hidden ReLU, transposed: dhT[l, j] = 0 where hT[l, j] <= 0 (j < m)."""
    for l in range(dhT.shape[0]):
        for j in range(m):
            dhT[l, j] = dhT[l, j] if hT[l, j] > 0.0 else np.float32(0.0)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _hidden_dense(WT, x, act, zeros_m, h, relu_hidden):
    """h (m, R) = W x (relu-hidden: ReLU(W x)) by the dense products; WT (n, m) is W transposed."""
    rows_times(WT, x, act, zeros_m, h)
    if relu_hidden:
        for j in range(h.shape[0]):
            for l in range(h.shape[1]):
                h[j, l] = max(h[j, l], np.float32(0.0))


@njit(inline="always", cache=True)
def transpose_into(src, dst):
    """dst (cols, rows) = src (rows, cols) transposed."""
    for i in range(src.shape[0]):
        for j in range(src.shape[1]):
            dst[j, i] = src[i, j]


@njit(cache=True, fastmath=FASTMATH)
def _backward_rows(accT, WT, WTp, x, h, hT, dz, dzact, dh, dhT, zeros_m, zeros_mp, zeros_r, relu_hidden, sparse_x,
                   sparse_dz, masks, x_terms, x_count, dz_terms, dz_count):
    """A block's backward pass row by row (tied model): dh = W dz (relu-hidden: where h > 0), then
    accT (n_pad, mp) += (h dz^T)^T + (dh x^T)^T, each element its dz terms then its x terms
    (_accumulate_dense, or the sparse products). sparse_x or WIDE_TILES: hT came from the forward pass
    (else it is made here from h); sparse_dz: masks hold dz's nonzero pattern, and dh and the dz half
    go through the sparse products (kernels/cpu_sparse.py); WIDE_TILES: a dense dh is computed
    transposed, dhT = dz^T W^T (kernels/cpu_products.py). Dense or sparse, every sum is the same.
    zeros_r (R,) zeros."""
    m, R = h.shape
    if WIDE_TILES:  # (branches on WIDE_TILES alone, which numba prunes)
        if sparse_dz:
            scatter_product(WTp, dz, masks.shape[0], masks, zeros_mp, dhT, dz_terms, dz_count)
        else:
            rows_times_wide(dz, WTp, dzact, zeros_r, dhT)
        if relu_hidden:
            _mask_by_hidden(dhT, hT, m)
    else:
        if not sparse_x:  # first: the sparse dh below masks with hT
            transpose_into(h, hT[:, :m])
        if sparse_dz:
            scatter_product(WTp, dz, masks.shape[0], masks, zeros_mp, dhT, dz_terms, dz_count)
            if relu_hidden:
                _mask_by_hidden(dhT, hT, m)
        else:
            rows_times(WT, dz, dzact, zeros_m, dh)
            if relu_hidden:
                for j in range(m):
                    for l in range(R):
                        dh[j, l] = dh[j, l] if h[j, l] > 0.0 else np.float32(0.0)
            transpose_into(dh, dhT[:, :m])
    accumulate_halves(accT, accT, dz, hT, sparse_dz, dz_terms, dz_count, x, dhT, sparse_x, x_terms, x_count)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def accumulate_halves(acc_dz, acc_x, dz, hT, sparse_dz, dz_terms, dz_count, x, dhT, sparse_x, x_terms, x_count):
    """A block's weight gradient, row by row: acc_dz += the dz half (dz against hT), then acc_x += the
    x half (x against dhT), each by the sparse product (terms, counts from scatter_product) or the
    dense one. Tied models pass accT as both; untied ones dW2's and dW1's accumulators."""
    if sparse_dz:
        scatter_accumulate(acc_dz, dz, dz_terms, dz_count, hT)
    else:
        _accumulate_dense(acc_dz, dz, hT)
    if sparse_x:
        scatter_accumulate(acc_x, x, x_terms, x_count, dhT)
    else:
        _accumulate_dense(acc_x, x, dhT)


@njit(inline="always", cache=True)
def _record_loss(acc_l, grad_scale, t, k, window_start, hist_every, loss_acc, hist):
    """End of step t of instance k: the step's loss from the per-lane sums acc_l (R,) (each I (y - x)^2;
    grad_scale / 2 = 1 / (B n) makes it the mean), added to the loss window and the history."""
    loss_t = np.float32(0.0)
    for l in range(acc_l.shape[0]):
        loss_t += acc_l[l]
    loss_t = loss_t * (grad_scale * np.float32(0.5))
    if t >= window_start:
        loss_acc[k] += loss_t
    if hist_every > 0 and t % hist_every == 0:
        hist[t // hist_every, k] = loss_t


def f32_array(t) -> np.ndarray:
    """A torch CPU tensor or numpy array as the float32 C-contiguous numpy array the kernels update in place."""
    a = t.numpy() if hasattr(t, "numpy") else t
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        raise ValueError("cpu kernels need float32 C-contiguous arrays")
    return a


@njit(inline="always", cache=True, fastmath=FASTMATH)
def sum_lanes(acc, out):
    """out[...] = the sum over the last axis of acc, in order from 0.0 (acc (..., lanes), out acc.shape[:-1];
    2-D or 3-D): the per-lane accumulators of a step, summed once at its end.

    Eight outputs at a time: each sum is a chain of dependent adds (in order, no reassociation), and
    eight independent chains keep the adder busy where one waited on its latency (3.1x on (400, 128))."""
    flat_acc = acc.reshape(-1, acc.shape[-1])
    flat_out = out.reshape(-1)
    rows, lanes = flat_acc.shape
    f0 = np.float32(0.0)
    i = 0
    while i + 8 <= rows:
        g0 = g1 = g2 = g3 = g4 = g5 = g6 = g7 = f0
        for l in range(lanes):
            g0 += flat_acc[i, l]
            g1 += flat_acc[i + 1, l]
            g2 += flat_acc[i + 2, l]
            g3 += flat_acc[i + 3, l]
            g4 += flat_acc[i + 4, l]
            g5 += flat_acc[i + 5, l]
            g6 += flat_acc[i + 6, l]
            g7 += flat_acc[i + 7, l]
        flat_out[i], flat_out[i + 1], flat_out[i + 2], flat_out[i + 3] = g0, g1, g2, g3
        flat_out[i + 4], flat_out[i + 5], flat_out[i + 6], flat_out[i + 7] = g4, g5, g6, g7
        i += 8
    while i + 4 <= rows:
        g0 = g1 = g2 = g3 = f0
        for l in range(lanes):
            g0 += flat_acc[i, l]
            g1 += flat_acc[i + 1, l]
            g2 += flat_acc[i + 2, l]
            g3 += flat_acc[i + 3, l]
        flat_out[i], flat_out[i + 1], flat_out[i + 2], flat_out[i + 3] = g0, g1, g2, g3
        i += 4
    while i + 2 <= rows:
        g0 = g1 = f0
        for l in range(lanes):
            g0 += flat_acc[i, l]
            g1 += flat_acc[i + 1, l]
        flat_out[i], flat_out[i + 1] = g0, g1
        i += 2
    if i < rows:
        g = f0
        for l in range(lanes):
            g += flat_acc[i, l]
        flat_out[i] = g


@njit(inline="always", cache=True, fastmath=FASTMATH)
def adam_update(P, M1, M2, G, k, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps, decoupled):
    """kernels/adam.py's update (torch.optim's formula with host-precomputed schedule scalars) of
    instance k's weights P[k] and moments M1[k], M2[k] (P, M1, M2 (K, rows, cols), updated in place)
    with gradient G (rows, cols; of a bigger G, that corner): the optimizer step of big tied models and
    of every untied model (adam_update_vector: biases; small tied models take _adam in one scalar pass).

    Plain loops along contiguous rows, so LLVM vectorises them (a scalar loop reading the gradient
    from a transposed accumulator cost ~20 cycles per parameter, a third of a batch-128 step of
    n=400, m=30). Indices, not row views: every view costs reference counting, which tiny models feel.
    One loop per optimizer, each passing _adam a literal flag: one loop on the runtime flag rounded Adam
    differently in its n=400 and n=100 models (LLVM's unswitched copy fused other products)."""
    for j in range(P.shape[1]):
        if decoupled:
            for f in range(P.shape[2]):
                P[k, j, f], M1[k, j, f], M2[k, j, f] = _adam(P[k, j, f], G[j, f], M1[k, j, f], M2[k, j, f], decay,
                                                             step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2,
                                                             eps, True)
        else:
            for f in range(P.shape[2]):
                P[k, j, f], M1[k, j, f], M2[k, j, f] = _adam(P[k, j, f], G[j, f], M1[k, j, f], M2[k, j, f], decay,
                                                             step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2,
                                                             eps, False)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def adam_update_vector(P, M1, M2, G, k, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps, decoupled):
    """adam_update for a bias: P, M1, M2 (K, cols), G (cols,)."""
    if decoupled:
        for f in range(P.shape[1]):
            P[k, f], M1[k, f], M2[k, f] = _adam(P[k, f], G[f], M1[k, f], M2[k, f], decay, step_size, inv_sqrt_bias2,
                                                wd, one_b1, beta2, one_b2, eps, True)
    else:
        for f in range(P.shape[1]):
            P[k, f], M1[k, f], M2[k, f] = _adam(P[k, f], G[f], M1[k, f], M2[k, f], decay, step_size, inv_sqrt_bias2,
                                                wd, one_b1, beta2, one_b2, eps, False)


@njit(inline="always", cache=True)
def _adam(param, grad, m1, m2, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps, decoupled):
    """One element of the update (adam_update's loops, small tied models' fused pass): (param, m1, m2).

    Two of its sums add two products, and 'contract' lets LLVM fuse either product into the FMA; which
    one it picks depends on the surrounding code (a scalar loop and the vectorised AdamW loop chose
    differently). Adding +0.0 to one product leaves only the other to fuse, so the rounding is the same
    in every loop: fma(beta2, m2, (1 - beta2) g g) (exact: that product is never -0) and, AdamW,
    fma(param, decay, -(step_size q)) (+0.0 only turns a -0 step into +0)."""
    f0 = np.float32(0.0)
    if not decoupled:
        grad = grad + wd * param
    m1 = m1 + one_b1 * (grad - m1)
    m2 = beta2 * m2 + (one_b2 * grad * grad + f0)
    denom = np.sqrt(m2) * inv_sqrt_bias2 + eps
    # np.divide, not '/': numba tests the divisor of '/' for zero (to raise as Python does), and that
    # branch kept the loops from vectorising; np.divide is the same IEEE division without it. (The
    # kernels' error_model="numpy" drops the test too, but it cost phase's n=2 model ~5%.)
    q = np.divide(m1, denom)
    if decoupled:
        return param * decay - (step_size * q + f0), m1, m2
    return param - step_size * q, m1, m2


def _train_segment_template(W, b, mW, vW, mb, vb, p, imp, schedule, loss_acc, hist, batch, first_instance, step0,
                            n_steps, window_start, hist_every, k0, k1, weight_decay, one_b1, beta2, one_b2, eps, relu,
                            decoupled, lanes, relu_hidden, sets, finite, threads):
    """Advance every instance by steps [step0, step0 + n_steps), in place, in parallel over instances.

    W, mW, vW (K, m, n); b, mb, vb, p, imp (K, n); all float32, C-contiguous.
    schedule (steps, 3) float32: engine.fused.schedule_table. loss_acc (K,) sums the loss of steps
    >= window_start; hist (T, K) gets the loss of step t at row t // hist_every when hist_every > 0.
    (k0, k1) = kernels.cpu_rng.seed_words(seed). Scalars are float32 (the arithmetic stays float32).
    The template of train_segment_lanes and train_segment_rows (ROWWISE, each calling its own copy of
    _train_instance_template), compiled in parallel mode; never called itself.
    """
    K = W.shape[0]
    T = max(1, min(threads, K))
    size, n_groups = instance_groups(K, T)
    for t in prange(T):
        for g in range(t, n_groups, T):
            for k in range(g * size, min(K, (g + 1) * size)):
                _train_instance(W, b, mW, vW, mb, vb, p, imp, schedule, loss_acc, hist, k, K, batch, first_instance + k,
                                step0, n_steps, window_start, hist_every, k0, k1, weight_decay, one_b1, beta2, one_b2,
                                eps, relu, decoupled, lanes, relu_hidden, sets, finite)


@njit(cache=True)
def instance_groups(K, T):
    """(size, count): a train segment deals K instances to T threads in groups of ``size`` consecutive ones,
    group g to thread g % T. Round robin, because an instance's cost depends on its density and sweeps
    order instances by density (prange's one contiguous share per thread left one thread with all the
    dense ones; 1.035x on the basic workload); groups of up to 64 so that neighbouring tiny instances,
    whose parameters share cache lines, stay on one thread (a precaution, not measured apart); at
    least 4 groups per thread."""
    size = max(1, min(64, K // (4 * T)))
    return size, (K + size - 1) // size


# Past this many bytes of per-lane weight gradient (4 m n lanes) a model sums its gradient row by row
# (_backward_rows): the per-lane accumulators no longer fit the core's L2 cache (1 MB on Zen 4).
# Not below ROWWISE_MIN_FEATURES features: the transposed rows are then too short to vectorise (a
# review measured n=1, m=2100 at 5.0 ms/step row by row against 1.9 per lane; from n=8 row by row wins).
ROWWISE_BYTES = 1 << 20
ROWWISE_MIN_FEATURES = 8


@njit(cache=True)
def uses_rowwise(n, m, lanes):
    """Whether a model with n features, m neurons and ``lanes`` rows per block sums its weight
    gradient row by row (_backward_rows) instead of per lane; the rule of both CPU kernels."""
    return n >= ROWWISE_MIN_FEATURES and 4 * m * n * lanes > ROWWISE_BYTES

# acc_w (m, n, lanes) float32 per thread: lanes shrink so it stays within this (only models that
# keep per-lane accumulators: past ROWWISE_BYTES, big models sum row by row at full lanes).
LANE_BUDGET_BYTES = 8 << 20
MAX_LANES = 128
MIN_LANES = 16


def lanes_for(n: int, m: int) -> int:
    """Batch rows per block: 128, except that a model keeping per-lane accumulators (uses_rowwise
    false) halves it, down to 16, until they fit LANE_BUDGET_BYTES. 128 beat 64 and 32 on all three
    CPU workloads (AMD EPYC Zen 4, 2 cores: ms/step phase 13.4 / 14.9 / 20.2, basic 27.9 / 31.7 /
    34.6, uniform n=400 m=30 24.1 / 25.9 / 35.0, before the row-by-row path); row by row, n=1000 m=100
    ran 26-27 ms/step at 128 lanes against 79-121 at 16 (review of 26eba0b)."""
    lanes = MAX_LANES
    while lanes > MIN_LANES and not uses_rowwise(n, m, lanes) and 4 * m * n * lanes > LANE_BUDGET_BYTES:
        lanes //= 2
    return lanes


def train_steps(state: dict, p, imp, sched, loss_acc, hist, *, batch: int, first_instance: int, step0: int,
                n_steps: int, window_start: int, hist_every: int, seed: int, weight_decay: float, beta1: float,
                beta2: float, eps: float, relu: bool, decoupled: bool, lanes: int | None = None,
                relu_hidden: bool = False, sets=(), finite: bool = False) -> None:
    """Advance ``state`` = dict(W, b, mW, vW, mb, vb) by steps [step0, step0 + n_steps), in place;
    the CPU twin of kernels.train.train_steps (same arguments, torch CPU tensors or numpy arrays).

    W-like (K, m, n), b-like and p, imp (K, n), float32 contiguous; sched (steps, 3); loss_acc (K,);
    hist (T, K) or None. lanes: batch rows per block (multiple of 4; default lanes_for(n, m)).
    relu: ReLU on the output; relu_hidden: ReLU on the hidden layer too (the relu-hidden variant).
    sets: DataSpec.sets, ((kind, first, size), ...): correlated / anticorrelated features.
    finite: every step trains on the same ``batch`` rows, the finite dataset (DataSpec.examples).
    """
    from .cpu_rng import seed_words

    arr = f32_array
    W, b, mW, vW, mb, vb = (arr(state[k]) for k in ("W", "b", "mW", "vW", "mb", "vb"))
    K, m, n = W.shape
    lanes = lanes or lanes_for(n, m)
    if lanes % 4:
        raise ValueError(f"lanes: must be a multiple of 4 (got {lanes})")
    loss = arr(loss_acc)
    hist_arr = arr(hist) if hist is not None else np.zeros((1, K), np.float32)
    k0, k1 = seed_words(seed)
    f32 = np.float32
    # Plain Python ints and float32 scalars: one compiled signature, cached on disk.
    with slp_vectorize():
        segment = train_segment_rows if uses_rowwise(n, m, lanes) else train_segment_lanes
        segment(W, b, mW, vW, mb, vb, arr(p), arr(imp), arr(sched), loss, hist_arr, int(batch),
                      int(first_instance), int(step0), int(n_steps), int(window_start),
                      int(hist_every) if hist is not None else 0, k0, k1, f32(weight_decay),
                      f32(1.0 - float(beta1)), f32(beta2), f32(1.0 - float(beta2)),  # 1 - beta: float64, rounded once (kernels/adam.py)
                      f32(eps), bool(relu), bool(decoupled), lanes, bool(relu_hidden), set_array(sets), bool(finite),
                      int(numba.get_num_threads()))


def set_array(sets) -> np.ndarray:
    """DataSpec.sets as the kernels' (S, 3) int64 array of (kind code, first, size)."""
    return np.array([(SET_KIND[k], a, s) for k, a, s in sets], dtype=np.int64).reshape(-1, 3)


def _specialise(fn, name: str, **globals_):
    """A copy of the template ``fn`` named ``name`` whose globals also hold ``globals_`` (compile-time
    constants to numba, which prunes the branches on them). Its own name, because numba's disk cache
    keys on the qualified name, not on globals: two copies under one name would load each other's code.
    The copy sees the module's globals as they are when it is made (here, at the end of the module)."""
    copy = pytypes.FunctionType(fn.__code__, {**fn.__globals__, **globals_}, name, fn.__defaults__)
    copy.__qualname__, copy.__doc__, copy.__module__ = name, fn.__doc__, fn.__module__
    return copy


# The compiled copies (ROWWISE): train_steps calls the segment of the model's path, the cpu backend
# compiles the path a run needs (engine.cpu_backend.compile).
_train_instance_lanes = njit(cache=True, fastmath=FASTMATH)(
    _specialise(_train_instance_template, "_train_instance_lanes", ROWWISE=False))
_train_instance_rows = njit(cache=True, fastmath=FASTMATH)(
    _specialise(_train_instance_template, "_train_instance_rows", ROWWISE=True))
train_segment_lanes = njit(parallel=True, cache=True)(
    _specialise(_train_segment_template, "train_segment_lanes", _train_instance=_train_instance_lanes))
train_segment_rows = njit(parallel=True, cache=True)(
    _specialise(_train_segment_template, "train_segment_rows", _train_instance=_train_instance_rows))
