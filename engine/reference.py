"""THE plain-PyTorch implementation of the toy models (Anthropic notebook semantics).

It is three things at once: the math of the ``torch`` backend (engine/torch_backend.py runs its
training loop), the oracle every kernel is tested against (call it with float64 tensors), and
the eager baseline of the benchmarks. Nobody copies it; tests and bench import it.

Shapes: K instances, B batch rows, n features, m hidden.
    W (K, m, n)   column i of W[k] embeds feature i (the paper's orientation)
    b (K, n)      output bias
    x (K, B, n)   a batch of sparse features
    p, I (K, n)   feature probability and importance
Loss of instance k: mean over batch and features of I_i (x_i - x'_i)^2; instances are summed, so
each trains independently. Gradients are written out by hand (checked against autograd in
tests/test_reference.py): this is both faster than autograd on CPU and the formula the kernels use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import rng
from .spec import ModelSpec, TrainSpec


def init_weights(model: ModelSpec, seed: int, instances: torch.Tensor) -> torch.Tensor:
    """Per-instance Xavier-normal W (K, m, n), std sqrt(2 / (n + m)), for the given global ids (K,).

    Deliberately per instance (not the notebook's xavier_normal_ on the 3-D tensor, whose std
    shrinks as more instances are trained together). Drawn from the Philox init stream, so an
    instance's start does not depend on backend or chunking.
    """
    std = math.sqrt(2.0 / (model.n_features + model.n_hidden))
    return rng.normals(seed, instances, model.n_hidden, model.n_features) * std


def features_from_uniform(u: torch.Tensor, p: torch.Tensor, sets=(), signed: bool = False) -> torch.Tensor:
    """The sampling rule shared by every backend: active iff u < p, then value u * (1 / p).

    u: (K, B, n) uniforms in [0, 1); p: (K, n). Given active, u / p is uniform on [0, 1); it is
    computed as u times the rounded reciprocal of p (in u's dtype), which the GPU kernels
    reproduce bit for bit with one multiply instead of a division per draw (the value can round
    up to exactly 1.0, with probability about 2^-24 per active draw).

    sets (DataSpec.sets), from the same uniforms, no extra draws; a = the set's first member:
    correlated: the set is active iff u_a < p_a; x_a = u_a / p_a as above, every other member
        x_f = u_f (uniform on [0, 1) and independent of u_a) when active, else 0.
    anticorrelated: active iff u_a < p_a; then member a + j with j = min(floor(u_a * (1 / p_a) * size),
        size - 1) (uniform given active) takes the value u_{a+1} (independent of u_a), the rest 0.
    The CPU kernel (kernels/cpu_train.py, _apply_sets) mirrors this bit for bit.
    signed (the abs-computation model's inputs): an active value v in [0, 1) becomes 2 v - 1, uniform
    on [-1, 1); inactive features stay 0.
    """
    pb = p[:, None, :]
    inv = 1.0 / pb
    zero = torch.zeros((), dtype=u.dtype, device=u.device)
    x = torch.where(u < pb, u * inv, zero)
    for kind, a, size in sets:
        u0, on = u[..., a], u[..., a] < pb[..., a]
        if kind == "correlated":
            x[..., a + 1:a + size] = torch.where(on[..., None], u[..., a + 1:a + size], zero)
        else:
            j = torch.clamp(torch.floor(u0 * inv[..., a] * size), max=size - 1).long()
            members = torch.arange(size, device=u.device)
            x[..., a:a + size] = torch.where(on[..., None] & (j[..., None] == members), u[..., a + 1:a + 2], zero)
    return signed_values(x) if signed else x


def signed_values(x: torch.Tensor) -> torch.Tensor:
    """The abs-computation inputs from features x in [0, 1): an active value v becomes 2 v - 1, uniform
    on [-1, 1); inactive features (0) stay 0."""
    return torch.where(x != 0, 2.0 * x - 1.0, torch.zeros((), dtype=x.dtype, device=x.device))


def sample_batch(p: torch.Tensor, batch_size: int, generator: torch.Generator, sets=(),
                 signed: bool = False) -> torch.Tensor:
    """A fresh batch x (K, B, n) from torch's generator (the torch backend's data stream)."""
    K, n = p.shape
    u = torch.rand(K, batch_size, n, generator=generator, device=p.device, dtype=p.dtype)
    return features_from_uniform(u, p, sets, signed)


def forward(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor, variant: str) -> torch.Tensor:
    """x' (K, B, n) = act(W^T h + b) with h = W x (relu-hidden: h = ReLU(W x)), as the notebook
    computes it: h first, then W^T h. act = ReLU except for the linear variant."""
    h = torch.bmm(x, W.transpose(1, 2))
    if variant == "relu-hidden":
        h = torch.relu(h)
    z = torch.baddbmm(b[:, None, :], h, W)
    return z if variant == "linear" else torch.relu(z)


def instance_loss(W, b, x, importance, variant: str) -> torch.Tensor:
    """Loss per instance (K,): mean over batch and features of I_i (x_i - x'_i)^2."""
    d = forward(W, b, x, variant) - x
    return (importance[:, None, :] * d * d).mean(dim=(1, 2))


def loss_and_grads(W, b, x, importance, variant: str):
    """Per-instance loss (K,) and the gradients dW (K, m, n), db (K, n) of sum_k loss_k.

    With H = x W^T (relu-hidden: H = ReLU(x W^T)) and Z = H W + b:
    dZ = 2 I (act(Z) - x) act'(Z) / (B n),  db = sum_B dZ,  dH = dZ W^T (relu-hidden: times
    [x W^T > 0]),  dW = H^T dZ + dH^T x.  ReLU'(0) is taken as 0, as autograd does.
    """
    B, n = x.shape[1], x.shape[2]
    h = torch.bmm(x, W.transpose(1, 2))
    if variant == "relu-hidden":
        h = torch.relu(h)
    z = torch.baddbmm(b[:, None, :], h, W)
    y = z if variant == "linear" else torch.relu(z)
    d = y - x
    wd = importance[:, None, :] * d
    loss = (wd * d).mean(dim=(1, 2))
    dz = wd * (2.0 / (B * n))
    if variant != "linear":
        dz = dz * (z > 0)
    db = dz.sum(dim=1)
    dh = torch.bmm(dz, W.transpose(1, 2))
    if variant == "relu-hidden":
        dh = dh * (h > 0)  # h = ReLU(pre) > 0 exactly where pre > 0
    dW = torch.bmm(h.transpose(1, 2), dz) + torch.bmm(dh.transpose(1, 2), x)
    return loss, dW, db


@dataclass
class AdamState:
    """First and second moments for one parameter tensor, plus the shared step count."""

    m: torch.Tensor
    v: torch.Tensor


def adam_update(param, grad, state: AdamState, step: int, lr: float, train: TrainSpec) -> None:
    """One Adam/AdamW update in place, identical to torch.optim.AdamW / Adam (step is 1-based).

    AdamW decays the parameter by lr*wd before the update (weight decay applies to b too, as in
    the notebook); Adam adds wd*param to the gradient.
    """
    if train.optimizer == "adamw":
        param.mul_(1.0 - lr * train.weight_decay)
    elif train.weight_decay:
        grad = grad + train.weight_decay * param
    state.m.lerp_(grad, 1.0 - train.beta1)
    state.v.mul_(train.beta2).addcmul_(grad, grad, value=1.0 - train.beta2)
    # step and lr may be 0-d tensors (so torch.compile does not recompile every step).
    bias1 = 1.0 - train.beta1**step
    bias2 = 1.0 - train.beta2**step
    denom = (state.v.sqrt() / bias2**0.5).add_(train.eps)
    param.sub_(state.m / denom * (lr / bias1))


def train_step(W, b, x, importance, variant, states, step, lr, train: TrainSpec):
    """One training step on a given batch x (K, B, n): returns the loss (K,) before the update;
    W, b and the two AdamStates (for W, for b) are updated in place. step is 1-based."""
    loss, dW, db = loss_and_grads(W, b, x, importance, variant)
    adam_update(W, dW, states[0], step, lr, train)
    adam_update(b, db, states[1], step, lr, train)
    return loss


W2_INIT_SCALE = 0.1  # abs-computation's W2 starts at this fraction of its Xavier draw (init_params says why)


# --- Every variant through one parameter dict (ModelSpec.param_shapes) -------------------------------

def init_params(model: ModelSpec, seed: int, instances: torch.Tensor) -> dict:
    """Initial parameters {name: (K, *shape)} float32: per-instance Xavier-normal weights from the
    Philox init stream (tied: init_weights; abs-computation: W1 draw 0, W2 draw 1, std sqrt(2/(n+m))
    both), zero biases.

    abs-computation starts with W2 = |W2|. Why: the target |x| is never negative and y = ReLU(z), so
    an output side (x_i > 0 or x_i < 0) whose pre-activation z_i starts negative passes no gradient to
    anything and never learns. With signed W2 about half of all sides start dead, and trained models
    compute one sign (ReLU(x_i) or ReLU(-x_i)) of most features: at density 0.1 the loss was 18.5x
    higher (n=100, m=40, 10,000 steps). Non-negative W2 starts every side alive; it may turn negative
    (inhibition) as it trains.

    W2 also starts small (W2_INIT_SCALE = 0.1 times the Xavier draw). Why: when any neuron fires, every
    output with W2 >= 0 fires spuriously, and the gradient that pushes it back down (proportional to W2
    squared) outweighs the pull towards |x_i| (proportional to W2) for all but the most important
    features. At full scale that kills the output sides of features ~20-70 within the first 1,000
    steps (density 0.01: 64 of 200 sides alive after 10,000 steps, 10 features computed; at 0.1 scale
    165 alive, 24 computed). Measured on the kept model of 4 fits, 5,000 steps, float64 test loss,
    full scale -> 0.1: density 0.03 2.32e-5 -> 9.3e-6, 0.01 1.08e-5 -> 2.22e-6, 0.003 2.03e-6 ->
    6.2e-7 (2.5-4.9x lower); 1.0 and 0.3 the same within noise (2.3e-4, 1.2e-4); 0.1 3.2e-5 -> 4.9e-5
    (1.55x higher) and 0.001 1.0e-6 -> 2.2e-6 (2.1x higher; 5,000 steps leave 0.001 under-trained,
    its fits spread 2-5x either way)."""
    K = len(instances)
    if model.tied:
        return {"W": init_weights(model, seed, instances), "b": torch.zeros(K, model.n_features)}
    n, m = model.n_features, model.n_hidden
    std = math.sqrt(2.0 / (n + m))
    return {"W1": rng.normals(seed, instances, m, n, draw=0) * std, "b1": torch.zeros(K, m),
            "W2": rng.normals(seed, instances, n, m, draw=1).abs() * (W2_INIT_SCALE * std), "b2": torch.zeros(K, n)}


def untied_loss_and_grads(P: dict, x: torch.Tensor, importance: torch.Tensor):
    """abs-computation: loss (K,) and gradients {name: like P} of sum_k loss_k, hand-written.

    h = ReLU(x W1^T + b1) (K, B, m), z = h W2^T + b2, y = ReLU(z) (K, B, n), target |x|;
    dZ = 2 I (y - |x|) [z > 0] / (B n), db2 = sum_B dZ, dW2 = dZ^T h, dH = dZ W2 [pre > 0],
    db1 = sum_B dH, dW1 = dH^T x.
    """
    B, n = x.shape[1], x.shape[2]
    pre = torch.baddbmm(P["b1"][:, None, :], x, P["W1"].transpose(1, 2))
    h = torch.relu(pre)
    z = torch.baddbmm(P["b2"][:, None, :], h, P["W2"].transpose(1, 2))
    d = torch.relu(z) - x.abs()
    wd = importance[:, None, :] * d
    loss = (wd * d).mean(dim=(1, 2))
    dz = wd * (2.0 / (B * n)) * (z > 0)
    dh = torch.bmm(dz, P["W2"]) * (pre > 0)
    return loss, {"W1": torch.bmm(dh.transpose(1, 2), x), "b1": dh.sum(dim=1),
                  "W2": torch.bmm(dz.transpose(1, 2), h), "b2": dz.sum(dim=1)}


def params_loss_and_grads(P: dict, x: torch.Tensor, importance: torch.Tensor, model: ModelSpec):
    """Loss (K,) and gradients {name: like P} of any variant."""
    if model.tied:
        loss, dW, db = loss_and_grads(P["W"], P["b"], x, importance, model.variant)
        return loss, {"W": dW, "b": db}
    return untied_loss_and_grads(P, x, importance)


def params_instance_loss(P: dict, x: torch.Tensor, importance: torch.Tensor, model: ModelSpec) -> torch.Tensor:
    """Loss per instance (K,) of any variant (for evaluation on held-out data)."""
    if model.tied:
        return instance_loss(P["W"], P["b"], x, importance, model.variant)
    return untied_loss_and_grads(P, x, importance)[0]


def params_train_step(P: dict, x, importance, model: ModelSpec, states: dict, step, lr, train: TrainSpec):
    """One step on batch x of any variant: returns the loss (K,) before the update; P and
    ``states`` ({name: AdamState}) are updated in place. step is 1-based."""
    loss, grads = params_loss_and_grads(P, x, importance, model)
    for name, g in grads.items():
        adam_update(P[name], g, states[name], step, lr, train)
    return loss
