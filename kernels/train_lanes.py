"""Fused training of small tied toy models with batch rows across the lanes.

The layout that makes small models cheap: every tensor has the batch rows on its *last* axis,
so triton's default layout spreads rows over the lanes and warps, and each thread holds whole
rows with all (or, for a short row axis, a share of) the features and hidden units of P
instances. Then W x, W^T h and W dz reduce over features or hidden units inside a thread, in
plain FMA chains, and the gradient's sum over rows is deferred: each thread accumulates its own
rows' dW and db, reduced across lanes once per step rather than once per batch tile.
(kernels/train_fused.py puts rows on an inner axis; its per-tile cross-lane reductions cost
~100 shuffles per 4 rows at n=20, m=5: ``python -m bench.sass``.)

Per step: for each tile of BB rows, sample x on chip (kernels/sampling.py), h = W x,
z = W^T h + b, x' = act(z), loss, dz, dh = W dz, and per-thread partials dW += h dz^T + dh x^T;
then one reduction over rows and the AdamW/Adam update in registers. Nothing that grows with the
batch touches GPU memory; state is written back at the end of the launch.

Shapes (P instances, NP >= n and MP >= m powers of two, BB rows):
    W, Adam moments (P, MP, NP)      x, z, dz (P, NP, BB)      h, dh (P, MP, BB)
    dW partials (P, MP, NP, BB)      b, db (P, NP)
Each thread holds its share of W and of the gradient partials of the rows it owns, so this path
is for small padded models (kernels/layout.py); W's Adam moments stay in registers only up to 8
padded parameters, else they are read and written once per step.
"""
import triton
import triton.language as tl

from .adam import adam
from .sampling import feature_tile_rows_last, rows_last_features, rows_last_order, scaled_rule
from .step_state import (FP_FUSION, load_with_moments, packed_offsets, record_loss, schedule_at,
                         store_with_moments)


