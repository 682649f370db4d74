"""engine/expected_loss.py: expected losses exact in which features are active, one sample for all models."""
import itertools
import math

import numpy as np
import pytest
import torch

from engine import expected_loss as el, reference
from engine.errors import SpecError


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
    with pytest.raises(SpecError, match=r"n: must be an integer in \[1, 8\]"):
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


def test_size_probabilities_are_the_set_probabilities_summed_by_size():
    dens = np.array([0.0, 0.013, 0.3, 0.77, 1.0])
    n = 5
    by_set = el.set_probabilities(dens[:, None] * np.ones(n))
    sizes = el.active_sets(n).sum(1)
    want = np.stack([by_set[:, sizes == k].sum(1) for k in range(n + 1)], axis=1)
    np.testing.assert_allclose(el.size_probabilities(dens, n), want, rtol=1e-12, atol=1e-300)
    assert el.size_probabilities([0.0], 3).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert el.size_probabilities([1.0], 3).tolist() == [[0.0, 0.0, 0.0, 1.0]]


def test_size_sample_strata_hold_exactly_k_active_with_uniform_sets():
    n, rows = 4, 6000
    sample = el.size_sample(3, n, rows, single_points=16)
    assert len(sample) == n + 1 and sample[0].tolist() == [[0.0] * n]
    assert sample[1].shape == (n * 16, n) and ((sample[1] > 0).sum(1) == 1).all()
    assert sorted(sample[1][sample[1] > 0].tolist()) == sorted([(i + 0.5) / 16 for i in range(16)] * n)
    for k in range(2, n + 1):  # pairs: a 31 x 31 jittered grid each (1,000 rows per pair fit); triples on
        x = sample[k]          # 1,500 rows each, all four features on all 6,000
        assert x.shape == (6 * 31 ** 2 if k == 2 else rows, n) and ((x > 0).sum(1) == k).all() and float(x.max()) < 1.0
    # the six pairs of 4 features are equally likely: as many rows each
    _, counts = torch.unique((sample[2] > 0).int() @ torch.tensor([1, 2, 4, 8], dtype=torch.int32),
                             return_counts=True)
    assert counts.tolist() == [31 ** 2] * 6
    assert abs(float(sample[3][sample[3] > 0].mean()) - 0.5) < 0.01  # values uniform on [0, 1)
    assert torch.equal(sample[2], el.size_sample(3, n, rows, single_points=16)[2])  # fixed: same seed, same rows
    assert not torch.equal(sample[2], el.size_sample(4, n, rows, single_points=16)[2])


@pytest.mark.parametrize("variant", ["relu-output", "relu-hidden"])
@pytest.mark.parametrize("n, m", [(3, 2), (4, 3), (5, 2)])
def test_equal_density_expected_loss_matches_the_per_set_grid(variant, n, m):
    """The size-stratified estimate (random rows within a size) agrees with the per-active-set
    midpoint grid on the same models, from dense to sparse (n <= 5: the grid has 8 points per axis,
    beyond that fewer, and its own bias would dominate)."""
    gen = torch.Generator().manual_seed(10 * n + m)
    K = 5
    W = torch.randn(K, m, n, generator=gen, dtype=torch.float64)
    b = torch.randn(K, n, generator=gen, dtype=torch.float64) * 0.1
    imp = np.tile(0.8 ** np.arange(n), (K, 1))
    dens = np.array([1.0, 0.5, 0.1, 0.02, 0.003])
    est = el.equal_density_expected_losses(W, b, dens, imp, variant, rows=16384)
    grid = el.own_expected_losses(el.conditional_losses(W, b, el.grid_sample(n, 4096), imp, variant),
                                  dens[:, None] * np.ones(n))
    assert est == pytest.approx(grid, rel=1e-2)


