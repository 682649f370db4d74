"""Fused training of larger tied toy models (e.g. n=400, m=30), worked in feature blocks.

One program trains one instance for ``n_steps`` steps. W and the Adam moments stay in global
memory (an instance's W is 48 KiB at n=400, m=30: it lives in L2), read one (MP, NB) block at a
time; the batch never touches memory: per tile of BB rows, three passes over the feature blocks
re-draw the same x from the counter-based RNG (cheaper than storing it):
    A: h  = sum over blocks of x_blk W_blk^T                               (BB, MP)
    B: z_blk = h W_blk + b_blk, loss, dz_blk; db_blk += sum dz_blk; dh += dz_blk W_blk^T;
       dW_blk += h^T dz_blk                                                (scratch in memory)
    C: dW_blk += dh^T x_blk
then, after the whole batch, the Adam update block by block (which also re-zeroes the scratch).
Products are tl.dot: PRECISION "ieee" (exact fp32), "tf32" (tensor cores) or "tf32x3" (3-pass tensor
cores, fp32-class; the layout's fp32_dot, the fp32 default for m <= 32). tl.dot needs every
dimension >= 16, so m is padded to MP >= 16, rows BB >= 16, feature blocks NB >= 16.
Memory traffic per step is O(m n (B / BB)) per instance for W and the gradient scratch, none for
the batch itself.
"""
import triton
import triton.language as tl

from .adam import adam_in_memory
from .sampling import feature_tile, reciprocal
from .step_state import FP_FUSION, record_loss, schedule_at


@triton.jit
def _feature_block(pk, seed, inst, t, r0, n4, f0, n, j, j_ok, row_ok, BB: tl.constexpr, NB: tl.constexpr,
                   EVEN: tl.constexpr):
    """Features f0..f0+NB-1 of rows r0..r0+BB-1: their indices, masks, W offsets and the sampled x (BB, NB).
    EVEN: batch % BB == 0 and n % NB == 0, so every row and feature of the block is real (no masks)."""
    fb = f0 + tl.arange(0, NB)
    f_ok = fb < n
    w_offs = j[:, None] * n + fb[None, :]
    w_mask = j_ok[:, None] & f_ok[None, :]
    prob = tl.load(pk + fb, mask=f_ok, other=1.0)
    if EVEN:
        valid = tl.full((BB, NB), 1, tl.int1)
    else:
        valid = row_ok[:, None] & f_ok[None, :]
    x = tl.reshape(feature_tile(seed, inst, t, r0, n4, f0, prob[None, None, :], reciprocal(prob)[None, None, :],
                                valid[None, :, :], 1, BB, NB), (BB, NB))
    return fb, f_ok, w_offs, w_mask, valid, x


