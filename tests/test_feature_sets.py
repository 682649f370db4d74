"""Correlated and anticorrelated feature sets (#10): the one sampling rule
(engine.reference.features_from_uniform), its statistics, and the CPU kernel's bit-exact mirror."""
import numpy as np
import pytest
import torch

from engine import DataSpec, ModelSpec, TrainSpec, reference, rng
from engine.errors import SpecError

SETS = (("correlated", 0, 2), ("anticorrelated", 2, 3), ("correlated", 6, 3))


def draw(p, sets, rows=200_000, seed=1):
    u = rng.uniforms(seed, torch.arange(1), 0, rows, p.shape[1])
    return reference.features_from_uniform(u, p, sets)[0]


def test_statistics_of_each_rule():
    p = torch.tensor([[0.3, 0.3, 0.45, 0.45, 0.45, 0.2, 0.1, 0.1, 0.1]])
    x = draw(p, SETS)
    on = x != 0
    rates = on.float().mean(0)
    # correlated: every member active at the set's rate, all together
    assert torch.allclose(rates[[0, 1]], torch.tensor(0.3), atol=0.005)
    assert torch.equal(on[:, 0], on[:, 1]) and torch.equal(on[:, 6], on[:, 7]) and torch.equal(on[:, 6], on[:, 8])
    # anticorrelated: at most one member, exactly one with probability p, each member p / size
    count = on[:, 2:5].sum(1)
    assert count.max() == 1 and abs(count.float().mean() - 0.45) < 0.005
    assert torch.allclose(rates[2:5], torch.tensor(0.15), atol=0.004)
    # independent features keep their own rate; active values are uniform on [0, 1) everywhere
    assert abs(rates[5] - 0.2) < 0.004
    for f in range(9):
        v = x[on[:, f], f]
        assert abs(v.mean() - 0.5) < 0.01 and abs(v.var() - 1 / 12) < 0.005, f
    # values inside a correlated set are independent of each other
    both = on[:, 0]
    c = np.corrcoef(x[both, 0].numpy(), x[both, 1].numpy())[0, 1]
    assert abs(c) < 0.02


def test_sets_are_validated():
    p = np.full((2, 6), 0.1)
    with pytest.raises(SpecError, match="sets: must be disjoint"):
        DataSpec(p, sets=(("correlated", 0, 3), ("correlated", 2, 2)))
    with pytest.raises(SpecError, match="sets: must be one of"):
        DataSpec(p, sets=(("together", 0, 2),))
    with pytest.raises(SpecError, match=r"size an integer in \[2, 6\] for this anticorrelated set from feature 0 "
                                        r"of n = 6 \(got \('anticorrelated', 0, 1\)\)"):
        DataSpec(p, sets=(("anticorrelated", 0, 1),))
    with pytest.raises(SpecError, match=r"size an integer in \[1, 1\] for this correlated set from feature 5"):
        DataSpec(p, sets=(("correlated", 5, 2),))  # names the set and what its size may be
    with pytest.raises(SpecError, match=r"first an integer in \[0, 5\] for a correlated set"):
        DataSpec(p, sets=(("correlated", 6, 1),))
    with pytest.raises(SpecError, match=r"first an integer in \[0, 4\] for an anticorrelated set"):
        DataSpec(p, sets=(("anticorrelated", 5, 2),))  # the last feature cannot start two members
    q = p.copy()
    q[1, 1] = 0.2
    with pytest.raises(SpecError, match="share one feature probability"):
        DataSpec(q, sets=(("correlated", 0, 2),))
    assert DataSpec(p, sets=[["correlated", 4, 2]]).sets == (("correlated", 4, 2),)


numba = pytest.importorskip("numba")
from kernels import cpu_rng, cpu_train  # noqa: E402


@numba.njit
def _kernel_draws(p, sets, batch, step, inst, k0, k1, lanes):
    """The CPU training loop's draws with its set rule, back in (batch, n) row order."""
    n = p.shape[0]
    pk, inv = cpu_train.padded_rule(p)
    pd, invd = cpu_train.draw_rule(pk, inv, sets)
    x = np.zeros((pk.shape[0], lanes), np.float32)
    act = np.zeros(n, np.bool_)
    out = np.full((batch, n), -1.0, np.float32)
    for r0 in range(0, batch, lanes):
        cpu_train._draw_block(x, act, pd, invd, r0, batch, n, np.uint64(step), np.uint64(inst), np.uint64(0), k0, k1)
        cpu_train._apply_sets(x, act, sets, pk, inv)
        for l in range(lanes):
            row = cpu_train.lane_row(l, r0, lanes, n)
            if row < batch:
                for f in range(n):
                    out[row, f] = x[f, l]
        for f in range(n):
            if act[f] != np.any(x[f] != 0.0):
                out[0, 0] = np.nan
    return out


