"""Fused training of mid-size tied toy models (16 <= n <= 64) on tl.dot, in the Gram form.

The model sees W only through G = W^T W (n x n): x' = act(x G + b) with batch rows x. So per
step: G = W^T W once; per tile of BB rows, sample x on chip (kernels/sampling.py), z = x G + b,
loss, dz, and dG += x^T dz (two dots per tile instead of the two-sided form's five, and m is
never a tile dimension); after the batch, dW = W (dG + dG^T), db = sum of dz, and the AdamW/Adam
update, all in registers. Nothing that grows with the batch touches memory; no feature blocks,
no re-drawing, no gradient scratch (contrast kernels/train_blocked.py).

Measured by the design prototype on an H100 (shared/design.md): the Gram form took the basic
workload (n=20, m=5) from 2.73 to 1.86 ms/step at exact fp32. For n much larger than m it costs
n/m times the two-sided FLOPs, so it is used only while n <= 64 (kernels/layout.py).

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


@triton.jit
def _train_gram_kernel(
    W_ptr, b_ptr, mW_ptr, vW_ptr, mb_ptr, vb_ptr,
    p_ptr, imp_ptr, sched_ptr, loss_ptr, hist_ptr,
    K, n, m, batch, first_instance, step0, n_steps, window_start, hist_every,
    seed, wd, beta1, beta2, eps, inv_bn,
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
    W = tl.load(W_ptr + w_offs, mask=w_mask, other=0.0)
    mW = tl.load(mW_ptr + w_offs, mask=w_mask, other=0.0)
    vW = tl.load(vW_ptr + w_offs, mask=w_mask, other=0.0)
    b = tl.load(b_ptr + k * n + f, mask=f_ok, other=0.0)
    mb = tl.load(mb_ptr + k * n + f, mask=f_ok, other=0.0)
    vb = tl.load(vb_ptr + k * n + f, mask=f_ok, other=0.0)
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
        if t >= window_start:
            loss_acc += loss_t
        if hist_every > 0:
            if t % hist_every == 0:
                tl.store(hist_ptr + (t // hist_every) * K + k, loss_t)
        decay = tl.load(sched_ptr + 3 * t)
        step_size = tl.load(sched_ptr + 3 * t + 1)
        inv_sqrt_bias2 = tl.load(sched_ptr + 3 * t + 2)
        W, mW, vW = adam(W, dW, mW, vW, decay, step_size, inv_sqrt_bias2, wd, beta1, beta2, eps, DECOUPLED)
        b, mb, vb = adam(b, db, mb, vb, decay, step_size, inv_sqrt_bias2, wd, beta1, beta2, eps, DECOUPLED)
        W = tl.where(w_mask, W, 0.0)
        b = tl.where(f_ok, b, 0.0)

    tl.store(W_ptr + w_offs, W, mask=w_mask)
    tl.store(mW_ptr + w_offs, mW, mask=w_mask)
    tl.store(vW_ptr + w_offs, vW, mask=w_mask)
    tl.store(b_ptr + k * n + f, b, mask=f_ok)
    tl.store(mb_ptr + k * n + f, mb, mask=f_ok)
    tl.store(vb_ptr + k * n + f, vb, mask=f_ok)
    tl.store(loss_ptr + k, loss_acc)


def launch(state: dict, p, imp, sched, loss_acc, hist, cfg, *, batch: int, first_instance: int, step0: int,
           n_steps: int, window_start: int, hist_every: int, seed: int, weight_decay: float, beta1: float,
           beta2: float, eps: float, relu: bool, decoupled: bool, precision: str = "fp32") -> None:
    """Run steps [step0, step0 + n_steps) in place on ``state`` (see kernels/train.py)."""
    W = state["W"]
    K, m, n = W.shape
    _train_gram_kernel[(K,)](
        W, state["b"], state["mW"], state["vW"], state["mb"], state["vb"],
        p, imp, sched, loss_acc, hist,
        K, n, m, batch, first_instance, step0, n_steps, window_start, hist_every,
        seed, weight_decay, beta1, beta2, eps, 1.0 / (batch * n),
        BB=cfg.BB, NP=cfg.NP, MP=cfg.MP, RELU=relu, DECOUPLED=decoupled,
        PRECISION="tf32" if precision == "tf32" else cfg.fp32_dot, num_warps=cfg.num_warps)
