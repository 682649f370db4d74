"""The phase diagram ranks seeds by each model's expected loss (engine.expected_loss on a midpoint
grid), not by the noisy training-loss window: checked against closed forms and on a planted cell."""
import numpy as np
import pytest
import torch

from engine import expected_loss as el
from engine.experiments import phase_diagram as pd


def test_expected_losses_match_the_closed_forms():
    """n=2, m=1, bias 0, mean over the 2 features: antipodal W = (1, -1) loses (1 + r) s^2 / 12 (the
    paper's (1 + r) s^2 / 6 summed over features), ignoring the extra feature W = (1, 0) loses
    r s / 6 (E[x^2] = 1/3 when active)."""
    spec = pd.PhaseDiagramSpec(grid=2, seeds=1, density_min=0.01, density_max=0.3, importance_min=0.5,
                               importance_max=3.0)
    table = pd.instance_table(spec)
    s, r = table["density"], table["rel_importance"]
    antipodal = torch.tensor([[[1.0, -1.0]]]).expand(4, 1, 2)
    ignore = torch.tensor([[[1.0, 0.0]]]).expand(4, 1, 2)
    b = torch.zeros(4, 2)
    assert pd.expected_instance_losses(spec, antipodal, b) == pytest.approx((1 + r) * s ** 2 / 12, rel=1e-3)
    assert pd.expected_instance_losses(spec, ignore, b) == pytest.approx(r * s / 6, rel=1e-3)


def test_the_midpoint_grid_beats_random_rows():
    """On the 3->2 pair sets the grid's error at 4,096 points is far below 4,096 random rows'."""
    gen = torch.Generator().manual_seed(3)
    W = torch.randn(8, 2, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(8, 3, generator=gen, dtype=torch.float64) * 0.2
    fine = el.conditional_losses(W, b, el.grid_sample(3, 1 << 18))
    grid = el.conditional_losses(W, b, el.grid_sample(3, 4096))
    rows = el.conditional_losses(W, b, el.stratified_sample(0, 3, 4096 * 4))  # 4,096 rows per pair
    pairs = [j for j, m in enumerate(el.active_sets(3)) if m.sum() == 2]
    err_grid = np.abs(grid[:, pairs] / fine[:, pairs] - 1).max()
    err_rows = np.abs(rows[:, pairs] / fine[:, pairs] - 1).max()
    assert err_grid < 2e-3 and err_grid < err_rows / 5, (err_grid, err_rows)


def test_the_protocols_rank_by_the_expected_loss_not_the_training_window():
    spec = pd.PhaseDiagramSpec(grid=2, seeds=2, steps=10)
    W = torch.zeros(8, 1, 2)
    W[:, 0, :] = torch.tensor([1.0, 0.0])
    W[1::2, 0, :] = torch.tensor([1.0, -1.0])  # seed 1 of every cell: antipodal (superposition)
    window = np.tile([1.0, 2.0], 4)            # the training window prefers seed 0
    expected = np.tile([2.0, 1.0], 4)          # the expected loss seed 1
    inst, cells, _, _ = pd.analyse(spec, W, window, None, expected)
    assert list(inst["kept"]) == [False, True] * 4
    assert set(cells["empirical_phase"]) == {"superposition"}
    assert list(inst["expected_loss"]) == list(expected) and list(inst["final_loss"]) == list(window)
