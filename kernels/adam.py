"""The Adam/AdamW update as a Triton device function, shared by every training kernel."""
import triton
import triton.language as tl


@triton.jit
def adam(param, grad, m1, m2, decay, step_size, inv_sqrt_bias2, wd, beta1, beta2, eps, DECOUPLED: tl.constexpr):
    """torch.optim's formula, with the per-step scalars precomputed on the host (see
    engine/triton_backend.schedule_table): decay = 1 - lr*wd (AdamW), step_size = lr / (1 - beta1^t),
    inv_sqrt_bias2 = 1 / sqrt(1 - beta2^t). Adam (DECOUPLED false) adds wd * param to the gradient."""
    if DECOUPLED:
        param = param * decay
    else:
        grad = grad + wd * param
    m1 = m1 + (1.0 - beta1) * (grad - m1)
    m2 = beta2 * m2 + (1.0 - beta2) * grad * grad
    denom = tl.sqrt_rn(m2) * inv_sqrt_bias2 + eps
    param = param - step_size * (m1 / denom)
    return param, m1, m2
