"""The fused CPU training loop for the untied abs-computation model (numba), the twin of
kernels/cpu_train.py for h = ReLU(W1 x + b1), y = ReLU(W2 h + b2), target |x|, inputs U[-1, 1)
when active (the sampling rule of engine.reference.features_from_uniform with signed=True).

Same structure and conventions as cpu_train.py (read its docstring first): per instance, per step,
the batch is drawn block by block from the Philox stream (sets and finite datasets included), rows
on the last axis of every work array, per-row-lane gradient accumulators summed once per step in a
fixed order (results do not depend on threads, chunking or segments), then Adam/AdamW for W1, b1,
W2 and b2 with kernels/adam.py's formula. Gradients (engine.reference.untied_loss_and_grads):
dZ = 2 I (y - |x|) [z > 0] / (B n), db2 = sum dZ, dW2 = dZ h^T, dH = W2^T dZ [W1 x + b1 > 0],
db1 = sum dH, dW1 = dH x^T.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .cpu_rng import M32, seed_words
from .cpu_tiles import LANES as TILE_LANES, slp_vectorize
from .cpu_sparse import LANE_WORD, look_sparse, scatter_product, sparse_lanes_ok
from .cpu_train import (FASTMATH, STREAM_DATASET, _apply_sets, _draw_block, _lane_mask, _record_loss, accumulate_halves,
                        adam_update, adam_update_vector, batch_fit, draw_rule, f32_array, instance_groups,
                        padded_rule, rows_times, set_array, sum_lanes, transpose_into, uses_rowwise, zeros_aligned)

LANE_BUDGET_BYTES = 8 << 20  # the two per-lane weight-gradient accumulators, per thread


def lanes_for(n: int, m: int, batch: int | None = None) -> int:
    """Batch rows per block: 128, halved down to 16 while a model keeping per-lane accumulators
    (uses_rowwise false) needs more than LANE_BUDGET_BYTES for its two (2 m n lanes float32); with
    ``batch``, rows per step, fewer for a smaller batch (cpu_train.batch_fit, as the tied kernel)."""
    lanes = 128
    while lanes > 16 and not uses_rowwise(n, m, lanes) and 2 * 4 * m * n * lanes > LANE_BUDGET_BYTES:
        lanes //= 2
    return lanes if batch is None else batch_fit(n, m, lanes, batch)


@njit(cache=True, fastmath=FASTMATH)
def _train_instance(W1, b1, W2, b2, mW1, vW1, mb1, vb1, mW2, vW2, mb2, vb2, p, imp, sched, loss_acc, hist, k, batch,
                    inst, step0, n_steps, window_start, hist_every, k0, k1, weight_decay, one_b1, beta2, one_b2, eps,
                    decoupled, R, sets, finite):
    """Steps [step0, step0 + n_steps) of instance k (global id ``inst``); see train_segment."""
    m, n = W1.shape[1], W1.shape[2]
    f32 = np.float32
    pk, inv = padded_rule(p[k])
    pd, invd = draw_rule(pk, inv, sets)
    grad_scale = f32(2.0) / f32(batch * n)
    cz = np.empty(n, np.float32)
    for f in range(n):
        cz[f] = grad_scale * imp[k, f]
    x = zeros_aligned((pk.shape[0], R))
    act = np.empty(n, np.bool_)
    h = zeros_aligned((m, R))
    # rows past n stay 0 (the gradient tiles read x's padded rows)
    dz = zeros_aligned((pk.shape[0], R))
    dzact = np.empty(n, np.bool_)
    dh = zeros_aligned((m, R))
    # Per-lane weight-gradient accumulators (m, n, lanes), dW2 transposed (acc_w2[j, f] for W2[f, j]);
    # big models instead sum over each block's rows in register tiles (kernels/cpu_train.py,
    # accumulate_halves) into accT1 (dW1 transposed) and accT2 (dW2), (n_pad, mp), neurons padded.
    rowwise = uses_rowwise(n, m, R)
    acc_w1 = zeros_aligned((m, n, 0 if rowwise else R))
    acc_w2 = zeros_aligned((m, n, 0 if rowwise else R))
    mp = TILE_LANES * ((m + TILE_LANES - 1) // TILE_LANES) if rowwise else 0
    accT1 = zeros_aligned((pk.shape[0] if rowwise else 0, mp))
    accT2 = zeros_aligned((pk.shape[0] if rowwise else 0, mp))
    hT = zeros_aligned((R if rowwise else 0, mp))
    dhT = zeros_aligned((R if rowwise else 0, mp))
    # Row by row, sparse factors (kernels/cpu_sparse.py, as in kernels/cpu_train.py): W1^T and W2 padded
    # to mp columns, b1 padded (h's init), the nonzero masks, each lane's nonzero terms of x and dz.
    sparse = rowwise and sparse_lanes_ok(R)
    ns = n if sparse else 0
    W1p, W2p = zeros_aligned((ns, mp)), zeros_aligned((ns, mp))
    b1p, zeros_mp = np.zeros(mp, np.float32), np.zeros(mp, np.float32)
    masks = np.empty((ns, R // LANE_WORD), np.uint64)
    terms, counts = np.empty((2, R if sparse else 0, ns), np.int32), np.empty((2, R if sparse else 0), np.int32)
    x_terms, dz_terms, x_count, dz_count = terms[0], terms[1], counts[0], counts[1]
    acc_b1 = zeros_aligned((m, R))
    acc_b2 = zeros_aligned((n, R))
    acc_l = zeros_aligned((R,))
    valid = zeros_aligned((R,))
    valid[:] = 1.0
    # W1 and W2 transposed, refreshed every step (rows_times reads A[c, r]: W1T[f, j], W2T[j, f]).
    W1T = np.empty((n, m), np.float32)
    W2T = np.empty((m, n), np.float32)
    # The step's gradients, laid out like the parameters for adam_update (gW2T: dW2 transposed, per lane).
    gW1 = np.empty((m, n), np.float32)
    gW2, gW2T = np.empty((0 if rowwise else n, m), np.float32), np.empty((0 if rowwise else m, n), np.float32)
    gb1, gb2 = np.empty(m, np.float32), np.empty(n, np.float32)
    zeros_m = np.zeros(m, np.float32)
    all_m = np.ones(m, np.bool_)
    last_r0 = ((batch - 1) // R) * R
    c2 = np.uint64(inst) & M32
    c3 = np.uint64(STREAM_DATASET if finite else 0)
    for t in range(step0, step0 + n_steps):
        c1 = np.uint64(0) if finite else np.uint64(t) & M32
        transpose_into(W1[k], W1T)
        transpose_into(W2[k], W2T)
        if sparse:
            transpose_into(W1[k], W1p[:, :m])
            W2p[:, :m] = W2[k]
            b1p[:m] = b1[k]
        acc_w1[:] = 0.0
        acc_w2[:] = 0.0
        accT1[:] = 0.0
        accT2[:] = 0.0
        acc_b1[:] = 0.0
        acc_b2[:] = 0.0
        acc_l[:] = 0.0
        valid[:] = 1.0
        for r0 in range(0, batch, R):
            _draw_block(x, act, pd, invd, r0, batch, n, c1, c2, c3, k0, k1)
            if sets.shape[0]:
                _apply_sets(x, act, sets, pk, inv)
            for f in range(n):  # signed inputs: an active value v in [0, 1) becomes 2 v - 1
                if act[f]:
                    for l in range(R):
                        v = x[f, l]
                        x[f, l] = f32(2.0) * v - f32(1.0) if v != 0.0 else f32(0.0)
            if r0 == last_r0 and batch % R != 0:
                _lane_mask(valid, r0, n, batch)
            # h = ReLU(W1 x + b1); sparse x (the same numbers): straight into hT, then h
            if r0 == 0:
                try_x = try_dz = sparse
            sparse_x, try_x = look_sparse(x, n, R, masks, try_x)
            if sparse_x:
                scatter_product(W1p, x, n, masks, b1p, hT, x_terms, x_count)
                for l in range(R):
                    for j in range(m):
                        hT[l, j] = max(hT[l, j], f32(0.0))
                transpose_into(hT[:, :m], h)
            else:
                rows_times(W1T, x, act, b1[k], h)
                for j in range(m):
                    for l in range(R):
                        h[j, l] = max(h[j, l], f32(0.0))
            # z = W2 h + b2, y = ReLU(z), the loss against |x| and dz
            rows_times(W2T, h, all_m, b2[k], dz)
            for f in range(n):
                c = cz[f]
                i_f = imp[k, f]
                any_dz = False
                for l in range(R):
                    z = dz[f, l]
                    d = (max(z, f32(0.0)) - abs(x[f, l])) * valid[l]
                    acc_l[l] += i_f * d * d
                    g = c * d if z > 0.0 else f32(0.0)
                    dz[f, l] = g
                    acc_b2[f, l] += g
                    any_dz |= g != 0.0
                dzact[f] = any_dz
            # dW2 += dz h^T; dh = W2^T dz through the hidden ReLU; dW1 += dh x^T; db1 += dh
            if rowwise:
                sparse_dz, try_dz = look_sparse(dz, n, R, masks, try_dz)
                _backward_rows(accT1, accT2, W2[k], W2p, x, h, hT, dz, dzact, dh, dhT, acc_b1, zeros_m, zeros_mp,
                               sparse_x, sparse_dz, masks, x_terms, x_count, dz_terms, dz_count)
            else:
                for f in range(n):
                    if dzact[f]:
                        for j in range(m):
                            for l in range(R):
                                acc_w2[j, f, l] += dz[f, l] * h[j, l]
                rows_times(W2[k], dz, dzact, zeros_m, dh)
                for j in range(m):
                    for l in range(R):
                        g = dh[j, l] if h[j, l] > 0.0 else f32(0.0)
                        dh[j, l] = g
                        acc_b1[j, l] += g
                    for f in range(n):
                        if act[f]:
                            for l in range(R):
                                acc_w1[j, f, l] += dh[j, l] * x[f, l]
        _record_loss(acc_l, grad_scale, t, k, window_start, hist_every, loss_acc, hist)
        decay, step_size, inv_sqrt_bias2 = sched[t, 0], sched[t, 1], sched[t, 2]
        if rowwise:  # accT2 (n_pad, mp) is dW2 as it is: adam_update reads its first n rows, m columns
            transpose_into(accT1[:n, :m], gW1)
            g2 = accT2
        else:
            sum_lanes(acc_w1, gW1)
            sum_lanes(acc_w2, gW2T)
            transpose_into(gW2T, gW2)
            g2 = gW2
        sum_lanes(acc_b1, gb1)
        sum_lanes(acc_b2, gb2)
        for P, M1, M2, G in ((W1, mW1, vW1, gW1), (W2, mW2, vW2, g2)):
            adam_update(P, M1, M2, G, k, decay, step_size, inv_sqrt_bias2, weight_decay, one_b1, beta2, one_b2, eps,
                        decoupled)
        for P, M1, M2, G in ((b1, mb1, vb1, gb1), (b2, mb2, vb2, gb2)):
            adam_update_vector(P, M1, M2, G, k, decay, step_size, inv_sqrt_bias2, weight_decay, one_b1, beta2, one_b2,
                               eps, decoupled)


@njit(cache=True, fastmath=FASTMATH)
def _backward_rows(accT1, accT2, W2k, W2p, x, h, hT, dz, dzact, dh, dhT, acc_b1, zeros_m, zeros_mp, sparse_x,
                   sparse_dz, masks, x_terms, x_count, dz_terms, dz_count):
    """A block's backward pass row by row (untied model): dh = W2^T dz through the hidden ReLU (and
    its per-lane bias sums acc_b1 (m, R)), accT2 (n_pad, mp) += (dz h^T), accT1 += (dh x^T)^T.
    sparse_x: hT and x_terms came from scatter_product (else hT is made here from h); sparse_dz: masks
    hold dz's nonzero pattern and dh and dW2 go through the sparse products. Either way the same sums."""
    m, R = h.shape
    f0 = np.float32(0.0)
    if not sparse_x:  # first: the sparse dh below masks with hT
        transpose_into(h, hT[:, :m])
    if sparse_dz:
        scatter_product(W2p, dz, masks.shape[0], masks, zeros_mp, dhT, dz_terms, dz_count)
        for l in range(R):
            for j in range(m):
                g = dhT[l, j] if hT[l, j] > 0.0 else f0
                dhT[l, j] = g
                acc_b1[j, l] += g
    else:
        rows_times(W2k, dz, dzact, zeros_m, dh)
        for j in range(m):
            for l in range(R):
                g = dh[j, l] if h[j, l] > 0.0 else f0
                dh[j, l] = g
                acc_b1[j, l] += g
        transpose_into(dh, dhT[:, :m])
    accumulate_halves(accT2, accT1, dz, hT, sparse_dz, dz_terms, dz_count, x, dhT, sparse_x, x_terms, x_count)


