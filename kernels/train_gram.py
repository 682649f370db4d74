"""Fused training of mid-size tied toy models (the default for 16 <= n <= 32) on tl.dot, in the Gram form.

The model sees W only through G = W^T W (n x n): x' = act(x G + b) with batch rows x. So per
step: G = W^T W once; per tile of BB rows, sample x on chip (kernels/sampling.py), z = x G + b,
loss, dz, and dG += x^T dz (two dots per tile instead of the two-sided form's five, and m is
never a tile dimension); after the batch, dW = W (dG + dG^T), db = sum of dz, and the AdamW/Adam
update, all in registers. Nothing that grows with the batch touches memory; no feature blocks,
no re-drawing, no gradient scratch (contrast kernels/train_blocked.py).

Measured by the design prototype on an H100 (shared/design.md): the Gram form took the basic
workload (n=20, m=5) from 2.73 to 1.86 ms/step at exact fp32. For n much larger than m it costs
n/m times the two-sided FLOPs, and at padded n = 64 G and dG spill from registers, so kernels/layout.py
picks it only for 16 <= n <= 32 (padded n <= GRAM_MAX_N; fp32 only when m >= about n/2). Any n can be
forced with path="gram" (tests do, down to n = 3: n is padded to at least 16).

Shapes (one instance per program; NP = max(16, next pow2 of n), MP = max(16, next pow2 of m),
tl.dot's minimum):
    W, Adam moments (MP, NP)    G, dG (NP, NP)    x, z, dz (BB, NP)    b, db (NP,)
Precision of the per-tile dots: PRECISION ("ieee" exact fp32, "tf32", "tf32x3"); the once-per-
step dots (G, dW) are always ieee.
"""
import triton
import triton.language as tl

from .adam import adam
from .sampling import feature_tile, reciprocal
from .step_state import FP_FUSION, load_with_moments, record_loss, schedule_at, store_with_moments


@triton.jit
def _train_gram_kernel(
    W_ptr, b_ptr, mW_ptr, vW_ptr, mb_ptr, vb_ptr,
    p_ptr, imp_ptr, sched_ptr, loss_ptr, hist_ptr,
    K, n, m, batch, first_instance, step0, n_steps, window_start, hist_every,
    seed, wd, one_b1, beta2, one_b2, eps, inv_bn,
    BB: tl.constexpr, NP: tl.constexpr, MP: tl.constexpr,
    RELU: tl.constexpr, DECOUPLED: tl.constexpr, PRECISION: tl.constexpr,
):
    """Train instance pid for steps [step0, step0 + n_steps).

    Pointers, sizes and scalars exactly as kernels/train_fused.py's kernel:
    W_ptr, mW_ptr, vW_ptr: (K, m, n) float32 in place; b_ptr, mb_ptr, vb_ptr: (K, n) in place;
    p_ptr, imp_ptr: (K, n); sched_ptr: (total_steps, 3); loss_ptr: (K,); hist_ptr: (T, K);
    inv_bn = 1 / (batch * n).
    """
    k = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, MP)
    f = tl.arange(0, NP)
    w_offs = k * m * n + j[:, None] * n + f[None, :]
    w_mask = (j[:, None] < m) & (f[None, :] < n)
    f_ok = f < n
    # Padding is exact zeros in W and b, and zero probability and importance: padded features
    # are never drawn and never contribute.
    W, mW, vW = load_with_moments(W_ptr, mW_ptr, vW_ptr, w_offs, w_mask)
    b, mb, vb = load_with_moments(b_ptr, mb_ptr, vb_ptr, k * n + f, f_ok)
    prob = tl.load(p_ptr + k * n + f, mask=f_ok, other=0.0)
    inv_prob = reciprocal(prob)
    grad_scale = 2.0 * inv_bn
    imp2 = tl.load(imp_ptr + k * n + f, mask=f_ok, other=0.0)[None, :] * grad_scale    # dz = imp2 * d
    loss_acc = tl.load(loss_ptr + k)
    inst = (tl.zeros((1,), tl.int64) + first_instance + k).to(tl.uint32)
    n4 = (n + 3) // 4

    for t in range(step0, step0 + n_steps):
        G = tl.dot(tl.trans(W), W, input_precision="ieee")                                # (NP, NP)
        dG = tl.zeros((NP, NP), tl.float32)
        db = tl.zeros((NP,), tl.float32)
        l2 = tl.zeros((BB, NP), tl.float32)
        for r0 in range(0, batch, BB):
            rows = r0 + tl.arange(0, BB)
            valid = (rows[:, None] < batch) & f_ok[None, :]
            x = tl.reshape(feature_tile(seed, inst, t, r0, n4, 0, prob[None, None, :], inv_prob[None, None, :],
                                        valid[None, :, :], 1, BB, NP), (BB, NP))
            z = tl.dot(x, G, input_precision=PRECISION) + b[None, :]                        # (BB, NP)
            if RELU:
                y = tl.maximum(z, 0.0)
            else:
                y = z
            d = tl.where(valid, y - x, 0.0)
            dz = imp2 * d
            l2 += dz * d                                                                    # 2 inv_bn imp d^2
            if RELU:
                dz = tl.where(z > 0.0, dz, 0.0)
            db += tl.sum(dz, axis=0)
            dG = tl.dot(tl.trans(x), dz, dG, input_precision=PRECISION)                     # (NP, NP)
        dW = tl.dot(W, dG + tl.trans(dG), input_precision="ieee")                           # (MP, NP)
        loss_t = tl.sum(tl.sum(l2, axis=1), axis=0) * 0.5
        loss_acc = record_loss(loss_acc, loss_t, t, window_start, hist_every, hist_ptr, K, k, k < K)
        decay, step_size, inv_sqrt_bias2 = schedule_at(sched_ptr, t)
        W, mW, vW = adam(W, dW, mW, vW, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps, DECOUPLED)
        b, mb, vb = adam(b, db, mb, vb, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps, DECOUPLED)
        W = tl.where(w_mask, W, 0.0)
        b = tl.where(f_ok, b, 0.0)

    store_with_moments(W_ptr, mW_ptr, vW_ptr, w_offs, w_mask, W, mW, vW)
    store_with_moments(b_ptr, mb_ptr, vb_ptr, k * n + f, f_ok, b, mb, vb)
    tl.store(loss_ptr + k, loss_acc)


def launch(head, tail, cfg, *, batch: int, relu: bool, decoupled: bool, precision: str) -> None:
    """Launch over all instances; head, tail: the kernel's leading and trailing arguments (kernels/train.py)."""
    K = head[0].shape[0]
    _train_gram_kernel[(K,)](
        *head, *tail, BB=cfg.BB, NP=cfg.NP, MP=cfg.MP, RELU=relu, DECOUPLED=decoupled,
        PRECISION="tf32" if precision == "tf32" else cfg.fp32_dot, num_warps=cfg.num_warps,
        enable_fp_fusion=FP_FUSION)
