"""engine/expected_loss.py: expected losses exact in which features are active, one sample for all models."""
import numpy as np
import pytest
import torch

from engine import expected_loss as el, reference


def test_set_probabilities_are_exact():
    p = np.array([[0.3, 0.05, 0.05, 0.05, 0.05], [1.0, 0.5, 0.2, 0.1, 0.01]])
    probs = el.set_probabilities(p)
    sets = el.active_sets(5)
    assert sets.shape == (32, 5) and not sets[0].any() and sets[-1].all()
    assert probs.sum(1) == pytest.approx([1.0, 1.0], rel=1e-12)
    j = [k for k, m in enumerate(sets) if m.tolist() == [True, False, True, False, False]][0]
    assert probs[0, j] == pytest.approx(0.3 * 0.95 * 0.05 * 0.95 * 0.95, rel=1e-12)
    assert probs[1, 0] == 0.0  # feature 0 always active: the empty set never happens
    assert el.active_sets(1).tolist() == [[False], [True]]
    assert el.active_sets(3).sum(1).tolist() == [0, 1, 1, 1, 2, 2, 2, 3]  # by size
    with pytest.raises(ValueError, match="n must be in"):
        el.active_sets(el.MAX_FEATURES + 1)


@pytest.mark.parametrize("n, m, density", [(2, 1, 0.2), (3, 2, 0.1), (5, 2, 0.15)])
def test_stratified_expected_loss_matches_a_plain_sample(n, m, density):
    """The stratified estimate agrees with instance_loss on a large plain sample of the same
    distribution, with per-model importances."""
    gen = torch.Generator().manual_seed(n)
    W = torch.randn(3, m, n, generator=gen, dtype=torch.float64)
    b = torch.randn(3, n, generator=gen, dtype=torch.float64) * 0.1
    imp = torch.rand(3, n, generator=gen, dtype=torch.float64) + 0.5
    p = np.full((3, n), density)
    p[1] *= 0.5
    cond = el.conditional_losses(W, b, el.stratified_sample(0, n, 4096), imp.numpy())
    est = el.own_expected_losses(cond, p)
    assert est == pytest.approx(np.diag(el.expected_losses(cond, p)), rel=1e-12)
    u = torch.rand(3, 1 << 19, n, generator=gen, dtype=torch.float64)
    x = reference.features_from_uniform(u, torch.tensor(p))
    plain = reference.instance_loss(W, b, x, imp, "relu-output")
    assert est == pytest.approx(plain.numpy(), rel=0.03)
    # W = 0, b = 0: the loss is mean I x^2 = sum_i I_i p_i E[u^2] / n = sum_i I_i p_i / (3 n)
    zero = el.own_expected_losses(el.conditional_losses(torch.zeros(3, m, n), torch.zeros(3, n),
                                                        el.stratified_sample(0, n, 4096), imp.numpy()), p)
    assert zero == pytest.approx((imp.numpy() * p).sum(1) / (3 * n), rel=0.02)


def test_grouping_models_never_changes_a_number(monkeypatch):
    """conditional_losses groups models by a memory budget (ELEMENTS doubles per intermediate, so a
    big sample never holds gigabytes); each model's loss is its own computation, so any grouping
    gives the same bits."""
    gen = torch.Generator().manual_seed(7)
    W = torch.randn(37, 2, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(37, 3, generator=gen, dtype=torch.float64) * 0.2
    imp = torch.rand(37, 3, generator=gen, dtype=torch.float64).numpy()
    sample = el.grid_sample(3, 4096)
    whole = el.conditional_losses(W, b, sample, imp, chunk=256)
    np.testing.assert_array_equal(whole, el.conditional_losses(W, b, sample, imp, chunk=1))
    monkeypatch.setattr(el, "ELEMENTS", 3 * 4096 * 5)  # 5 models per group on every set
    np.testing.assert_array_equal(whole, el.conditional_losses(W, b, sample, imp, chunk=256))
