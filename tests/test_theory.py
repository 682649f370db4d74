import numpy as np
import pytest

from engine import theory
from engine.metrics import DEDICATED, NOT_REPRESENTED, SUPERPOSITION


@pytest.mark.parametrize("features, s, r, expected", [
    # 2 -> 1: dense and unimportant: ignored; dense and important: dedicated; sparse: superposition.
    (2, 1.0, 0.1, NOT_REPRESENTED), (2, 1.0, 10.0, DEDICATED),
    (2, 0.01, 0.1, SUPERPOSITION), (2, 0.01, 10.0, SUPERPOSITION),
    # 3 -> 2: at low density and high importance the other two go antipodal, the extra one is kept.
    (3, 1.0, 0.1, NOT_REPRESENTED), (3, 1.0, 10.0, DEDICATED),
    (3, 0.01, 0.1, SUPERPOSITION), (3, 0.01, 10.0, DEDICATED),
])
def test_phase_at_grid_corners(features, s, r, expected):
    assert theory.phase(features, s, r) == expected


def test_losses_match_formulas_and_broadcast():
    losses, phases = theory.solution_losses(2, 0.5, 2.0)
    assert np.allclose(losses, [2.0 * (0.5 / 3 - 0.25 / 4), 0.5 / 3 - 0.25 / 4, 3 * 0.25 / 6])
    assert phases.tolist() == [NOT_REPRESENTED, DEDICATED, SUPERPOSITION]
    grid = theory.phase(3, np.logspace(-2, 0, 7)[:, None], np.logspace(-1, 1, 5)[None, :])
    assert grid.shape == (7, 5)


def test_rejects_other_feature_counts():
    with pytest.raises(ValueError, match="features"):
        theory.phase(4, 0.5, 1.0)
