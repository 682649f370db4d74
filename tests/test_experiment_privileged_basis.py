"""privileged-basis: the neuron analysis on planted weights, and a tiny run end to end."""
import json

import numpy as np
import pyarrow.parquet as pq

from engine.experiments import privileged_basis as pb
from engine.experiments import runner


def test_neuron_table_counts_drivers_per_neuron():
    W = np.zeros((2, 5, 10), np.float32)
    W[0, np.arange(5), np.arange(5)] = 1.0      # five features, one neuron each: monosemantic
    W[1, np.arange(5), np.arange(5)] = 1.0
    W[1, 0, 7] = 0.8                            # feature 7 shares neuron 0 (polysemantic)
    W[1, 0, 8] = -1.0                           # a negative weight drives nothing through the ReLU
    W[1, 4, 4] = 0.1                            # neuron 4 nearly silent: dead
    t = pb.neuron_table(W)
    assert t["monosemantic"].tolist() == [5, 3] and t["polysemantic"].tolist() == [0, 1]
    assert t["dead"].tolist() == [0, 1] and t["represented"].tolist() == [5, 6]
    assert t["driven_by"][1, 0].nonzero()[0].tolist() == [0, 7]


def test_a_tiny_run_writes_its_outputs_and_checks(tmp_path):
    spec = pb.PrivilegedBasisSpec(points=3, fits=2, steps=50, batch_size=32, density_max=0.6, density_min=0.03,
                                  backend="torch")
    summary = runner.run(pb.EXPERIMENT, spec, tmp_path, progress=False, log=lambda m: None)
    assert {c["name"] for c in summary["checks"]} == {"dense-monosemantic", "sparse-polysemantic"}
    neurons = pq.read_table(tmp_path / "neurons.parquet").to_pydict()
    assert len(neurons["neuron"]) == 3 * 5 and set(neurons) >= {"drivers", "features", "w_0", "w_9"}
    assert (tmp_path / "figures/privileged_basis.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "summary.json").read_text())["experiment"] == "privileged-basis"
    # the analysed fit of each density is the one with the lowest expected loss, not the training window
    inst = pq.read_table(tmp_path / "instances.parquet").to_pydict()
    for d in range(3):
        fits = [2 * d, 2 * d + 1]
        best = min(fits, key=lambda k: inst["expected_loss"][k])
        assert [inst["kept"][k] for k in fits] == [k == best for k in fits]
    assert all(np.isfinite(inst["expected_loss"])) and inst["final_loss"] != inst["expected_loss"]
    # the column is relu-hidden's expected loss at each instance's density and the spec's importance
    from safetensors.torch import load_file
    from engine.expected_loss import equal_density_expected_losses
    w = load_file(str(tmp_path / "weights.safetensors"))
    again = equal_density_expected_losses(w["W"], w["b"], inst["density"], np.tile(spec.importance(), (6, 1)),
                                          "relu-hidden", seed=spec.seed)
    np.testing.assert_array_equal(again, inst["expected_loss"])
    assert not np.allclose(again, equal_density_expected_losses(w["W"], w["b"], inst["density"],
                                                                np.tile(spec.importance(), (6, 1)), "relu-output"))


def planted_checks(tmp_path, W, **spec):
    """The checks of privileged-basis's analysis on planted weights W (points, 5, 10), one fit each."""
    import torch
    from engine.experiments.base import JobResult
    from engine.store import RunDir
    s = pb.PrivilegedBasisSpec(fits=1, **spec)
    res = {"models": JobResult(torch.as_tensor(W), torch.zeros(len(W), 10), torch.zeros(len(W)))}
    run = RunDir.open(tmp_path, {"x": 1})
    try:
        return {c["name"]: c for c in pb.EXPERIMENT.analyse(s, res, run)["checks"]}
    finally:
        run.close()


def test_dead_neurons_are_not_monosemantic_and_negative_columns_drive_nothing(tmp_path):
    W = np.zeros((2, 5, 10), np.float32)  # density 0.7: every neuron dead
    W[1, np.arange(5), np.arange(5)] = 1.0  # density 0.03: 5 features driving, neuron 0 shared ...
    W[1, 0, 5] = 0.9  # (read back at 0.81)
    W[1, :, 6:] = -1.0  # ... and 4 columns of norm 2 whose negative weights pass nothing
    checks = planted_checks(tmp_path, W, points=2, density_max=0.7, density_min=0.03)
    assert checks["dense-monosemantic"]["measured"] == [0, 0, 0] and checks["dense-monosemantic"]["passed"] is False
    # represented (norm >= 0.5) would count 10 > 5 features; driving counts 6
    assert checks["sparse-polysemantic"]["measured"] == [1, 6] and checks["sparse-polysemantic"]["passed"] is True
    W[0, np.arange(5), np.arange(5)] = 1.0  # dense: one feature per neuron
    assert planted_checks(tmp_path / "b", W, points=2, density_max=0.7, density_min=0.03)[
        "dense-monosemantic"]["passed"] is True


def test_read_back_is_the_models_output_for_one_active_feature():
    import torch
    from engine import reference
    W, b = torch.randn(4, 5, 10, dtype=torch.float64), 0.3 * torch.randn(4, 10, dtype=torch.float64)
    eye = torch.eye(10, dtype=torch.float64).expand(4, 10, 10)
    want = torch.diagonal(reference.forward(W, b, eye, "relu-hidden"), dim1=1, dim2=2)
    np.testing.assert_allclose(pb.read_back(W.numpy(), b.numpy()), want.numpy(), rtol=1e-12, atol=1e-15)


def test_wrong_models_fail_the_checks(tmp_path):
    """Found by an audit: all five neurons on feature 0 passed dense-monosemantic, and 83% of random
    inits passed sparse-polysemantic (weights >= 0.3 everywhere, read back by nothing)."""
    import torch
    from engine import reference
    from engine.spec import ModelSpec
    W = np.zeros((2, 5, 10), np.float32)
    W[:, :, 0] = 1 / np.sqrt(5)  # every neuron driven by feature 0 alone (read back at 1)
    checks = planted_checks(tmp_path, W, points=2, density_max=0.7, density_min=0.03)
    assert checks["dense-monosemantic"]["measured"] == [5, 1, 0] and checks["dense-monosemantic"]["passed"] is False
    inits = reference.init_weights(ModelSpec(10, 5, "relu-hidden"), 0, torch.arange(200)).numpy()
    raw, read = pb.neuron_table(inits), pb.neuron_table(inits, np.zeros((200, 10)))
    assert ((raw["polysemantic"] >= 1) & (raw["driving"] > 5)).mean() > 0.7  # the old criterion
    assert not ((read["shared_neurons"] >= 1) & (read["driving_read_back"] > 5)).any()
    # a bias cannot stand in for the feature's own drive (a review: every b_i = 0.6 passed half the inits)
    for bias in (0.3, 0.6):
        biased = pb.neuron_table(inits, np.full((200, 10), bias))
        assert not ((biased["shared_neurons"] >= 1) & (biased["driving_read_back"] > 5)).any()
    k = int(np.flatnonzero((raw["polysemantic"] >= 1) & (raw["driving"] > 5))[0])
    sparse = planted_checks(tmp_path / "r", np.stack([inits[k], inits[k]]), points=2, density_max=0.7,
                            density_min=0.03)["sparse-polysemantic"]
    assert sparse["passed"] is False


def test_a_sweep_that_misses_a_regime_says_its_check_was_not_run(tmp_path):
    from engine.experiments import runner as rn
    spec = pb.PrivilegedBasisSpec(points=2, fits=1, steps=20, batch_size=16, density_max=0.4, density_min=0.05,
                                  backend="torch")
    summary = runner.run(pb.EXPERIMENT, spec, tmp_path, progress=False, log=lambda m: None)
    assert [(c["name"], c["passed"]) for c in summary["checks"]] == [("dense-monosemantic", None),
                                                                   ("sparse-polysemantic", None)]
    assert summary["checks_not_run"] == 2 and summary["checks_passed"] == 0
    assert "a density >= 0.5 in the sweep (--density-max; this run's densest is 0.4)" == \
        summary["checks"][0]["expected"]
    text = (tmp_path / "README.txt").read_text()
    assert "[not run] dense-monosemantic" in text and "[not run] sparse-polysemantic" in text
    assert rn.status_word(summary["checks"][0]) == "not run"


def test_the_command_line_prints_a_check_it_could_not_make_as_not_run(tmp_path, capsys):
    import pytest
    from engine.cli import main
    with pytest.raises(SystemExit) as e:  # as tests/test_cli.py: main returns on success, exits on error
        main(["run", "privileged-basis", "--points", "2", "--fits", "1", "--steps", "20", "--batch-size", "16",
              "--density-max", "0.6", "--density-min", "0.05", "--backend", "torch", "--no-progress",
              "--out", str(tmp_path / "r")])
        raise SystemExit(0)
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "check not run: sparse-polysemantic:" in out and "(needs a density <= 0.04 in the sweep" in out
    assert "check pass: dense-monosemantic" in out or "check FAIL: dense-monosemantic" in out