@njit(parallel=True, cache=True)
def train_segment(W1, b1, W2, b2, mW1, vW1, mb1, vb1, mW2, vW2, mb2, vb2, p, imp, schedule, loss_acc, hist, batch,
                  first_instance, step0, n_steps, window_start, hist_every, k0, k1, weight_decay, one_b1, beta2, one_b2,
                  eps, decoupled, lanes, sets, finite, threads):
    """Advance every instance by steps [step0, step0 + n_steps), in place, in parallel over instances.
    W1 (K, m, n), b1 (K, m), W2 (K, n, m), b2 (K, n) and their Adam moments; the rest as
    kernels.cpu_train's train segments (_train_segment_template), instances dealt to the threads round
    robin in small groups as there (instance_groups: the computation experiment orders its instances
    by density, and one contiguous share per thread left one thread all the dense ones)."""
    K = W1.shape[0]
    T = max(1, min(threads, K))
    size, n_groups = instance_groups(K, T)
    for t in prange(T):
        for g in range(t, n_groups, T):
            for k in range(g * size, min(K, (g + 1) * size)):
                _train_instance(W1, b1, W2, b2, mW1, vW1, mb1, vb1, mW2, vW2, mb2, vb2, p, imp, schedule, loss_acc,
                                hist, k, batch, first_instance + k, step0, n_steps, window_start, hist_every, k0, k1,
                                weight_decay, one_b1, beta2, one_b2, eps, decoupled, lanes, sets, finite)