@pytest.mark.parametrize("n, sets, B, lanes", [
    (2, (("correlated", 0, 2),), 37, 16), (2, (("anticorrelated", 0, 2),), 150, 64),
    (3, (("anticorrelated", 0, 3),), 37, 16), (9, SETS, 70, 32), (20, (("correlated", 0, 10), ("correlated", 10, 10)), 19, 16)])
def test_cpu_kernel_draws_the_rules_batch_bit_for_bit(n, sets, B, lanes):
    seed, step, inst = 2**33 + 7, 5, 11
    g = torch.Generator().manual_seed(n)
    p = (torch.rand(1, n, generator=g) * 0.8 + 0.1).float()
    for _, a, size in sets:
        p[:, a:a + size] = p[:, a:a + 1]
    got = _kernel_draws(p[0].numpy(), cpu_train.set_array(sets), B, step, inst, *cpu_rng.seed_words(seed), lanes)
    want = reference.features_from_uniform(rng.uniforms(seed, torch.tensor([inst]), step, B, n), p, sets)[0]
    assert np.array_equal(got, want.numpy())


@pytest.mark.parametrize("variant", ["relu-output", "relu-hidden"])
def test_one_cpu_step_with_sets_matches_float64_on_the_exact_batch(variant):
    from engine import cpu_backend, fused
    n, m, K, B = 9, 2, 3, 41
    model, train = ModelSpec(n, m, variant), TrainSpec(steps=2, batch_size=B, lr=1e-2, seed=4)
    p = torch.full((K, n), 0.35)
    p[:, 2:5] = 0.5
    imp = torch.rand(K, n, generator=torch.Generator().manual_seed(0)) + 0.2
    state = fused.new_state(model, train, 0, K)
    before = {k: v.double().clone() for k, v in state.items()}
    hist = torch.zeros(1, K)
    cpu_backend.run_steps(model, train, state, p, imp, 0, 0, 1, torch.zeros(K), hist, 1, sets=SETS)
    x = reference.features_from_uniform(rng.uniforms(train.seed, torch.arange(K), 0, B, n), p, SETS).double()
    loss, dW, db = reference.loss_and_grads(before["W"], before["b"], x, imp.double(), variant)
    assert torch.allclose(hist[0].double(), loss, rtol=1e-5)
    assert torch.allclose(state["mW"].double() / (1 - train.beta1), dW, rtol=1e-4, atol=1e-7)
    assert torch.allclose(state["mb"].double() / (1 - train.beta1), db, rtol=1e-4, atol=1e-7)



def test_one_untied_cpu_step_with_sets_matches_float64_on_the_exact_batch():
    """The untied kernel (kernels/cpu_train_untied.py) draws sets through the same draw_rule and _apply_sets,
    then signs the values: its first step's gradients against float64 on the batch the rule draws (128
    lanes, so the 300 rows are three blocks, the last one partial)."""
    from engine import cpu_backend, fused
    n, m, K, B = 9, 4, 3, 300
    model, train = ModelSpec(n, m, "abs-computation"), TrainSpec(steps=2, batch_size=B, lr=1e-2, seed=5)
    p = torch.full((K, n), 0.35)
    p[:, 2:5] = 0.5
    imp = torch.rand(K, n, generator=torch.Generator().manual_seed(1)) + 0.2
    state = fused.new_state(model, train, 0, K)
    state["W2"] /= reference.W2_INIT_SCALE  # full Xavier scale, as test_abs_computation (Adam's eps)
    before = {k: v.double().clone() for k, v in state.items()}
    hist = torch.zeros(1, K)
    cpu_backend.run_steps(model, train, state, p, imp, 0, 0, 1, torch.zeros(K), hist, 1, sets=SETS)
    u = rng.uniforms(train.seed, torch.arange(K), 0, B, n)
    x = reference.features_from_uniform(u, p, SETS, signed=True).double()
    loss, grads = reference.params_loss_and_grads({k: before[k] for k in ("W1", "b1", "W2", "b2")}, x,
                                                  imp.double(), model)
    assert torch.allclose(hist[0].double(), loss, rtol=1e-5)
    for k, dk in grads.items():
        assert torch.allclose(state["m" + k].double() / (1 - train.beta1), dk, rtol=1e-4, atol=1e-7), k

def test_triton_refuses_sets_and_engine_train_trains_them_on_torch_and_cpu():
    from engine import backends, train
    from engine.errors import UnsupportedShape
    pytest.importorskip("triton")
    with pytest.raises(UnsupportedShape, match="independent features only"):
        backends.check_supported("triton", ModelSpec(4, 2), TrainSpec(), (("correlated", 0, 2),))
    data = DataSpec(np.full((2, 4), 0.3), sets=(("anticorrelated", 0, 2), ("correlated", 2, 2)))
    for backend in ("torch", "cpu"):
        res = train(ModelSpec(4, 2), data, TrainSpec(steps=200, batch_size=64, lr=1e-2), backend=backend,
                    progress=False)
        assert torch.isfinite(res.W).all() and float(res.loss.max()) < 0.1
