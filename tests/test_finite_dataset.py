"""Finite datasets (#10, DataSpec.examples): every step trains on the same T examples, drawn once
from the Philox dataset stream by the one sampling rule; cpu and torch train on identical data."""
import numpy as np
import pytest
import torch

from engine import DataSpec, ModelSpec, TrainSpec, reference, rng, train
from engine.errors import SpecError


def dataset(seed, K, T, p, sets=()):
    return reference.features_from_uniform(rng.dataset_uniforms(seed, torch.arange(K), T, p.shape[1]), p, sets)


def test_the_batch_must_be_the_whole_dataset():
    data = DataSpec(np.full((2, 5), 0.1), examples=30)
    with pytest.raises(SpecError, match="batch_size: must be equal to the finite dataset's 30 examples"):
        train(ModelSpec(5, 2), data, TrainSpec(steps=5, batch_size=64), backend="torch", progress=False)
    with pytest.raises(SpecError, match="examples"):
        DataSpec(np.full((2, 5), 0.1), examples=-1)


@pytest.mark.parametrize("variant", ["relu-output", "relu-hidden"])
def test_torch_backend_trains_on_the_dataset_exactly(variant):
    """Three torch-backend steps == three float64 reference steps on the same dataset batch."""
    K, n, m, T = 3, 7, 2, 19
    model, tr = ModelSpec(n, m, variant), TrainSpec(steps=3, batch_size=T, lr=1e-2, seed=5)
    p = torch.full((K, n), 0.3)
    data = DataSpec(p.numpy(), examples=T)
    res = train(model, data, tr, backend="torch", progress=False)
    x = dataset(tr.seed, K, T, p).double()
    W = reference.init_weights(model, tr.seed, torch.arange(K)).double()
    b = torch.zeros(K, n, dtype=torch.float64)
    states = [reference.AdamState(torch.zeros_like(W), torch.zeros_like(W)),
              reference.AdamState(torch.zeros_like(b), torch.zeros_like(b))]
    for t in range(3):
        reference.train_step(W, b, x, torch.ones(K, n, dtype=torch.float64), variant, states, t + 1, tr.lr_at(t), tr)
    assert torch.allclose(res.W.double(), W, rtol=1e-4, atol=1e-6)


def test_cpu_and_torch_train_on_the_same_finite_dataset():
    pytest.importorskip("numba")
    K, n, m, T = 4, 30, 2, 50
    sets = (("correlated", 0, 2),)
    data = DataSpec(np.full((K, n), 0.05), examples=T, sets=sets)
    tr = TrainSpec(steps=300, batch_size=T, lr=1e-2, seed=2)
    a = train(ModelSpec(n, m), data, tr, backend="torch", progress=False)
    c = train(ModelSpec(n, m), data, tr, backend="cpu", progress=False)
    # Same data and init: the two agree to float32 rounding (not bit for bit: different arithmetic order).
    assert torch.allclose(a.W, c.W, rtol=1e-3, atol=1e-4) and torch.allclose(a.loss, c.loss, rtol=1e-3)


def test_one_cpu_step_on_the_dataset_matches_float64():
    pytest.importorskip("numba")
    from engine import cpu_backend, fused
    K, n, m, T = 2, 9, 3, 23
    model, tr = ModelSpec(n, m), TrainSpec(steps=2, batch_size=T, lr=1e-2, seed=8)
    p = torch.full((K, n), 0.4)
    state = fused.new_state(model, tr, 0, K)
    hist = torch.zeros(2, K)
    cpu_backend.run_steps(model, tr, state, p, torch.ones(K, n), 0, 0, 1, torch.zeros(K), hist, 1, examples=T)
    before = {k: v.double().clone() for k, v in state.items()}
    cpu_backend.run_steps(model, tr, state, p, torch.ones(K, n), 0, 1, 1, torch.zeros(K), hist, 1, examples=T)
    x = dataset(tr.seed, K, T, p).double()  # step 1 trains on the same data as step 0
    loss, dW, db = reference.loss_and_grads(before["W"], before["b"], x, torch.ones(K, n, dtype=torch.float64),
                                            "relu-output")
    assert torch.allclose(hist[1].double(), loss, rtol=1e-5)
    g = (state["mW"].double() - tr.beta1 * before["mW"]) / (1 - tr.beta1)
    assert torch.allclose(g, dW, rtol=1e-4, atol=1e-7)