NAMES = ("W1", "b1", "W2", "b2")


def train_steps(state: dict, p, imp, sched, loss_acc, hist, *, batch: int, first_instance: int, step0: int,
                n_steps: int, window_start: int, hist_every: int, seed: int, weight_decay: float, beta1: float,
                beta2: float, eps: float, decoupled: bool, lanes: int | None = None, sets=(),
                finite: bool = False) -> None:
    """Advance ``state`` = dict(W1, b1, W2, b2 and "m"/"v" + each) by steps [step0, step0 + n_steps), in
    place (torch CPU tensors or numpy arrays, float32 C-contiguous); the untied twin of
    kernels.cpu_train.train_steps."""
    arr = f32_array
    P = [arr(state[k]) for k in NAMES]
    moments = [arr(state[pre + k]) for k in NAMES for pre in ("m", "v")]
    K, m, n = P[0].shape
    lanes = lanes or lanes_for(n, m)
    if lanes % 4:
        raise ValueError(f"lanes: must be a multiple of 4 (got {lanes})")
    hist_arr = arr(hist) if hist is not None else np.zeros((1, K), np.float32)
    k0, k1 = seed_words(seed)
    f32 = np.float32
    with slp_vectorize():
        train_segment(*P, *moments, arr(p), arr(imp), arr(sched), arr(loss_acc), hist_arr, int(batch),
                      int(first_instance), int(step0), int(n_steps), int(window_start),
                      int(hist_every) if hist is not None else 0, k0, k1, f32(weight_decay),
                      f32(1.0 - float(beta1)), f32(beta2), f32(1.0 - float(beta2)),  # 1 - beta: float64, rounded once (kernels/adam.py)
                      f32(eps), bool(decoupled), lanes, set_array(sets), bool(finite), int(numba.get_num_threads()))