def test_equal_density_expected_loss_matches_a_plain_sample_for_ten_features():
    """n = 10, relu-hidden (privileged-basis's models, 1,024 active sets): against instance_loss on a
    large plain sample of the data distribution; NaN weights give NaN, and leaving out strata of
    negligible probability changes nothing."""
    gen = torch.Generator().manual_seed(5)
    n, m, K = 10, 5, 3
    W = torch.randn(K, m, n, generator=gen, dtype=torch.float64) * 0.7
    b = torch.randn(K, n, generator=gen, dtype=torch.float64) * 0.1
    imp = np.tile(0.75 ** np.arange(n), (K, 1))
    dens = np.array([0.6, 0.15, 0.03])
    est = el.equal_density_expected_losses(W, b, dens, imp, "relu-hidden")
    u = torch.rand(K, 1 << 18, n, generator=gen, dtype=torch.float64)
    x = reference.features_from_uniform(u, torch.tensor(dens[:, None] * np.ones(n)))
    plain = reference.instance_loss(W, b, x, torch.as_tensor(imp), "relu-hidden").numpy()
    assert est == pytest.approx(plain, rel=0.02)
    W[1, 0, 0] = float("nan")
    with_nan = el.equal_density_expected_losses(W, b, dens, imp, "relu-hidden")
    assert np.isnan(with_nan[1]) and with_nan[[0, 2]].tolist() == est[[0, 2]].tolist()
    sparse = np.array([1e-3, 1e-3, 1e-3])  # strata k >= 6 are below NEGLIGIBLE x P(any active) here
    assert (~el.kept_strata(el.size_probabilities(sparse, n))).all(0).tolist() == [False] * 6 + [True] * 5
    cond = el.conditional_losses(W, b, el.size_sample(0, n, 8192), imp, "relu-hidden")  # every stratum
    all_strata = np.einsum("ks,ks->k", cond, el.size_probabilities(sparse, n))
    np.testing.assert_allclose(el.equal_density_expected_losses(W, b, sparse, imp, "relu-hidden"), all_strata,
                               rtol=1e-9)


def test_equal_density_expected_loss_refuses_bad_input_by_name():
    W, b, imp = torch.zeros(2, 1, 3), torch.zeros(2, 3), np.ones((2, 3))
    for args, field in [((W, b, [0.5, 1.5], imp), "density: must be in \\[0, 1\\]"),
                        ((W, b, [0.5], imp), "density: must be shape \\(2,\\)"),
                        ((W, b[:, :2], [0.5, 0.5], imp), "b: must be shape \\(2, 3\\)"),
                        ((W[0], b, [0.5, 0.5], imp), "W: must be a \\(K, m, n\\) array")]:
        with pytest.raises(SpecError, match=field):
            el.equal_density_expected_losses(*args)
    with pytest.raises(SpecError, match="variant"):
        el.equal_density_expected_losses(W, b, [0.5, 0.5], imp, "abs-computation")
    bad = [(dict(importance=-imp), "importance: must be finite and >= 0"),
           (dict(importance=imp * np.nan), "importance: must be finite and >= 0"),
           (dict(seed=-1), "seed: must be an integer in"), (dict(seed=2 ** 64), "seed: must be an integer in"),
           (dict(seed=1.5), "seed"), (dict(rows=0), "rows: must be an integer >= 1"), (dict(rows=1.5), "rows"),
           (dict(W=torch.zeros(0, 1, 3), b=torch.zeros(0, 3), density=[], importance=np.ones((0, 3))), "W: must be"),
           (dict(W=[["a"]]), "W: must be"), (dict(density=["x", "y"]), "density: must be numbers")]
    for change, field in bad:
        kw = {**dict(W=W, b=b, density=[0.5, 0.5], importance=imp), **change}
        with pytest.raises(SpecError, match=field):
            el.equal_density_expected_losses(kw.pop("W"), kw.pop("b"), kw.pop("density"), kw.pop("importance"), **kw)
    with pytest.raises(SpecError, match="density: must be in"):
        el.size_probabilities([2.0], 3)
    for p, field in [([0.5, 0.5], r"p: must be shape \(2, 3\)"), (np.full((2, 4), 0.5), "p: must be shape"),
                     (np.full((2, 3), 1.5), r"p: must be in \[0, 1\]")]:
        with pytest.raises(SpecError, match=field):
            el.instance_expected_losses(W, b, p, imp)
    with pytest.raises(SpecError, match=r"n: must be an integer in \[1, 8\]"):
        el.instance_expected_losses(torch.zeros(1, 1, 9), torch.zeros(1, 9), np.full((1, 9), 0.5), np.ones((1, 9)))
    with pytest.raises(SpecError, match="variant: must be relu-output, relu-hidden or linear"):
        el.instance_expected_losses(W, b, np.full((2, 3), 0.5), imp, variant="abs-computation")
    # samples and set losses that do not fit the models: one line naming the argument, not a torch error
    W5, b5 = torch.zeros(2, 2, 5), torch.zeros(2, 5)
    for sample in (el.grid_sample(4, 64), np.zeros((10, 5)), [np.zeros((3, 5, 1))]):
        with pytest.raises(SpecError, match=r"sample: must be row blocks of shape \(rows, 5\)"):
            el.conditional_losses(W5, b5, sample)
    cond = el.conditional_losses(W5, b5, el.grid_sample(5, 64))
    with pytest.raises(SpecError, match="p: must be densities of 5 features, to match cond's 2\\^5 active sets"):
        el.expected_losses(cond, np.full((1, 4), 0.1))
    with pytest.raises(SpecError, match=r"cond: must be a \(K, 2\^n\) array"):
        el.expected_losses(cond[:, :7], np.full((1, 3), 0.1))
    with pytest.raises(SpecError, match=r"p: must be one row of densities per model \(2\)"):
        el.own_expected_losses(cond, np.full((3, 5), 0.1))


