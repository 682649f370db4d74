"""Fused training of small tied toy models, parameters and Adam state in registers.

One program trains P instances (P > 1 packs tiny models so a 2-feature model does not leave a
vector 94% empty) for ``n_steps`` steps in one launch. Per step and batch tile of BB rows:
sample x on chip (kernels/sampling.py), h = W x, z = W^T h + b, x' = act(z), loss, dz, and the
gradients accumulate in registers; after the whole batch the AdamW/Adam update is applied in
registers. Nothing that grows with the batch touches GPU memory. State is written back at the
end of the launch so the host can report progress, record history and checkpoint.

Shapes (P instances, BB rows, NP >= n and MP >= m, powers of two):
    W, dW, Adam moments  (P, MP, NP)      x, z, dz  (P, BB, NP)      h, dh  (P, BB, MP)
Products are broadcast-multiply-reduce over (P, BB, MP, NP): every FLOP is useful work
(10 B n m per instance-step), no Gram-matrix detour, no padding to tl.dot minimums.

No longer a default: small models train on kernels/train_lanes.py, larger ones on train_gram.py or
train_blocked.py. This layout is reached only by override (path="fused"), the baseline bench.tune
times lanes against (kernels/layout.py).
"""
import triton
import triton.language as tl

from .adam import adam
from .sampling import feature_tile, reciprocal
from .step_state import (FP_FUSION, load_with_moments, packed_offsets, record_loss, schedule_at,
                         store_with_moments)


@triton.jit
def _train_fused_kernel(
    W_ptr, b_ptr, mW_ptr, vW_ptr, mb_ptr, vb_ptr,
    p_ptr, imp_ptr, sched_ptr, loss_ptr, hist_ptr,
    K, n, m, batch, first_instance, step0, n_steps, window_start, hist_every,
    seed, wd, one_b1, beta2, one_b2, eps, inv_bn,
    P: tl.constexpr, BB: tl.constexpr, NP: tl.constexpr, MP: tl.constexpr,
    RELU: tl.constexpr, DECOUPLED: tl.constexpr,
):
    """Train instances [pid*P, pid*P + P) for steps [step0, step0 + n_steps).

    W_ptr, mW_ptr, vW_ptr: (K, m, n) float32, read and written in place.
    b_ptr, mb_ptr, vb_ptr: (K, n) float32, in place.     p_ptr, imp_ptr: (K, n) float32.
    sched_ptr: (total_steps, 3) float32 per 0-based step: 1 - lr*wd, lr / (1 - beta1^(t+1)),
        1 / sqrt(1 - beta2^(t+1)).
    loss_ptr: (K,) float32, accumulates the loss of steps >= window_start.
    hist_ptr: (ceil(total_steps / hist_every), K) float32, row t // hist_every gets the loss of
        step t when t % hist_every == 0 (hist_every = 0: none).
    inv_bn: 1 / (batch * n), the per-instance mean.
    """
    ip, ok_i, w_offs, w_mask, pf_offs, pf_mask = packed_offsets(K, n, m, tl.arange(0, NP), P, NP, MP)
    # Padding is exact zeros in W and b and zero importance, so padded lanes never contribute.
    W, mW, vW = load_with_moments(W_ptr, mW_ptr, vW_ptr, w_offs, w_mask)
    b, mb, vb = load_with_moments(b_ptr, mb_ptr, vb_ptr, pf_offs, pf_mask)
    prob = tl.load(p_ptr + pf_offs, mask=pf_mask, other=1.0)[:, None, :]
    inv_prob = reciprocal(prob)
    imp = tl.load(imp_ptr + pf_offs, mask=pf_mask, other=0.0)[:, None, :]
    loss_acc = tl.load(loss_ptr + ip, mask=ok_i, other=0.0)
    inst = (first_instance + ip).to(tl.uint32)
    n4 = (n + 3) // 4
    grad_scale = 2.0 * inv_bn

    for t in range(step0, step0 + n_steps):
        dW = tl.zeros((P, MP, NP), tl.float32)
        db = tl.zeros((P, NP), tl.float32)
        lsum = tl.zeros((P,), tl.float32)
        for r0 in range(0, batch, BB):
            rows = r0 + tl.arange(0, BB)
            valid = pf_mask[:, None, :] & (rows[None, :, None] < batch)
            x = feature_tile(seed, inst, t, r0, n4, 0, prob, inv_prob, valid, P, BB, NP)          # (P, BB, NP)
            h = tl.sum(x[:, :, None, :] * W[:, None, :, :], axis=3)                     # (P, BB, MP)
            z = tl.sum(h[:, :, :, None] * W[:, None, :, :], axis=2) + b[:, None, :]     # (P, BB, NP)
            if RELU:
                y = tl.maximum(z, 0.0)
            else:
                y = z
            d = tl.where(valid, y - x, 0.0)
            wdiff = imp * d
            lsum += tl.sum(tl.sum(wdiff * d, axis=2), axis=1)
            dz = wdiff * grad_scale
            if RELU:
                dz = tl.where(z > 0.0, dz, 0.0)
            db += tl.sum(dz, axis=1)
            dh = tl.sum(dz[:, :, None, :] * W[:, None, :, :], axis=3)                   # (P, BB, MP)
            dW += tl.sum(h[:, :, :, None] * dz[:, :, None, :] + dh[:, :, :, None] * x[:, :, None, :], axis=1)
        loss_t = lsum * inv_bn
        loss_acc = record_loss(loss_acc, loss_t, t, window_start, hist_every, hist_ptr, K, ip, ok_i)
        decay, step_size, inv_sqrt_bias2 = schedule_at(sched_ptr, t)
        W, mW, vW = adam(W, dW, mW, vW, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps, DECOUPLED)
        b, mb, vb = adam(b, db, mb, vb, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps, DECOUPLED)
        # Keep padded lanes exactly zero (AdamW decay keeps 0 at 0, but be explicit and cheap).
        W = tl.where(w_mask, W, 0.0)
        b = tl.where(pf_mask, b, 0.0)

    store_with_moments(W_ptr, mW_ptr, vW_ptr, w_offs, w_mask, W, mW, vW)
    store_with_moments(b_ptr, mb_ptr, vb_ptr, pf_offs, pf_mask, b, mb, vb)
    tl.store(loss_ptr + ip, loss_acc, mask=ok_i)


def launch(head, tail, cfg, *, batch: int, relu: bool, decoupled: bool, precision: str) -> None:
    """Launch over all instances; head, tail: the kernel's leading and trailing arguments (kernels/train.py)."""
    K = head[0].shape[0]
    _train_fused_kernel[(triton.cdiv(K, cfg.P),)](
        *head, *tail, P=cfg.P, BB=cfg.BB, NP=cfg.NP, MP=cfg.MP, RELU=relu, DECOUPLED=decoupled,
        num_warps=cfg.num_warps, enable_fp_fusion=FP_FUSION)
