"""The untied abs-computation model (#10): parameters W1, b1, W2, b2 by name through the whole
engine; the hand-written gradients equal float64 autograd; the torch backend trains it, resumes it
bit for bit and stores it; the fused backends refuse it up front."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine import DataSpec, ModelSpec, TrainSpec, backends, reference, rng, train
from engine.errors import UnsupportedShape

ABS = "abs-computation"


def test_param_shapes_name_every_trained_tensor():
    assert ModelSpec(7, 3, ABS).param_shapes() == {"W1": (3, 7), "b1": (3,), "W2": (7, 3), "b2": (7,)}
    assert ModelSpec(7, 3).param_shapes() == {"W": (3, 7), "b": (7,)} and ModelSpec(7, 3).param_count == 28
    tied = reference.init_params(ModelSpec(7, 3), 4, torch.arange(5))
    assert torch.equal(tied["W"], reference.init_weights(ModelSpec(7, 3), 4, torch.arange(5)))  # unchanged init


def test_untied_init_starts_every_output_side_alive():
    """W1 and W2 are Xavier draws 0 and 1 of the init stream; W2 is its absolute value times
    W2_INIT_SCALE (see init_params)."""
    P = reference.init_params(ModelSpec(30, 7, ABS), 3, torch.arange(4))
    std = (2.0 / 37) ** 0.5
    assert torch.equal(P["W1"], rng.normals(3, torch.arange(4), 7, 30, draw=0) * std)
    assert torch.equal(P["W2"], rng.normals(3, torch.arange(4), 30, 7, draw=1).abs() * (reference.W2_INIT_SCALE * std))
    assert (P["W2"] >= 0).all() and (P["W1"] < 0).any() and not P["b1"].any() and not P["b2"].any()


@pytest.mark.parametrize("K, n, m, B", [(2, 1, 1, 5), (3, 5, 2, 17), (2, 20, 7, 9)])
def test_gradients_equal_float64_autograd(K, n, m, B):
    g = torch.Generator().manual_seed(n * 100 + m)
    P = {k: torch.randn(K, *s, generator=g, dtype=torch.float64) * 0.5
         for k, s in ModelSpec(n, m, ABS).param_shapes().items()}
    u = torch.rand(K, B, n, generator=g, dtype=torch.float64)
    x = reference.features_from_uniform(u, torch.full((K, n), 0.6, dtype=torch.float64), signed=True)
    imp = torch.rand(K, n, generator=g, dtype=torch.float64) + 0.1
    loss, grads = reference.params_loss_and_grads(P, x, imp, ModelSpec(n, m, ABS))
    leaves = {k: v.clone().requires_grad_() for k, v in P.items()}
    h = torch.relu(x @ leaves["W1"].transpose(1, 2) + leaves["b1"][:, None])
    y = torch.relu(h @ leaves["W2"].transpose(1, 2) + leaves["b2"][:, None])
    ref = (imp[:, None] * (y - x.abs()) ** 2).mean(dim=(1, 2))
    ref.sum().backward()
    assert torch.allclose(loss, ref.detach(), rtol=1e-12)
    for k in P:
        assert torch.allclose(grads[k], leaves[k].grad, rtol=1e-10, atol=1e-13), k


def test_signed_inputs_are_uniform_on_minus_one_one_when_active():
    u = rng.uniforms(0, torch.arange(1), 0, 200_000, 3)
    x = reference.features_from_uniform(u, torch.tensor([[0.3, 0.3, 1.0]]), signed=True)[0]
    on = x != 0
    assert abs(on[:, 0].float().mean() - 0.3) < 0.005 and on[:, 2].all()
    v = x[on[:, 0], 0]
    assert v.min() >= -1 and v.max() < 1 and abs(v.mean()) < 0.01 and abs(v.var() - 1 / 3) < 0.01


def test_the_torch_backend_learns_abs_and_triton_refuses_it():
    model = ModelSpec(3, 6, ABS)
    data = DataSpec(np.full((3, 3), 1.0), 1.0)
    res = train(model, data, TrainSpec(steps=2000, batch_size=256, lr=1e-2), backend="torch", progress=False)
    assert set(res.params) == {"W1", "b1", "W2", "b2"} and res.W is None
    assert float(res.loss.max()) < 0.1 * (1 / 3)  # E[|x|^2] = 1/3 for the zero model
    with pytest.raises(UnsupportedShape, match="does not train 'abs-computation'"):
        backends.check_supported("triton", model, TrainSpec())


def test_the_runner_stores_and_resumes_untied_parameters(tmp_path, monkeypatch):
    """A tiny experiment of abs-computation models through the runner: chunk files carry W1..b2,
    an interrupted chunk resumes from its checkpoint bit for bit."""
    from engine.experiments import runner
    from engine.experiments.base import CommonSpec, Experiment, Job

    class Tiny(Experiment):
        name = "tiny-abs"
        spec_cls = CommonSpec

        def jobs(self, spec):
            return [Job("models", ModelSpec(4, 3, ABS), DataSpec(np.full((4, 4), 0.5), 1.0), spec.train_spec())]

        def analyse(self, spec, results, run_dir):
            res = results["models"]
            return {"shapes": {k: list(v.shape) for k, v in res.params.items()}, "diverged": int(res.diverged.sum()),
                    "checks": []}

    spec = CommonSpec(steps=300, batch_size=16, lr=1e-2, backend="torch", chunk_size=2)
    whole = runner.run(Tiny(), spec, tmp_path / "whole", progress=False, log=lambda m: None)
    assert whole["shapes"] == {"W1": [4, 3, 4], "b1": [4, 3], "W2": [4, 4, 3], "b2": [4, 4]}
    calls = []
    real = reference.params_train_step

    def dies(*a, **k):
        calls.append(1)
        if len(calls) == 450:  # second chunk, step 150
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(reference, "params_train_step", dies)
    with pytest.raises(KeyboardInterrupt):
        runner.run(Tiny(), spec, tmp_path / "cut", progress=False, log=lambda m: None, checkpoint_every_s=0)
    monkeypatch.setattr(reference, "params_train_step", real)
    resumed = runner.run(Tiny(), spec, tmp_path / "cut", progress=False, log=lambda m: None)
    assert 0 < resumed["instance_steps_trained"] < 4 * 300
    for chunk in ("models_000000000-000000002.safetensors", "models_000000002-000000004.safetensors"):
        a, b = (load_file(str(tmp_path / d / "chunks" / chunk)) for d in ("whole", "cut"))
        assert set(a) == {"W1", "b1", "W2", "b2", "loss"} and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "cut/spec.json").read_text())["plan"]["backend"] == "torch"


numba = pytest.importorskip("numba")


@pytest.mark.parametrize("n, m", [(1, 1), (3, 2), (20, 7), (33, 5), (101, 23)])
@pytest.mark.parametrize("optimizer, schedule", [("adamw", "constant"), ("adam", "cosine")])
def test_cpu_one_step_matches_float64_on_the_exact_batch(n, m, optimizer, schedule):
    """The fused untied kernel against the float64 reference on the batch the rule draws. n=101, m=23 is
    past ROWWISE_BYTES (the gradients summed row by row), over three blocks of rows, the last one partial."""
    from engine import cpu_backend, fused
    from kernels import cpu_train, cpu_train_untied
    K, B, seed = 3, (300 if n * m > 2048 else 37), 6
    assert cpu_train.uses_rowwise(n, m, cpu_train_untied.lanes_for(n, m)) == (n * m > 2048)
    model = ModelSpec(n, m, ABS)
    tr = TrainSpec(steps=3, batch_size=B, lr=1e-2, optimizer=optimizer, schedule=schedule, weight_decay=0.05,
                   seed=seed)
    g = torch.Generator().manual_seed(n + 10 * m)
    p = (torch.rand(K, n, generator=g) * 0.8 + 0.1).float()
    imp = (torch.rand(K, n, generator=g) + 0.2).float()
    state = fused.new_state(model, tr, 2, K)
    # W2 back to full Xavier scale: with the small initial W2 some dW1 entries sit below Adam's eps,
    # where the first step lr * g / (|g| + eps) turns float32 rounding of g into ~1e-5 of a step.
    state["W2"] /= reference.W2_INIT_SCALE
    before = {k: v.double().clone() for k, v in state.items()}
    hist = torch.zeros(1, K)
    cpu_backend.run_steps(model, tr, state, p, imp, 2, 0, 1, torch.zeros(K), hist, 1)
    u = rng.uniforms(seed, torch.arange(2, 2 + K), 0, B, n)
    x = reference.features_from_uniform(u, p, signed=True).double()
    loss, grads = reference.params_loss_and_grads({k: before[k] for k in ("W1", "b1", "W2", "b2")}, x,
                                                  imp.double(), model)
    assert torch.allclose(hist[0].double(), loss, rtol=1e-5)
    for k, dk in grads.items():
        if optimizer == "adam":
            dk = dk + tr.weight_decay * before[k]
        got = state["m" + k].double() / (1 - tr.beta1)
        assert torch.allclose(got, dk, rtol=1e-4, atol=1e-7), k
    P = {k: before[k].clone() for k in ("W1", "b1", "W2", "b2")}
    states = {k: reference.AdamState(before["m" + k].clone(), before["v" + k].clone()) for k in P}
    reference.params_train_step(P, x, imp.double(), model, states, 1, tr.lr_at(0), tr)
    for k in P:
        assert torch.allclose(state[k].double(), P[k], rtol=1e-5, atol=1e-6), k


def test_cpu_and_torch_train_abs_on_the_same_finite_dataset_and_cpu_is_deterministic():
    model = ModelSpec(5, 4, ABS)
    data = DataSpec(np.full((3, 5), 0.4), 1.0, examples=40)
    # 100 steps: two float32 summation orders drift apart chaotically; by 200 steps one W1 entry
    # (from the small-W2 start) differs by 4e-4, while at 100 every entry agrees to 6e-6.
    tr = TrainSpec(steps=100, batch_size=40, lr=1e-2, seed=1)
    a = train(model, data, tr, backend="torch", progress=False)
    c = train(model, data, tr, backend="cpu", progress=False)
    for k in a.params:
        assert torch.allclose(a.params[k], c.params[k], rtol=1e-3, atol=1e-4), k
    c2 = train(model, data, tr, backend="cpu", progress=False, threads=1, chunk_size=1)
    assert all(torch.equal(c.params[k], c2.params[k]) for k in c.params)
