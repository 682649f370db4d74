"""The intro and basic experiments: tiny runs write every output; their paper checks are right on
hand-made weights whose answer is known (and fail where they should)."""
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from engine.cli import main
from engine.experiments import basic, intro
from engine.experiments.base import JobResult
from engine.store import RunDir


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", *args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def checks_of(summary):
    return {c["name"]: c["passed"] for c in summary["checks"]}


def pentagon() -> torch.Tensor:
    """(2, 5): five unit vectors at 72 degree steps."""
    a = 2 * math.pi * np.arange(5) / 5
    return torch.tensor(np.stack([np.cos(a), np.sin(a)]), dtype=torch.float32)


def two_dedicated() -> torch.Tensor:
    """(2, 5): features 0 and 1 on the axes, the rest dropped."""
    W = torch.zeros(2, 5)
    W[0, 0] = W[1, 1] = 1.0
    return W


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_intro_tiny_run_writes_every_output(tmp_path, capsys, backend):
    if backend == "cpu":
        pytest.importorskip("numba")
    out = tmp_path / "intro"
    code, stdout, err = run_cli(["intro", "--points", "3", "--fits", "2", "--steps", "50", "--batch-size", "32",
                                 "--backend", backend, "--no-progress", "--out", str(out)], capsys)
    assert code == 0, err
    for f in ["spec.json", "summary.json", "README.txt", *intro.EXPERIMENT.outputs]:
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    assert {c["name"] for c in summary["checks"]} == {"dense-keeps-m", "sparse-pentagon"}
    assert len(pq.read_table(out / "instances.parquet")) == 6 and len(pq.read_table(out / "features.parquet")) == 15
    assert "check " in stdout and "features represented by density" in stdout
    inst = pq.read_table(out / "instances.parquet").to_pydict()  # the drawn fit: lowest expected loss
    for d in range(3):
        fits = [2 * d, 2 * d + 1]
        assert [inst["kept"][k] for k in fits] == [k == min(fits, key=lambda j: inst["expected_loss"][j]) for k in fits]


def intro_checks(tmp_path, W_by_point, fits=1):
    spec = intro.IntroSpec(points=len(W_by_point), fits=fits)
    W = torch.stack(W_by_point)
    res = {"models": JobResult(W, torch.zeros(len(W_by_point), 5), torch.arange(len(W_by_point), dtype=torch.float32))}
    run = RunDir.open(tmp_path, {"x": 1})
    try:
        return intro.EXPERIMENT.analyse(spec, res, run)
    finally:
        run.close()


def test_intro_checks_pass_on_the_paper_geometry_and_fail_otherwise(tmp_path):
    good = intro_checks(tmp_path / "a", [two_dedicated(), pentagon()])
    assert checks_of(good) == {"dense-keeps-m": True, "sparse-pentagon": True}
    # Two dedicated features at the sparse end: mean D_i is 2/5 too, but it is no pentagon.
    bad = intro_checks(tmp_path / "b", [pentagon(), two_dedicated()])
    assert checks_of(bad) == {"dense-keeps-m": False, "sparse-pentagon": False}
    # Five represented but squashed (not evenly spread): D_i away from 2/5.
    a = np.array([0, 0.3, 0.6, 0.9, 1.2])
    squashed = torch.tensor(np.stack([np.cos(a), np.sin(a)]), dtype=torch.float32)
    assert not checks_of(intro_checks(tmp_path / "c", [two_dedicated(), squashed]))["sparse-pentagon"]
    # A fan 36 degrees apart: a tight frame, every D_i = 2/5 (passed before), but no pentagon.
    a = np.radians(36.0 * np.arange(5))
    fan = torch.tensor(np.stack([np.cos(a), np.sin(a)]), dtype=torch.float32)
    fanned = intro_checks(tmp_path / "d", [two_dedicated(), fan])
    assert not checks_of(fanned)["sparse-pentagon"] and fanned["checks"][1]["measured"][1] < 0.05
    # Dense: two features kept, but the least important two, antipodal in one dimension (passed before).
    antipodal = torch.zeros(2, 5)
    antipodal[0, 3], antipodal[0, 4] = 1.0, -1.0
    assert not checks_of(intro_checks(tmp_path / "e", [antipodal, pentagon()]))["dense-keeps-m"]


