"""The Adam/AdamW update as a Triton device function, shared by every training kernel."""
import triton
import triton.language as tl


@triton.jit
def adam(param, grad, m1, m2, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps,
         DECOUPLED: tl.constexpr):
    """torch.optim's formula, with the per-step scalars precomputed on the host (see
    engine/fused.schedule_table): decay = 1 - lr*wd (AdamW), step_size = lr / (1 - beta1^t),
    inv_sqrt_bias2 = 1 / sqrt(1 - beta2^t). Adam (DECOUPLED false) adds wd * param to the gradient.
    one_b1 = 1 - beta1 and one_b2 = 1 - beta2 come from the host, computed in float64 and rounded
    once (as torch's scalar operands are): 1 - float32(0.999) in-kernel is 1.3e-5 off 0.001, which
    compiled kernels showed as a 1.3e-5 error in the second moment (the interpreter had hidden it)."""
    if DECOUPLED:
        param = param * decay
    else:
        grad = grad + wd * param
    m1 = m1 + one_b1 * (grad - m1)
    m2 = beta2 * m2 + one_b2 * grad * grad
    denom = tl.sqrt_rn(m2) * inv_sqrt_bias2 + eps
    param = param - step_size * (m1 / denom)
    return param, m1, m2


@triton.jit
def adam_in_memory(p_ptr, g_ptr, m_ptr, v_ptr, offs, mask, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2,
                   eps, DECOUPLED: tl.constexpr):
    """``adam`` on a block of parameters kept in memory (at p_ptr + offs), with their gradient,
    first and second moments beside them; zeroes the gradient scratch it consumed."""
    param, m1, m2 = adam(tl.load(p_ptr + offs, mask=mask, other=0.0), tl.load(g_ptr + offs, mask=mask, other=0.0),
                         tl.load(m_ptr + offs, mask=mask, other=0.0), tl.load(v_ptr + offs, mask=mask, other=0.0),
                         decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps, DECOUPLED)
    tl.store(p_ptr + offs, param, mask=mask)
    tl.store(m_ptr + offs, m1, mask=mask)
    tl.store(v_ptr + offs, m2, mask=mask)
    tl.store(g_ptr + offs, tl.zeros_like(param), mask=mask)
