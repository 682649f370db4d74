import math

import numpy as np
import pytest
import torch

from engine import metrics


def _W(cols):
    """(1, m, n) from a list of n column vectors."""
    return torch.tensor(np.array(cols, dtype=float).T[None])


def _polygon(k, radius=1.0):
    a = 2 * math.pi * np.arange(k) / k
    return [[radius * math.cos(t), radius * math.sin(t)] for t in a]


def test_orthogonal_features_are_dedicated():
    W = _W(np.eye(3))
    assert torch.allclose(metrics.dimensionality(W), torch.ones(1, 3, dtype=torch.float64))
    assert torch.allclose(metrics.superposition(W), torch.zeros(1, 3, dtype=torch.float64))
    assert metrics.dimensions_per_feature(W).item() == pytest.approx(1.0)


def test_antipodal_pair_has_dimensionality_half():
    W = _W([[1.0], [-1.0]])
    assert torch.allclose(metrics.dimensionality(W), torch.full((1, 2), 0.5, dtype=torch.float64))
    assert torch.allclose(metrics.superposition(W), torch.ones(1, 2, dtype=torch.float64))
    assert metrics.dimensions_per_feature(W).item() == pytest.approx(0.5)


@pytest.mark.parametrize("k, expected", [(3, 2 / 3), (5, 2 / 5)])
def test_regular_polygons_in_2d(k, expected):
    W = _W(_polygon(k, radius=0.8))  # D_i does not depend on the common scale
    assert torch.allclose(metrics.dimensionality(W), torch.full((1, k), expected, dtype=torch.float64))


def test_tetrahedron_in_3d_has_three_quarters():
    W = _W([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    assert torch.allclose(metrics.dimensionality(W), torch.full((1, 4), 0.75, dtype=torch.float64))


def test_unlearned_feature_is_zero_and_guarded():
    W = _W([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    d = metrics.dimensionality(W)
    assert d[0, 2].item() == 0.0 and torch.isfinite(d).all()
    assert metrics.feature_norms(W)[0, 2].item() == 0.0
    assert metrics.superposition(W)[0, 2].item() == 0.0
    assert d[0, 0].item() == pytest.approx(1.0)


def test_superposition_counts_only_other_features():
    W = _W([[2.0, 0.0], [1.0, 1.0]])
    # hat W_0 = (1, 0): (hat W_0 . W_1)^2 = 1; hat W_1 = (1,1)/sqrt2: (hat W_1 . W_0)^2 = 2
    assert torch.allclose(metrics.superposition(W), torch.tensor([[1.0, 2.0]], dtype=torch.float64))


def test_classify_thresholds():
    assert metrics.classify([0.1, 0.9, 0.9], [0.9, 0.1, 0.9]).tolist() == [
        metrics.NOT_REPRESENTED, metrics.DEDICATED, metrics.SUPERPOSITION]


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 6), n=st.integers(1, 12), seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 1e3))
def test_metric_invariants_on_random_weights(m, n, seed, scale):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(2, m, n, generator=g, dtype=torch.float64) * scale
    D = metrics.dimensionality(W)
    assert ((D >= 0) & (D <= 1 + 1e-9)).all()
    assert (metrics.superposition(W) >= -1e-9).all()
    # Dimensionalities of all features sum to at most m (the paper's bound), and the geometry does not
    # depend on a rotation of the hidden space or on the overall scale.
    assert (D.sum(dim=1) <= m + 1e-9).all()
    Q, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    assert torch.allclose(metrics.dimensionality(Q @ W), D, atol=1e-9)
    assert torch.allclose(metrics.dimensionality(W * 3.0), D, atol=1e-9)


def test_nearest_fraction_and_counts():
    D = np.array([[1.0, 0.51, 0.49, 0.4, 0.3875 + 1e-6, 0.37, 0.6, 0.0, 0.755]])
    near = metrics.nearest_fraction(D)
    labels = [metrics.FRACTIONS[k][1] if k >= 0 else None for k in near[0]]
    # 0.3875 is 0.0125 from both 2/5 and 3/8: the nearer one wins; 0.6 and 0 are on no line
    assert labels == ["1", "1/2", "1/2", "2/5", "2/5", "3/8", None, None, "3/4"]
    assert near.shape == D.shape
    assert metrics.fraction_counts(D) == {"1": 1, "3/4": 1, "2/3": 0, "1/2": 2, "2/5": 2, "3/8": 1}
    assert metrics.fraction_counts(D, tol=0.005)["1/2"] == 0  # 0.51 and 0.49 are 0.01 away