@triton.jit
def _train_lanes_kernel(
    W_ptr, b_ptr, mW_ptr, vW_ptr, mb_ptr, vb_ptr,
    p_ptr, imp_ptr, sched_ptr, loss_ptr, hist_ptr,
    K, n, m, batch, first_instance, step0, n_steps, window_start, hist_every,
    seed, wd, one_b1, beta2, one_b2, eps, inv_bn,
    P: tl.constexpr, BB: tl.constexpr, NP: tl.constexpr, MP: tl.constexpr,
    RELU: tl.constexpr, DECOUPLED: tl.constexpr, EVEN: tl.constexpr, MOMENTS_IN_MEMORY: tl.constexpr,
):
    """Train instances [pid*P, pid*P + P) for steps [step0, step0 + n_steps).

    Pointers, sizes and scalars exactly as kernels/train_fused.py's kernel:
    W_ptr, mW_ptr, vW_ptr: (K, m, n) float32 in place; b_ptr, mb_ptr, vb_ptr: (K, n) in place;
    p_ptr, imp_ptr: (K, n); sched_ptr: (total_steps, 3); loss_ptr: (K,); hist_ptr: (T, K);
    inv_bn = 1 / (batch * n). EVEN: batch % BB == 0 (no row masks). MOMENTS_IN_MEMORY: W's Adam
    moments stay in memory between steps instead of registers (models beyond a few parameters).
    """
    ip, ok_i, w_offs, w_mask, pf_offs, pf_mask = packed_offsets(K, n, m, rows_last_features(NP), P, NP, MP)
    # Padding is exact zeros in W and b and zero importance, so padded lanes never contribute.
    if MOMENTS_IN_MEMORY:
        W = tl.load(W_ptr + w_offs, mask=w_mask, other=0.0)  # the moments are read once per step
    else:
        W, mW, vW = load_with_moments(W_ptr, mW_ptr, vW_ptr, w_offs, w_mask)
    b, mb, vb = load_with_moments(b_ptr, mb_ptr, vb_ptr, pf_offs, pf_mask)
    # Padded features get probability 0: never active, so x = 0 there without a mask.
    prob = tl.load(p_ptr + pf_offs, mask=pf_mask, other=0.0)[:, :, None]
    prob24, inv24 = scaled_rule(prob)
    # The loss gradient's 2 / (batch n) folded into the importance: dz = imp2 * d, one multiply.
    grad_scale = 2.0 * inv_bn
    imp2 = tl.load(imp_ptr + pf_offs, mask=pf_mask, other=0.0)[:, :, None] * grad_scale
    loss_acc = tl.load(loss_ptr + ip, mask=ok_i, other=0.0)
    inst = (first_instance + ip).to(tl.uint32)
    n4 = (n + 3) // 4
    W4 = W[:, :, :, None]

    for t in range(step0, step0 + n_steps):
        dW4 = tl.zeros((P, MP, NP, BB), tl.float32)
        db3 = tl.zeros((P, NP, BB), tl.float32)
        l3 = tl.zeros((P, NP, BB), tl.float32)
        for r0 in range(0, batch, BB):
            x = feature_tile_rows_last(seed, inst, t, r0, n4, prob24, inv24, EVEN, batch, P, BB, NP)  # (P, NP, BB)
            h = tl.sum(W4 * x[:, None, :, :], axis=2)                                    # (P, MP, BB)
            z = tl.sum(W4 * h[:, :, None, :], axis=1) + b[:, :, None]                    # (P, NP, BB)
            if RELU:
                y = tl.maximum(z, 0.0)
            else:
                y = z
            # Padded features and rows past the batch have x = 0, z = 0 (W, b padded with zeros) ...
            d = y - x
            if not EVEN:  # ... except z = b for rows past the batch
                d = tl.where((rows_last_order(r0, BB, NP) < batch)[None, None, :], d, 0.0)
            dz = imp2 * d
            l3 += dz * d            # = 2 inv_bn imp d^2: the step's loss times 2
            if RELU:
                dz = tl.where(z > 0.0, dz, 0.0)
            db3 += dz
            dh = tl.sum(W4 * dz[:, None, :, :], axis=2)                                  # (P, MP, BB)
            dW4 += h[:, :, None, :] * dz[:, None, :, :] + dh[:, :, None, :] * x[:, None, :, :]
        # The one cross-lane reduction of the step.
        dW = tl.sum(dW4, axis=3)
        db = tl.sum(db3, axis=2)
        loss_t = tl.sum(tl.sum(l3, axis=2), axis=1) * 0.5
        loss_acc = record_loss(loss_acc, loss_t, t, window_start, hist_every, hist_ptr, K, ip, ok_i)
        decay, step_size, inv_sqrt_bias2 = schedule_at(sched_ptr, t)
        if MOMENTS_IN_MEMORY:
            # Read and written once per step, from L1/L2: frees 2/3 of the parameter registers.
            mW = tl.load(mW_ptr + w_offs, mask=w_mask, other=0.0)
            vW = tl.load(vW_ptr + w_offs, mask=w_mask, other=0.0)
        W, mW, vW = adam(W, dW, mW, vW, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps, DECOUPLED)
        if MOMENTS_IN_MEMORY:
            store_with_moments(W_ptr, mW_ptr, vW_ptr, w_offs, w_mask, W, mW, vW)
        b, mb, vb = adam(b, db, mb, vb, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps, DECOUPLED)
        W = tl.where(w_mask, W, 0.0)
        b = tl.where(pf_mask, b, 0.0)
        W4 = W[:, :, :, None]

    if MOMENTS_IN_MEMORY:
        tl.store(W_ptr + w_offs, W, mask=w_mask)
    else:
        store_with_moments(W_ptr, mW_ptr, vW_ptr, w_offs, w_mask, W, mW, vW)
    store_with_moments(b_ptr, mb_ptr, vb_ptr, pf_offs, pf_mask, b, mb, vb)
    tl.store(loss_ptr + ip, loss_acc, mask=ok_i)


def launch(head, tail, cfg, *, batch: int, relu: bool, decoupled: bool, precision: str) -> None:
    """Launch over all instances; head, tail: the kernel's leading and trailing arguments (kernels/train.py)."""
    K = head[0].shape[0]
    _train_lanes_kernel[(triton.cdiv(K, cfg.P),)](
        *head, *tail, P=cfg.P, BB=cfg.BB, NP=cfg.NP, MP=cfg.MP, RELU=relu, DECOUPLED=decoupled,
        EVEN=batch % cfg.BB == 0, MOMENTS_IN_MEMORY=cfg.NP * cfg.MP > 8, num_warps=cfg.num_warps,
        enable_fp_fusion=FP_FUSION)
