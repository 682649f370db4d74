"""Bookkeeping every training kernel shares: a parameter loaded and stored with its two Adam
moments, the per-step schedule scalars, and the loss window and history."""
import triton
import triton.language as tl

# Every training kernel is compiled with multiply-adds fused into FMA (half the FP instructions
# of the products), stated explicitly: triton 3.10 turns the default off.
FP_FUSION = True


@triton.jit
def load_with_moments(p_ptr, m_ptr, v_ptr, offs, mask):
    """A parameter tile and its Adam first and second moments (0 where masked)."""
    return (tl.load(p_ptr + offs, mask=mask, other=0.0), tl.load(m_ptr + offs, mask=mask, other=0.0),
            tl.load(v_ptr + offs, mask=mask, other=0.0))


@triton.jit
def store_with_moments(p_ptr, m_ptr, v_ptr, offs, mask, param, m1, m2):
    tl.store(p_ptr + offs, param, mask=mask)
    tl.store(m_ptr + offs, m1, mask=mask)
    tl.store(v_ptr + offs, m2, mask=mask)


@triton.jit
def schedule_at(sched_ptr, t):
    """Row t of engine/fused.schedule_table: (decay, step_size, inv_sqrt_bias2)."""
    return tl.load(sched_ptr + 3 * t), tl.load(sched_ptr + 3 * t + 1), tl.load(sched_ptr + 3 * t + 2)


@triton.jit
def record_loss(loss_acc, loss_t, t, window_start, hist_every, hist_ptr, K, idx, mask):
    """Step t's loss (per instance ``idx``): added to the window sum from ``window_start`` on, and
    written to history row t // hist_every when t is a multiple of hist_every (0: never)."""
    if t >= window_start:
        loss_acc += loss_t
    if hist_every > 0:
        if t % hist_every == 0:
            tl.store(hist_ptr + (t // hist_every) * K + idx, loss_t, mask=mask)
    return loss_acc


@triton.jit
def packed_offsets(K, n, m, f, P: tl.constexpr, NP: tl.constexpr, MP: tl.constexpr):
    """Program pid's P instances ip (P,) and their validity ok_i; offsets and masks of their W
    (P, MP, NP) in a (K, m, n) tensor and of their per-feature rows (P, NP) in a (K, n) tensor,
    with feature f[q] (NP,) at position q of the feature axis."""
    ip = tl.program_id(0).to(tl.int64) * P + tl.arange(0, P)
    j = tl.arange(0, MP)
    ok_i = ip < K
    w_offs = ip[:, None, None] * m * n + j[None, :, None] * n + f[None, None, :]
    w_mask = ok_i[:, None, None] & (j[None, :, None] < m) & (f[None, None, :] < n)
    pf_offs = ip[:, None] * n + f[None, :]
    pf_mask = ok_i[:, None] & (f[None, :] < n)
    return ip, ok_i, w_offs, w_mask, pf_offs, pf_mask