@pytest.mark.parametrize("variant", ["relu-hidden", "linear"])
def test_instance_expected_losses_score_the_variant_they_are_given(variant):
    """The same models scored as their own variant agree with equal_density_expected_losses (another
    design, exact in how many features are active) and differ from a relu-output reading of their
    weights (what instance_expected_losses computed for every variant before it took one)."""
    g = torch.Generator().manual_seed(3)
    K, m, n = 6, 2, 5
    W, b = torch.randn(K, m, n, generator=g) * 0.7, torch.randn(K, n, generator=g) * 0.2
    imp = np.tile(0.9 ** np.arange(n), (K, 1))
    p = np.full((K, n), 0.1)
    own = el.instance_expected_losses(W, b, p, imp, variant=variant)
    other = el.equal_density_expected_losses(W, b, np.full(K, 0.1), imp, variant)
    assert own == pytest.approx(other, rel=0.01)
    assert np.abs(own / el.instance_expected_losses(W, b, p, imp) - 1).max() > 0.05



def test_set_states_enumerate_the_set_rules_exactly():
    p = np.array([[0.2] * 4 + [0.5, 0.1], [1.0] * 6])
    sets = (("correlated", 0, 2), ("anticorrelated", 2, 2))  # features 4, 5 in no set
    masks, probs = el.set_states(6, sets, p)
    assert masks.shape == (2 * 3 * 2 * 2, 6) and probs.sum(1) == pytest.approx([1.0, 1.0], rel=1e-12)
    assert not (masks[:, 2] & masks[:, 3]).any()  # an anticorrelated set: never two members at once
    assert (masks[:, 0] == masks[:, 1]).all()  # a correlated set: all or none
    want = {(True, True, False, True, False, True): 0.2 * (0.2 / 2) * 0.5 * 0.1,
            (False, False, False, False, False, False): 0.8 * 0.8 * 0.5 * 0.9}
    for mask, q in want.items():
        j = [k for k, m in enumerate(masks) if tuple(m) == mask][0]
        assert probs[0, j] == pytest.approx(q, rel=1e-12)
    assert probs[1].max() == 0.5 and np.count_nonzero(probs[1]) == 2  # dense: correlated on, one anti member
    with pytest.raises(SpecError, match="sets: must be at most"):
        el.set_states(13, (), np.full((1, 13), 0.5))


def test_without_sets_the_state_sample_is_the_per_set_grid():
    """No sets: the states are the 2^n active sets and, with <= 5 active, the same midpoint grid as
    instance_expected_losses, so the two agree to rounding (the sums run in another order)."""
    gen = torch.Generator().manual_seed(2)
    W = torch.randn(4, 2, 5, generator=gen, dtype=torch.float64)
    b = torch.randn(4, 5, generator=gen, dtype=torch.float64) * 0.1
    p = np.array([[0.01] * 5, [0.1] * 5, [0.5, 0.4, 0.3, 0.2, 0.1], [1.0] * 5])
    imp = np.tile(0.9 ** np.arange(5), (4, 1))
    np.testing.assert_allclose(el.set_expected_losses(W, b, p, imp, ()), el.instance_expected_losses(W, b, p, imp),
                               rtol=1e-12)