@triton.jit
def _train_blocked_kernel(
    W_ptr, b_ptr, mW_ptr, vW_ptr, mb_ptr, vb_ptr, dW_ptr, db_ptr,
    p_ptr, imp_ptr, sched_ptr, loss_ptr, hist_ptr,
    K, n, m, batch, first_instance, step0, n_steps, window_start, hist_every,
    seed, wd, one_b1, beta2, one_b2, eps, inv_bn,
    BB: tl.constexpr, NB: tl.constexpr, MP: tl.constexpr,
    RELU: tl.constexpr, DECOUPLED: tl.constexpr, PRECISION: tl.constexpr, EVEN: tl.constexpr,
    DB_IN_DOT: tl.constexpr,
):
    """Train instance pid for steps [step0, step0 + n_steps).

    W_ptr, mW_ptr, vW_ptr: (K, m, n) float32 in place; dW_ptr: (K, m + 1, n) float32 scratch, zero
    on entry and exit (rows < m: dW; row m: db when DB_IN_DOT). b_ptr, mb_ptr, vb_ptr: (K, n) in
    place; db_ptr: (K, n) scratch, zero (db unless DB_IN_DOT). p_ptr, imp_ptr: (K, n).
    sched_ptr, loss_ptr, hist_ptr, inv_bn: as kernels/train_fused.py.
    EVEN: batch % BB == 0 and n % NB == 0 (no row or feature masks on x and d).
    DB_IN_DOT (m < MP): h gets a column of ones at index m, so the (MP, NB) product h^T dz that
    feeds dW also carries db = sum over rows of dz in its row m: no per-block reduction across warps.
    """
    k = tl.program_id(0).to(tl.int64)
    Wk, mWk, vWk, dWk = W_ptr + k * m * n, mW_ptr + k * m * n, vW_ptr + k * m * n, dW_ptr + k * (m + 1) * n
    bk, mbk, vbk = b_ptr + k * n, mb_ptr + k * n, vb_ptr + k * n
    if DB_IN_DOT:
        dbk = dWk + m * n
    else:
        dbk = db_ptr + k * n
    pk, ik = p_ptr + k * n, imp_ptr + k * n
    j = tl.arange(0, MP)
    j_ok = j < m
    inst = (tl.zeros((1,), tl.int64) + first_instance + k).to(tl.uint32)
    n4 = (n + 3) // 4
    grad_scale = 2.0 * inv_bn
    loss_acc = tl.load(loss_ptr + k)
    # Gradient scratch rows: dW's m rows, plus db's row m when it comes out of the dot.
    if DB_IN_DOT:
        g_ok = j <= m
    else:
        g_ok = j_ok

    for t in range(step0, step0 + n_steps):
        l2 = tl.zeros((BB, NB), tl.float32)  # 2 inv_bn imp d^2, summed once per step
        for r0 in range(0, batch, BB):
            rows = r0 + tl.arange(0, BB)
            row_ok = rows < batch
            # Pass A: h = x W^T over feature blocks.
            h = tl.zeros((BB, MP), tl.float32)
            for f0 in range(0, n, NB):
                fb, f_ok, w_offs, w_mask, valid, x = _feature_block(pk, seed, inst, t, r0, n4, f0, n, j, j_ok, row_ok,
                                                                     BB, NB, EVEN)
                Wb = tl.load(Wk + w_offs, mask=w_mask, other=0.0)                       # (MP, NB)
                h += tl.dot(x, tl.trans(Wb), input_precision=PRECISION)
            if DB_IN_DOT:
                h = tl.where(j[None, :] == m, 1.0, h)  # W's row m is padding (0): z and dh are unchanged
            # Pass B: outputs, loss, dz; db, dh and the first half of dW.
            dh = tl.zeros((BB, MP), tl.float32)
            for f0 in range(0, n, NB):
                fb, f_ok, w_offs, w_mask, valid, x = _feature_block(pk, seed, inst, t, r0, n4, f0, n, j, j_ok, row_ok,
                                                                     BB, NB, EVEN)
                Wb = tl.load(Wk + w_offs, mask=w_mask, other=0.0)
                imp2 = tl.load(ik + fb, mask=f_ok, other=0.0) * grad_scale
                bb = tl.load(bk + fb, mask=f_ok, other=0.0)
                z = tl.dot(h, Wb, input_precision=PRECISION) + bb[None, :]              # (BB, NB)
                if RELU:
                    y = tl.maximum(z, 0.0)
                else:
                    y = z
                if EVEN:
                    d = y - x
                else:
                    d = tl.where(valid, y - x, 0.0)
                dz = imp2[None, :] * d
                l2 += dz * d
                if RELU:
                    dz = tl.where(z > 0.0, dz, 0.0)
                if not DB_IN_DOT:
                    tl.store(dbk + fb, tl.load(dbk + fb, mask=f_ok, other=0.0) + tl.sum(dz, axis=0), mask=f_ok)
                dh += tl.dot(dz, tl.trans(Wb), input_precision=PRECISION)
                g = tl.dot(tl.trans(h), dz, input_precision=PRECISION)                  # (MP, NB)
                g_mask = g_ok[:, None] & f_ok[None, :]
                tl.store(dWk + w_offs, tl.load(dWk + w_offs, mask=g_mask, other=0.0) + g, mask=g_mask)
            # Global scratch written by one thread may be read by another: barrier between passes.
            tl.debug_barrier()
            # Pass C: the second half of dW, dh^T x.
            for f0 in range(0, n, NB):
                fb, f_ok, w_offs, w_mask, valid, x = _feature_block(pk, seed, inst, t, r0, n4, f0, n, j, j_ok, row_ok,
                                                                     BB, NB, EVEN)
                g = tl.dot(tl.trans(dh), x, input_precision=PRECISION)
                tl.store(dWk + w_offs, tl.load(dWk + w_offs, mask=w_mask, other=0.0) + g, mask=w_mask)
            tl.debug_barrier()
        loss_t = tl.sum(tl.sum(l2, axis=1), axis=0) * 0.5
        loss_acc = record_loss(loss_acc, loss_t, t, window_start, hist_every, hist_ptr, K, k, k < K)
        decay, step_size, inv_sqrt_bias2 = schedule_at(sched_ptr, t)
        for f0 in range(0, n, NB):
            fb = f0 + tl.arange(0, NB)
            f_ok = fb < n
            w_offs = j[:, None] * n + fb[None, :]
            w_mask = j_ok[:, None] & f_ok[None, :]
            adam_in_memory(Wk, dWk, mWk, vWk, w_offs, w_mask, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2,
                           eps, DECOUPLED)
            adam_in_memory(bk, dbk, mbk, vbk, fb, f_ok, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2,
                           eps, DECOUPLED)
        tl.debug_barrier()
    tl.store(loss_ptr + k, loss_acc)


def launch(head, tail, cfg, *, batch: int, relu: bool, decoupled: bool, precision: str) -> None:
    """Launch over all instances; head, tail: the kernel's leading and trailing arguments
    (kernels/train.py), between which this kernel takes its gradient scratch."""
    import torch  # the launcher allocates the gradient scratch

    W, b = head[0], head[1]
    K, m, n = W.shape
    _train_blocked_kernel[(K,)](
        *head, W.new_zeros(K, m + 1, n), torch.zeros_like(b), *tail, BB=cfg.BB, NB=cfg.NB, MP=cfg.MP, RELU=relu,
        DECOUPLED=decoupled, PRECISION="tf32" if precision == "tf32" else cfg.fp32_dot,
        EVEN=batch % cfg.BB == 0 and n % cfg.NB == 0, DB_IN_DOT=m < cfg.MP, num_warps=cfg.num_warps,
        enable_fp_fusion=FP_FUSION)
