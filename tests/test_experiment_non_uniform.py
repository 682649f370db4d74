"""The non-uniform superposition experiment (engine/experiments/non_uniform.py): a tiny run writes every
output, and each check's logic gives the known answer on hand-built weights (pass and fail cases)."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from engine import reference
from engine.errors import SpecError
from engine.experiments import non_uniform as nu
from engine.experiments import runner


def polygon(angles_deg, norms=None) -> torch.Tensor:
    """W (1, 2, len(angles)): column i the unit vector at angles_deg[i] (times norms[i])."""
    a = np.radians(np.asarray(angles_deg, float))
    W = np.stack([np.cos(a), np.sin(a)])
    if norms is not None:
        W = W * np.asarray(norms, float)
    return torch.tensor(W[None], dtype=torch.float64)


PENTAGON = polygon([90 + 72 * k for k in range(5)])
# Feature 0 dropped (norm 0.1), the others two orthogonal antipodal pairs rotated by 20 degrees.
DIGONS = polygon([33, 20, 200, 110, 290], norms=[0.1, 1, 1, 1, 1])


def test_tiny_run_writes_every_output(tmp_path):
    spec = nu.NonUniformSpec(points=3, fits=2, steps=30, batch_size=16, eval_samples=256, backend="torch")
    summary = runner.run(nu.EXPERIMENT, spec, tmp_path, progress=False, log=lambda m: None)
    for name in nu.EXPERIMENT.outputs + ("summary.json", "spec.json"):
        assert (tmp_path / name).is_file(), name
    rel = spec.rel_axis()
    assert list(rel) == pytest.approx([1e-3, 0.1, 1.0, 10.0])  # 1 added to the 3-point grid
    points = pq.read_table(tmp_path / "points.parquet").to_pydict()
    assert len(points["rel_density"]) == 4 and {f"D_{i}" for i in range(5)} <= set(points)
    assert set(points["geometry"]) <= set(nu.GEOMETRIES)
    inst = pq.read_table(tmp_path / "instances.parquet").to_pydict()
    assert len(inst["instance"]) == 8 and sum(inst["kept"]) == 4
    # the kept fit of each point is its lowest float64 evaluation loss
    ev = np.array(inst["expected_loss"]).reshape(4, 2)
    assert points["instance"] == list(np.arange(4) * 2 + ev.argmin(1))
    w = load_file(str(tmp_path / "weights.safetensors"))
    assert w["W"].shape == (8, 2, 5) and w["b"].shape == (8, 5)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert [c["name"] for c in saved["checks"]] == ["pentagon-at-uniform", "digons-when-sparse", "transition",
                                                   "loss-curves-cross"]
    assert summary["checks_total"] == 4 and summary["points"] == 4


def test_spec_rejects_feature0_density_above_one():
    with pytest.raises(SpecError) as e:
        nu.NonUniformSpec(density=0.2, rel_max=10.0)
    assert e.value.field == "rel_max"


def test_classify_exact_pentagon_and_digons():
    codes, dropped = nu.classify_geometry(torch.cat([PENTAGON, DIGONS]))
    assert codes.tolist() == [nu.PENTAGON, nu.DIGONS] and dropped.tolist() == [-1, 0]
    # any feature can be the dropped one
    codes, dropped = nu.classify_geometry(DIGONS[:, :, [1, 2, 0, 3, 4]])
    assert codes.tolist() == [nu.DIGONS] and dropped.tolist() == [2]


def test_classify_rejects_lookalikes():
    # Four features at 0, 45, 90, 135 degrees: every D_i is exactly 1/2, but no antipodal pairs.
    star = polygon([0, 0, 45, 90, 135], norms=[0, 1, 1, 1, 1])
    # A pentagon with one feature shrunk to 0.3: four represented, not paired.
    broken = polygon([90 + 72 * k for k in range(5)], norms=[0.3, 1, 1, 1, 1])
    # A triangle plus an antipodal pair on top of one of its vectors: all represented, D_i != 2/5.
    mixed = polygon([0, 120, 240, 0, 180])
    codes, _ = nu.classify_geometry(torch.cat([star, broken, mixed]))
    assert codes.tolist() == [nu.OTHER] * 3


def test_transition_and_crossing_known_answers():
    rel = np.array([0.01, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0])
    P, D = nu.PENTAGON, nu.DIGONS
    assert nu.transition(rel, np.array([D, D, D, P, P, P, D])) == 0.2  # points above 1 do not count
    assert nu.transition(rel, np.array([P] * 7)) is None
    # log(pentagon / digons) = -log(r / 0.3): the curves cross at exactly r = 0.3
    dig = np.full(rel.size, 1e-3)
    pent = dig * 0.3 / rel
    assert nu.crossing(rel, pent, dig) == pytest.approx(0.3, rel=1e-12)
    assert nu.crossing(rel, dig, pent) is None  # pentagon better below, digons above: no such crossing


def test_checks_pass_and_fail():
    rel = np.array([0.01, 0.1, 0.3, 1.0, 3.0])
    P, D, O = nu.PENTAGON, nu.DIGONS, nu.OTHER
    dims = np.full((5, 5), 0.4)
    assert nu.check_pentagon(rel, np.array([D, D, P, P, P]), dims)["passed"]
    assert not nu.check_pentagon(rel, np.array([D, D, P, O, P]), dims)["passed"]
    assert nu.check_digons(rel, np.array([D, D, P, P, P]), np.array([0, 0, -1, -1, -1]))["passed"]
    # digons that drop another feature than the sparse one do not count
    assert not nu.check_digons(rel, np.array([D, D, P, P, P]), np.array([0, 3, -1, -1, -1]))["passed"]
    assert nu.check_transition(0.3)["passed"] and nu.check_transition(0.25)["passed"]
    for t in (None, 0.2, 0.7):
        assert not nu.check_transition(t)["passed"]
    assert nu.check_crossing(0.25, 0.3)["passed"]
    assert not nu.check_crossing(0.25, 0.5)["passed"] and not nu.check_crossing(0.25, None)["passed"]


def test_stratified_expected_loss_matches_a_plain_sample():
    """The stratified estimate agrees with instance_loss on a large plain sample of the same distribution."""
    spec = nu.NonUniformSpec(eval_samples=4096)
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(3, 2, 5, generator=gen, dtype=torch.float64)
    b = torch.randn(3, 5, generator=gen, dtype=torch.float64) * 0.1
    p = nu.feature_probability(spec, [3.0])  # densities 0.15, 0.05, ...: plenty of active rows
    est = nu.expected_losses(nu.conditional_losses(W, b, nu.eval_sample(spec)), p)[:, 0]
    u = torch.rand(1, 1 << 19, 5, generator=gen, dtype=torch.float64)
    x = reference.features_from_uniform(u, torch.tensor(p))
    plain = reference.instance_loss(W, b, x.expand(3, -1, -1), torch.ones(3, 5, dtype=torch.float64), "relu-output")
    assert est == pytest.approx(plain.numpy(), rel=0.03)
    # W = 0, b = 0: the loss is mean x^2 = sum_i p_i E[u^2] / 5 = sum_i p_i / 15
    zero = nu.expected_losses(nu.conditional_losses(torch.zeros(1, 2, 5), torch.zeros(1, 5), nu.eval_sample(spec)), p)
    assert float(zero[0, 0]) == pytest.approx(p.sum() / 15, rel=0.02)


def test_pentagon_beats_digons_at_uniform_density_and_loses_when_feature0_is_rare():
    """The loss curves' ordering on exact solutions (pentagon bias -0.1, roughly the trained one's)."""
    W = torch.cat([PENTAGON, DIGONS])
    b = torch.full((2, 5), -0.1, dtype=torch.float64)
    b[1] = 0.0  # digons need no bias: an antipodal partner's interference is negative, cut by the ReLU
    spec = nu.NonUniformSpec()
    loss = nu.expected_losses(nu.conditional_losses(W, b, nu.eval_sample(spec)),
                              nu.feature_probability(spec, [1.0, 0.01]))  # (model, point)
    assert loss[0, 0] < loss[1, 0] and loss[1, 1] < loss[0, 1]
    assert np.all(np.isfinite(loss))


def test_a_fan_with_every_d_i_at_two_fifths_is_no_pentagon():
    """Five unit vectors 36 degrees apart form a tight frame (every D_i = 2/5, as a pentagon's) but no
    pentagon: classify_geometry wants neighbours 72 degrees apart (metrics.PENTAGON_ANGLE_TOLERANCE)."""
    import math

    from engine import metrics

    def ring(step_deg):
        a = np.radians(step_deg * np.arange(5))
        return np.stack([np.cos(a), np.sin(a)])

    W = torch.tensor(np.stack([ring(72.0), ring(36.0)]), dtype=torch.float32)
    assert np.allclose(metrics.dimensionality(W).numpy(), 0.4, atol=1e-5)
    codes, _ = nu.classify_geometry(W)
    assert codes.tolist() == [nu.PENTAGON, nu.OTHER] and math.isclose(metrics.neighbour_angles(W[1]).max(), 216.0,
                                                                       rel_tol=1e-5)
