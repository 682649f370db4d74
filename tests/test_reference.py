"""engine/reference.py against float64 autograd and torch.optim (the oracle's own oracle)."""
import math

import pytest
import torch

from engine import ModelSpec, TrainSpec, reference


def _problem(K, n, m, B, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(K, m, n, generator=g, dtype=dtype) * 0.7
    b = torch.randn(K, n, generator=g, dtype=dtype) * 0.1
    p = torch.rand(K, n, generator=g, dtype=dtype) * 0.9 + 0.05
    x = reference.sample_batch(p, B, g)
    imp = torch.rand(K, n, generator=g, dtype=dtype) + 0.1
    return W, b, x, imp


@pytest.mark.parametrize("variant", ["relu-output", "linear", "relu-hidden"])
@pytest.mark.parametrize("K, n, m, B", [(3, 1, 1, 7), (2, 2, 1, 16), (4, 3, 2, 9), (2, 20, 5, 33), (1, 33, 7, 5)])
def test_gradients_equal_float64_autograd(variant, K, n, m, B):
    W, b, x, imp = _problem(K, n, m, B, seed=n * 10 + m)
    loss, dW, db = reference.loss_and_grads(W, b, x, imp, variant)
    Wa, ba = W.clone().requires_grad_(), b.clone().requires_grad_()
    la = reference.instance_loss(Wa, ba, x, imp, variant)
    la.sum().backward()
    assert torch.allclose(loss, la.detach(), rtol=1e-12, atol=0)
    assert torch.allclose(dW, Wa.grad, rtol=1e-10, atol=1e-14)
    assert torch.allclose(db, ba.grad, rtol=1e-10, atol=1e-14)


def test_loss_is_importance_weighted_mean_per_instance():
    W, b, x, imp = _problem(2, 3, 2, 4)
    out = reference.forward(W, b, x, "relu-output")
    expected = torch.stack([(imp[k] * (x[k] - out[k]) ** 2).mean() for k in range(2)])
    assert torch.allclose(reference.instance_loss(W, b, x, imp, "relu-output"), expected)
    # relu-output: x' = ReLU(W^T W x + b), computed per instance by hand.
    k, r = 1, 2
    manual = torch.relu(W[k].T @ (W[k] @ x[k, r]) + b[k])
    assert torch.allclose(out[k, r], manual)


@pytest.mark.parametrize("optimizer, wd", [("adamw", 0.01), ("adam", 0.0), ("adam", 0.05)])
def test_adam_update_matches_torch_optim(optimizer, wd):
    train = TrainSpec(optimizer=optimizer, weight_decay=wd, lr=3e-3)
    g = torch.Generator().manual_seed(1)
    p = torch.randn(5, 4, 3, generator=g, dtype=torch.float64)
    ours = p.clone()
    theirs = p.clone().requires_grad_()
    cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = cls([theirs], lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps, weight_decay=wd)
    state = reference.AdamState(torch.zeros_like(p), torch.zeros_like(p))
    for step in range(1, 6):
        grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
        reference.adam_update(ours, grad, state, step, train.lr, train)
        theirs.grad = grad.clone()
        opt.step()
    assert torch.allclose(ours, theirs.detach(), rtol=1e-12, atol=1e-14)


def test_sampling_rule_statistics():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.05, 0.3, 1.0]] * 8)
    x = reference.sample_batch(p, 20000, g)
    active = x > 0
    N = active.shape[0] * active.shape[1]
    for i, pi in enumerate(p[0].tolist()):
        frac = active[:, :, i].float().mean().item()
        assert abs(frac - pi) < 5 * math.sqrt(pi * (1 - pi) / N) + 1e-9
        vals = x[:, :, i][active[:, :, i]]
        assert abs(vals.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / vals.numel())
        assert vals.max().item() <= 1.0


def test_init_is_per_instance_xavier_and_chunk_independent():
    model = ModelSpec(400, 30)
    W = reference.init_weights(model, seed=3, instances=torch.arange(20))
    assert W.shape == (20, 30, 400)
    assert W.std().item() == pytest.approx(math.sqrt(2 / 430), rel=0.02)
    assert torch.equal(W[7:9], reference.init_weights(model, 3, torch.arange(7, 9)))