@pytest.mark.parametrize("setup", ["corr2x2", "anti2x2", "corr3x2", "corr2x10"])
def test_set_expected_loss_matches_a_plain_sample_of_the_set_rule(setup):
    from engine.experiments.correlated import SETUPS
    n, m, sets = SETUPS[setup]
    gen = torch.Generator().manual_seed(n + len(sets))
    W = torch.randn(3, m, n, generator=gen, dtype=torch.float64) * 0.6
    b = torch.randn(3, n, generator=gen, dtype=torch.float64) * 0.1
    p = np.array([0.9, 0.2, 0.03])[:, None] * np.ones(n)
    est = el.set_expected_losses(W, b, p, np.ones_like(p), sets)
    u = torch.rand(3, 1 << 18, n, generator=gen, dtype=torch.float64)
    x = reference.features_from_uniform(u, torch.tensor(p), sets)
    plain = reference.instance_loss(W, b, x, torch.ones(3, n, dtype=torch.float64), "relu-output").numpy()
    assert est == pytest.approx(plain, rel=0.02)


def test_expected_losses_take_parameters_and_read_only_views():
    """An nn.Parameter (autograd history) and a read-only numpy view work as plain arrays, silently."""
    import warnings
    gen = torch.Generator().manual_seed(4)
    W = torch.nn.Parameter(torch.randn(2, 2, 4, generator=gen))
    b = torch.zeros(2, 4)
    imp = np.broadcast_to(0.9 ** np.arange(4), (2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = el.equal_density_expected_losses(W, b, [0.1, 0.5], imp)
        c = el.instance_expected_losses(W, b, np.full((2, 4), 0.3), imp)
    np.testing.assert_array_equal(a, el.equal_density_expected_losses(W.detach(), b, [0.1, 0.5], np.array(imp)))
    assert np.isfinite(c).all()


def test_large_n_uses_only_the_strata_that_matter():
    """size_probabilities in logs holds for any n (math.comb overflowed a float past n ~ 1,030), and
    equal_density_expected_losses makes only the strata it evaluates: n = 400 at density 0.002 needs
    counts 0..~10, not 401 strata of 8,192 x 400 doubles."""
    probs = el.size_probabilities([0.0, 0.002, 0.5, 1.0], 2000)
    assert probs.sum(1) == pytest.approx([1.0] * 4, rel=1e-9) and probs[0, 0] == 1.0 and probs[3, -1] == 1.0
    assert probs[2, 1000] == pytest.approx(0.017839, rel=1e-4)  # the central binomial term
    n = 400
    used = np.flatnonzero(el.size_probabilities([0.002], n)[0] >= el.NEGLIGIBLE)
    assert used.max() < 20
    W = torch.randn(1, 3, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.05
    got = el.equal_density_expected_losses(W, torch.zeros(1, n), [0.002], np.ones((1, n)), rows=512)
    # against a plain sample of the data: 2^15 rows (each ~0.8 active features)
    u = torch.rand(1, 1 << 15, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = reference.features_from_uniform(u, torch.full((1, n), 0.002, dtype=torch.float64))
    plain = reference.instance_loss(W, torch.zeros(1, n, dtype=torch.float64), x, torch.ones(1, n, dtype=torch.float64),
                                    "relu-output")
    assert got == pytest.approx(plain.numpy(), rel=0.03)


def test_grid_sample_is_unbiased_past_five_features():
    """Sets of more than GRID_FEATURES features get random rows: a midpoint grid of 2-3 points per axis
    underestimated dense losses by 3-10% at n = 10 (n = 8 here, the most instance_expected_losses takes)."""
    gen = torch.Generator().manual_seed(8)
    n, m = 8, 5
    W = torch.randn(2, m, n, generator=gen, dtype=torch.float64) * 0.8
    b = torch.randn(2, n, generator=gen, dtype=torch.float64) * 0.1
    imp = np.ones((2, n))
    p = np.array([[1.0] * n, [0.7] * n])
    got = el.instance_expected_losses(W, b, p, imp)
    u = torch.rand(2, 1 << 17, n, generator=gen, dtype=torch.float64)
    x = reference.features_from_uniform(u, torch.tensor(p))
    plain = reference.instance_loss(W, b, x, torch.as_tensor(imp), "relu-output").numpy()
    assert got == pytest.approx(plain, rel=0.01)
    assert got == pytest.approx(el.equal_density_expected_losses(W, b, p[:, 0], imp, rows=1 << 15), rel=0.01)


def test_untied_expected_loss_matches_a_plain_sample_of_signed_inputs():
    """abs-computation (inputs 2u - 1 when active, target |x|): against params_instance_loss on a plain
    sample of the signed rule; bad params refused by name."""
    from engine.spec import ModelSpec
    gen = torch.Generator().manual_seed(30)
    n, m, K = 30, 12, 3
    P = {"W1": torch.randn(K, m, n, generator=gen, dtype=torch.float64) * 0.4,
         "b1": torch.randn(K, m, generator=gen, dtype=torch.float64) * 0.1,
         "W2": torch.randn(K, n, m, generator=gen, dtype=torch.float64).abs() * 0.3,
         "b2": torch.randn(K, n, generator=gen, dtype=torch.float64) * 0.1}
    d = np.array([0.5, 0.05, 0.005])
    imp = np.tile(0.8 ** np.arange(n), (K, 1))
    est = el.untied_equal_density_expected_losses(P, d, imp)
    u = torch.rand(K, 1 << 16, n, generator=gen, dtype=torch.float64)
    x = reference.features_from_uniform(u, torch.tensor(d[:, None] * np.ones(n)), signed=True)
    plain = reference.params_instance_loss(P, x, torch.as_tensor(imp), ModelSpec(n, m, "abs-computation")).numpy()
    assert est == pytest.approx(plain, rel=0.02)
    with pytest.raises(SpecError, match="params: must be a dict of W1, b1, W2, b2"):
        el.untied_equal_density_expected_losses({"W1": P["W1"]}, d, imp)
    with pytest.raises(SpecError, match=r"W2: must be shape \(3, 30, 12\)"):
        el.untied_equal_density_expected_losses({**P, "W2": P["W2"].transpose(1, 2)}, d, imp)


def test_the_stratum_cut_is_relative_so_very_sparse_fits_still_rank():
    """n = 2, m = 2: an antipodal pair and an orthogonal pair reconstruct single features alike and
    differ only when both are active. At density 5e-7 P(both) = 2.5e-13 is below an absolute 1e-12
    (the first version of the cut, which tied them), but not below 1e-12 x P(any active)."""
    W = torch.tensor([[[1.0, -1.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    b = torch.zeros(2, 2, dtype=torch.float64)
    got = el.equal_density_expected_losses(W, b, [5e-7, 5e-7], np.ones((2, 2)))
    assert got[1] == 0.0 and got[0] > 0.0


def test_size_blocks_are_balanced_over_subsets_and_single_features_one_block_each():
    n = 6
    single = el.size_blocks(0, n, 1, single_points=16)
    assert len(single) == n and all(x.shape == (16, n) and (x[:, i] > 0).all() for i, x in enumerate(single))
    (pairs,) = el.size_blocks(0, n, 2, rows=100)  # C(6, 2) = 15 <= 100: 6 rows per pair, a 2 x 2 grid of 4
    _, counts = torch.unique((pairs > 0).int() @ (2 ** torch.arange(n, dtype=torch.int32)), return_counts=True)
    assert pairs.shape == (60, n) and counts.tolist() == [4] * 15
    (triples,) = el.size_blocks(0, n, 3, rows=10)  # C(6, 3) = 20 > 10: random subsets
    assert triples.shape == (10, n) and ((triples > 0).sum(1) == 3).all()
    for k in (-1, 7):
        with pytest.raises(SpecError, match=r"k: must be an integer in \[0, 6\]"):
            el.size_sample(0, n, 8, sizes=[k])


@pytest.mark.parametrize("k, each", [(2, 4), (2, 30), (2, 49), (3, 7), (3, 1), (5, 40)])
def test_balanced_strata_values_are_stratified(k, each):
    """size_blocks' values in a balanced stratum (value_design): a pair's rows hold one point in each cell of
    a g x g grid (g = isqrt(each)); a larger subset's rows a Latin hypercube: each member's values one per
    1/each interval. Every value in (0, 1), active; same seed, same values."""
    n = k + 2
    subsets = math.comb(n, k)
    (x,) = el.size_blocks(7, n, k, rows=subsets * each)
    g = math.isqrt(each)
    per = g * g if k == 2 and g >= 2 else each
    assert x.shape == (subsets * per, n) and ((x > 0).sum(1) == k).all() and float(x.max()) < 1.0
    for s, members in enumerate(itertools.combinations(range(n), k)):
        rows = x[s * per:(s + 1) * per]
        assert ((rows > 0).sum(0) > 0).nonzero().flatten().tolist() == list(members)
        v = rows[:, list(members)]
        if per == g * g and k == 2:
            cells = (v * g).floor().long()
            assert sorted((cells[:, 0] * g + cells[:, 1]).tolist()) == list(range(g * g))
        else:
            for j in range(k):
                assert sorted((v[:, j] * per).floor().long().tolist()) == list(range(per))
    assert torch.equal(x, el.size_blocks(7, n, k, rows=subsets * each)[0])
    assert not torch.equal(x, el.size_blocks(8, n, k, rows=subsets * each)[0])


def test_set_states_refuses_what_dataspec_refuses():
    p = np.full((1, 4), 0.1)
    with pytest.raises(SpecError, match="sets: must be disjoint"):
        el.set_states(4, (("correlated", 0, 3), ("correlated", 2, 2)), p)
    p[0, 1] = 0.2
    with pytest.raises(SpecError, match="sets: must be sets whose members share one feature probability"):
        el.set_states(4, (("correlated", 0, 2),), p)


@pytest.mark.parametrize("name", ["basic", "privileged-basis"])
def test_probe_ranking_noise_reproduces_the_runs_picks_and_refuses_other_runs(name, tmp_path, capsys):
    """bench.probe_ranking_noise on a tiny finished run: a block per variant and rows, a line per density;
    at the experiment's own rows (the default) seed 0, the run's seed, picks the run's kept fits."""
    import pyarrow.parquet as pq
    from bench import probe_ranking_noise
    from engine.experiments import EXPERIMENTS, runner
    exp = EXPERIMENTS[name]
    spec = exp.make_spec(fits=2, steps=20, batch_size=16, backend="torch")
    runner.run(exp, spec, tmp_path / "run", progress=False, log=lambda m: None)
    inst = pq.read_table(tmp_path / "run/instances.parquet").to_pydict()
    variants = sorted(set(inst.get("variant", ["relu-hidden"])))
    points = len(set(inst["density"]))
    lines = probe_ranking_noise.probe(tmp_path / "run", 2, [256])
    assert len(lines) == len(variants) * (1 + points) and lines[0].startswith(f"{name} {variants[0]}, 256 rows")
    probe_ranking_noise.main(["--run", str(tmp_path / "run"), "--seeds", "2"])
    out = capsys.readouterr().out.splitlines()
    rows = range(len(inst["kept"]))  # the first variant's kept fit per density, densest first (the probe's order)
    kept = {inst["density"][i]: inst["fit"][i] for i in rows
            if inst["kept"][i] and inst.get("variant", variants * len(rows))[i] == variants[0]}
    assert [int(line.split("[")[1].split(",")[0]) for line in out[1:1 + points]] == [kept[d] for d in sorted(kept)[::-1]]
    with pytest.raises(SystemExit) as e:
        probe_ranking_noise.main(["--run", str(tmp_path / "run"), "--seeds", "1"])
    assert e.value.code == 2 and "--seeds: at least 2" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other/spec.json").write_text('{"experiment": "phase-diagram"}')
    with pytest.raises(SystemExit, match="--run: a basic, adversarial, privileged-basis run"):
        probe_ranking_noise.main(["--run", str(tmp_path / "other")])


def test_no_evaluation_value_is_zero():
    """An active feature's value 0 would make it inactive: the evaluation uniforms (multiples of 2^-24 in
    [0, 1)) are moved to the middle of their bins. value_design(0, 2, 69378, 4) drew a 0 before (a review
    found it; the draw u = 0 has probability 2^-24)."""
    from engine import rng
    v = el.eval_values(0, 2, 2, 69378 * 4, 2)
    u = rng.uniforms(0, torch.tensor([2]), 2, 69378 * 4, 2, stream=rng.STREAM_EVAL)[0].double()
    assert torch.equal(v, u + 2.0 ** -25) and float(u.min()) == 0.0 and 0.0 < float(v.min()) and float(v.max()) < 1.0
    assert float(el.value_design(0, 2, 69378, 4).min()) > 0.0