def test_intro_draws_the_lowest_expected_loss_fit(tmp_path):
    """Per density the fit with the lowest expected loss is drawn, whatever the training-loss window
    (planted here to prefer the worse model) says: at density 1 two dedicated features beat an empty
    model, at 1/20 the pentagon beats two dedicated features (bias 0: expected losses 0.145 and
    sum_i 0.9^i / 15 = 0.273; 0.0030 and 0.0073)."""
    spec = intro.IntroSpec(points=2, fits=3)
    empty = torch.zeros(2, 5)
    W = torch.stack([two_dedicated(), empty, empty, pentagon(), two_dedicated(), two_dedicated()])
    window = torch.tensor([0.5, 0.1, 0.2, 0.4, 0.1, 0.2])  # prefers the worse model at both densities
    res = {"models": JobResult(W, torch.zeros(6, 5), window)}
    run = RunDir.open(tmp_path, {"x": 1})
    summary = intro.EXPERIMENT.analyse(spec, res, run)
    run.close()
    assert summary["represented"] == [2, 5]
    inst = pq.read_table(tmp_path / "instances.parquet").to_pydict()
    assert inst["kept"] == [True, False, False, True, False, False]
    # the empty model's loss is exact up to the grid's midpoint bias (8 points per axis: -0.4%)
    assert inst["expected_loss"][1] == pytest.approx(sum(0.9 ** i for i in range(5)) / 15, rel=5e-3)


def test_basic_tiny_run_writes_every_output(tmp_path, capsys):
    pytest.importorskip("numba")
    out = tmp_path / "basic"
    code, stdout, err = run_cli(["basic", "--fits", "2", "--steps", "30", "--batch-size", "16", "--backend", "cpu",
                                 "--no-progress", "--out", str(out)], capsys)
    assert code == 0, err
    for f in ["spec.json", "summary.json", *basic.EXPERIMENT.outputs]:
        assert (out / f).is_file(), f
    inst = pq.read_table(out / "instances.parquet").to_pydict()
    assert sorted(set(inst["variant"])) == ["linear", "relu-output"] and len(inst["variant"]) == 28
    for lo in range(0, 28, 2):  # per variant and density, the drawn fit has the lowest expected loss
        best = min((lo, lo + 1), key=lambda k: inst["expected_loss"][k])
        assert [inst["kept"][lo], inst["kept"][lo + 1]] == [lo == best, lo + 1 == best]
    w = json.loads((out / "spec.json").read_text())
    assert set(w["plan"]["chunk_size"]) == {"linear", "relu-output"}


def basic_checks(tmp_path, W_linear, W_relu):
    """Checks of the basic experiment for one model per density (7) per variant."""
    spec = basic.BasicSpec(fits=1)
    res = {v: JobResult(torch.stack(W), torch.zeros(7, 20), torch.zeros(7)) for v, W in
           (("linear", W_linear), ("relu-output", W_relu))}
    run = RunDir.open(tmp_path, {"x": 1})
    try:
        return checks_of(basic.EXPERIMENT.analyse(spec, res, run))
    finally:
        run.close()


def test_basic_checks_on_hand_made_models(tmp_path, monkeypatch):
    # One fit per density: the expected-loss ranking has nothing to choose, so a small sample keeps it cheap.
    monkeypatch.setattr(basic.EXPERIMENT, "ranking_rows", 1024)
    top5 = torch.zeros(5, 20)
    top5[range(5), range(5)] = 1.0  # the 5 most important features, dedicated
    other5 = torch.zeros(5, 20)
    other5[range(5), range(5, 10)] = 1.0  # 5 features, but not the top ones
    sup = torch.zeros(5, 20)  # 10 features as 5 antipodal pairs
    sup[range(5), range(5)] = 1.0
    sup[range(5), range(5, 10)] = -1.0
    good = basic_checks(tmp_path / "a", [top5] * 7, [top5] * 4 + [sup] * 3)
    assert good == {"linear-keeps-top-m": True, "relu-dense-like-linear": True, "relu-superposes-when-sparse": True}
    bad = basic_checks(tmp_path / "b", [top5] * 6 + [other5], [sup] + [top5] * 6)
    assert bad == {"linear-keeps-top-m": False, "relu-dense-like-linear": False, "relu-superposes-when-sparse": False}
    # An audit's models: the top 5 represented with two of them antipodal in one dimension (norms alone
    # passed), and a sparse model of 4 dedicated features and one antipodal pair (6 represented, 2 in
    # superposition: passed as "superposes").
    pair = top5.clone()
    pair[4, 4], pair[3, 4] = 0.0, -1.0  # feature 4 antipodal to feature 3, dimension 4 unused
    one_pair = top5.clone()
    one_pair[3, 5] = -1.0  # feature 5 antipodal to feature 3
    wrong = basic_checks(tmp_path / "c", [top5] * 6 + [pair], [pair] + [top5] * 3 + [one_pair] * 3)
    assert wrong == {"linear-keeps-top-m": False, "relu-dense-like-linear": False,
                     "relu-superposes-when-sparse": False}
    # A review's: two of the top 5 at cos 0.69 (s = 0.48, under the 0.5 that means "in superposition").
    tilted = top5.clone()
    tilted[3, 4], tilted[4, 4] = 0.69, math.sqrt(1 - 0.69 ** 2)
    got = basic_checks(tmp_path / "d", [top5] * 6 + [tilted], [tilted] + [sup] * 6)
    assert got == {"linear-keeps-top-m": False, "relu-dense-like-linear": False, "relu-superposes-when-sparse": True}
