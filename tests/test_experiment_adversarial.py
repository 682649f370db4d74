"""The adversarial experiment (engine/experiments/adversarial.py): a tiny run writes every output, the
attack's vulnerability is the analytic value on hand-built weights, and each check passes and fails
where it should."""
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from engine import metrics
from engine.experiments import adversarial as adv
from engine.experiments import runner


def sample(rows=512, n=20, density=0.3, seed=0) -> torch.Tensor:
    """Non-negative sparse test inputs (rows, n), like the model's data."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(rows, n, generator=g, dtype=torch.float64)
    return torch.where(torch.rand(rows, n, generator=g, dtype=torch.float64) < density, u, torch.zeros(()))


def projection(scale: float, m=5, n=20) -> torch.Tensor:
    """W = sqrt(scale) [I_m 0] (m, n): W^T W = scale x the projection onto the first m features."""
    W = torch.zeros(m, n, dtype=torch.float64)
    W[:, :m] = torch.eye(m, dtype=torch.float64) * math.sqrt(scale)
    return W


def test_tiny_run_writes_every_output(tmp_path):
    spec = adv.AdversarialSpec(points=2, fits=2, steps=20, batch_size=16, test_samples=256, backend="torch")
    summary = runner.run(adv.EXPERIMENT, spec, tmp_path, progress=False, log=lambda m: None)
    for name in adv.EXPERIMENT.outputs + ("summary.json", "spec.json"):
        assert (tmp_path / name).is_file(), name
    models = pq.read_table(tmp_path / "models.parquet").to_pydict()
    assert models["variant"] == ["relu-output"] * 2 + ["linear"] * 2
    assert models["density"] == pytest.approx([1.0, 1e-3, 1.0, 1e-3])
    for col in ("D_star", "features_per_dimension", "vulnerability", "relu_vulnerability", "final_loss", "test_loss"):
        assert np.all(np.isfinite(models[col])), col
    inst = pq.read_table(tmp_path / "instances.parquet").to_pydict()
    assert len(inst["instance"]) == 8 and np.all(np.isfinite(inst["expected_loss"]))
    for v in range(2):  # per variant and density, the kept fit is the one with the lowest expected loss
        for d in range(2):
            fits = [4 * v + 2 * d, 4 * v + 2 * d + 1]
            best = min(fits, key=lambda k: inst["expected_loss"][k])
            assert [inst["kept"][k] for k in fits] == [k == best for k in fits]
    w = load_file(str(tmp_path / "weights.safetensors"))
    assert w["W_relu-output"].shape == (4, 5, 20) and w["b_linear"].shape == (4, 20)
    # the column is the estimate at the experiment's ranking rows per count of active features, from the saved weights
    from engine.expected_loss import RANKING_ROWS, equal_density_expected_losses
    assert adv.EXPERIMENT.ranking_rows == RANKING_ROWS
    again = equal_density_expected_losses(w["W_linear"], w["b_linear"], inst["density"][4:],
                                          np.tile(spec.importance(), (4, 1)), "linear", seed=spec.seed, rows=RANKING_ROWS)
    assert again.tolist() == inst["expected_loss"][4:]
    assert w["kept_linear"].tolist() == [k - 4 for k in range(4, 8) if inst["kept"][k]]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert [c["name"] for c in saved["checks"]] == ["vulnerability-rises", "linear-flat",
                                                   "tracks-features-per-dimension"]
    assert summary["checks_total"] == 3


@pytest.mark.parametrize("variant", ["linear", "relu-output"])
def test_projection_vulnerability_is_its_scale(variant):
    """W^T W = 2 P: every output in range moves by exactly 2 eps along +e_i (i < 5), for the ReLU
    model too (b = 0, x >= 0: the attacked outputs stay in the linear regime)."""
    x = sample()
    a = adv.attack(projection(2.0), torch.zeros(20, dtype=torch.float64), x, variant, 0.1)
    assert a["eps"] == pytest.approx(0.1 * float(x.norm(dim=1).mean()))
    assert a["vulnerability"] == pytest.approx(2.0, rel=1e-12)
    assert a["relu_vulnerability"] == pytest.approx(2.0, rel=1e-12)
    assert a["vulnerability_direction"] < 5  # one of +A_0 .. +A_4
    if variant == "relu-output":  # -e_i can be cut by the ReLU where x_i < eps: +e_i is the worst
        assert adv.direction_name(a["relu_vulnerability_direction"]).startswith("+")


def test_the_attack_picks_the_column_that_moves_the_output_most():
    W = torch.zeros(5, 20, dtype=torch.float64)
    W[0, 0], W[1, 1] = 1.0, 2.0  # W^T W = diag(1, 4, 0, ...)
    a = adv.attack(W, torch.zeros(20, dtype=torch.float64), sample(), "linear", 0.1)
    assert a["vulnerability"] == pytest.approx(4.0, rel=1e-12)
    assert adv.direction_name(a["vulnerability_direction"]) in ("+A_1", "-A_1")


def pentagon(plane: int, planes: int) -> torch.Tensor:
    """Five unit features as a regular pentagon in dimensions (2 plane, 2 plane + 1) of 2 planes."""
    a = torch.arange(5, dtype=torch.float64) * 2 * math.pi / 5
    W = torch.zeros(2 * planes, 5, dtype=torch.float64)
    W[2 * plane], W[2 * plane + 1] = torch.cos(a), torch.sin(a)
    return W


@pytest.mark.parametrize("case", ["antipodal pair", "pentagon", "two pentagons"])
def test_superposed_tight_frame_vulnerability_is_features_per_dimension(case):
    """k unit features spread evenly over m dimensions (W W^T = (k/m) I): W^T W maps each of its
    columns A_i to (k/m) A_i, so the vulnerability is k/m, the features per dimension 1/D*."""
    W = {"antipodal pair": torch.tensor([[1.0, -1.0]], dtype=torch.float64),
         "pentagon": pentagon(0, 1),
         "two pentagons": torch.cat([pentagon(0, 2), pentagon(1, 2)], dim=1)}[case]
    m, k = W.shape
    assert torch.allclose(W @ W.T, torch.eye(m, dtype=torch.float64) * k / m)
    fpd = 1 / float(metrics.dimensions_per_feature(W[None]))
    assert fpd == pytest.approx(k / m, rel=1e-12)
    for variant in ("linear", "relu-output"):
        a = adv.attack(W, torch.zeros(k, dtype=torch.float64), sample(n=k), variant, 0.1)
        assert a["vulnerability"] == pytest.approx(k / m, rel=1e-12)
    # the linear model's output moves by the same amount at every input: relu_vulnerability = k/m too
    assert adv.attack(W, torch.zeros(k, dtype=torch.float64), sample(n=k), "linear", 0.1)[
        "relu_vulnerability"] == pytest.approx(k / m, rel=1e-12)


def test_relu_gating_hides_the_attack_from_the_sample_average():
    """A strongly negative bias keeps every output of a ReLU model at zero for small attacks: the
    ReLU-aware figures are 0 while the end-to-end gain is the analytic 3."""
    a = adv.attack(projection(3.0), torch.full((20,), -10.0, dtype=torch.float64), sample(), "relu-output", 0.1)
    assert a["vulnerability"] == pytest.approx(3.0, rel=1e-12)
    assert a["relu_vulnerability"] == 0.0 and a["relu_vulnerability_active"] == 0.0


def test_checks_pass_and_fail():
    fpd = np.array([1.0, 2.0, 4.0, 3.5])
    sup = np.array([0, 10, 20, 18])
    assert adv.check_rise(fpd, np.array([1.0, 2.0, 3.5, 3.0]), sup, fpd)["passed"]  # 3.5x at the most superposition
    assert not adv.check_rise(fpd, np.array([1.0, 2.0, 2.5, 4.0]), sup, fpd)["passed"]  # 4x, not where fpd is largest
    assert not adv.check_rise(fpd, np.array([1.0, 2.0, 3.5, 3.0]), sup, np.array([1.0, 2.0, 2.0, 2.0]))["passed"]
    assert adv.check_linear_flat(np.array([1.0, 1.01, 0.99]))["passed"]
    assert not adv.check_linear_flat(np.array([1.0, 1.5, 0.99]))["passed"]
    assert adv.check_tracking(fpd, fpd * 1.1)["passed"]
    assert not adv.check_tracking(fpd, np.array([4.0, 3.0, 1.0, 2.0]))["passed"]
    assert not adv.check_tracking(fpd, np.ones(4))["passed"]  # flat: no correlation to speak of


def _in_superposition(W):
    """Features in superposition per model of W (K, m, n), by the shared phase rule."""
    return (metrics.classify(metrics.feature_norms(W), metrics.superposition(W)) == metrics.SUPERPOSITION).sum(1)


def test_a_rise_without_superposition_fails():
    """An audit's counter-example: dedicated features (no superposition) whose norms grow with
    sparsity, sqrt(1..6), raise features per dimension (||W||_F^2 / m) and the vulnerability together
    and passed every check."""
    W = []
    for c in np.linspace(1.0, 6.0, 6):
        w = torch.zeros(5, 20, dtype=torch.float64)
        w[range(5), range(5)] = math.sqrt(c)
        W.append(w)
    W = torch.stack(W)
    fpd = 1 / metrics.dimensions_per_feature(W).numpy()
    vuln = np.array([adv.attack(w, torch.zeros(20, dtype=torch.float64), sample(), "relu-output", 0.1)["vulnerability"]
                     for w in W])
    sup = _in_superposition(W)
    assert vuln[-1] / vuln[0] == pytest.approx(6.0) and adv.check_tracking(fpd, vuln)["passed"]
    unit = np.array([adv.unit_column_vulnerability(w) for w in W])
    got = adv.check_rise(fpd, vuln, sup, unit)
    assert got["measured"] == {"rise": pytest.approx(6.0), "rise_unit_columns": pytest.approx(1.0),
                               "in_superposition": [0, 0]} and got["passed"] is False
    # a review's: the same 5 antipodal pairs (10 features in superposition) at every density, norms growing
    pairs = torch.zeros(6, 5, 20, dtype=torch.float64)
    for k, c in enumerate(np.linspace(1.0, 6.0, 6)):
        pairs[k, range(5), range(5)] = math.sqrt(c)
        pairs[k, range(5), range(5, 10)] = -math.sqrt(c)
    sup = _in_superposition(pairs)
    fpd = 1 / metrics.dimensions_per_feature(pairs).numpy()
    vuln = np.array([adv.attack(w, torch.zeros(20, dtype=torch.float64), sample(), "relu-output", 0.1)["vulnerability"]
                     for w in pairs])
    got = adv.check_rise(fpd, vuln, sup, np.array([adv.unit_column_vulnerability(w) for w in pairs]))
    assert got["measured"]["in_superposition"] == [10, 10] and got["measured"]["rise"] > 3 and not got["passed"]
    # a second review's: dedicated at the densest point, then pairs whose norms grow: 12x from norms alone
    grow = [torch.zeros(5, 20, dtype=torch.float64)]
    grow[0][range(5), range(5)] = 1.0
    for c in range(2, 7):
        w = torch.zeros(5, 20, dtype=torch.float64)
        w[range(5), range(5)] = math.sqrt(c)
        w[range(5), range(5, 10)] = -math.sqrt(c)
        grow.append(w)
    grow = torch.stack(grow)
    sup = _in_superposition(grow)
    vuln = np.array([adv.attack(w, torch.zeros(20, dtype=torch.float64), sample(), "relu-output", 0.1)["vulnerability"]
                     for w in grow])
    unit = np.array([adv.unit_column_vulnerability(w) for w in grow])
    got = adv.check_rise(1 / metrics.dimensions_per_feature(grow).numpy(), vuln, sup, unit)
    assert got["measured"]["rise"] == pytest.approx(12.0) and got["measured"]["rise_unit_columns"] == pytest.approx(2.0)
    assert got["measured"]["in_superposition"] == [0, 10] and got["passed"] is False


def test_the_analysis_counts_superposition_of_the_kept_models(tmp_path):
    """The wiring of vulnerability-rises: in_superposition comes from the kept relu models, densest first."""
    from engine.experiments.base import JobResult
    from engine.store import RunDir
    spec = adv.AdversarialSpec(points=2, fits=1, test_samples=256)
    dense = torch.zeros(5, 20)
    dense[range(5), range(5)] = 1.0  # top 5 dedicated
    pairs = dense.clone()
    pairs[range(5), range(5, 10)] = -1.0  # 5 antipodal pairs: 10 features in superposition
    res = {v: JobResult(torch.stack([dense, pairs]), torch.zeros(2, 20), torch.zeros(2)) for v in adv.VARIANTS}
    summary = adv.EXPERIMENT.analyse(spec, res, RunDir(tmp_path))
    rise = {c["name"]: c for c in summary["checks"]}["vulnerability-rises"]
    assert rise["measured"]["in_superposition"] == [0, 10]
    assert rise["measured"]["rise_unit_columns"] == pytest.approx(2.0)
    assert rise["measured"]["rise"] == pytest.approx(2.0) and rise["passed"] is False  # 2x: not several-fold
    models = pq.read_table(tmp_path / "models.parquet").to_pydict()
    assert models["in_superposition"] == [0, 10, 0, 10]
