"""Bad input found by a hostile probe (stop 20): each is refused with one line naming the field and its
range, where before it hung, was silently ignored or wrong, or raised a raw traceback."""
import json

import numpy as np
import pytest
import torch

from engine import DataSpec, ModelSpec, SpecError, TrainSpec, metrics, theory, train
from test_experiment_intro_basic import run_cli as cli  # `supbench run <args>` in process: (code, stdout, stderr)


@pytest.mark.parametrize("args, message", [
    # a step count past the schedule table's size hung, building a row per step
    (["intro", "--steps", "99999999999999999999999"], "--steps: must be an integer in [1, 10000000]"),
    # click's own parse errors gave no range
    (["intro", "--steps", "nan"], "--steps: must be an integer in [1, 10000000] (got 'nan')"),
    (["intro", "--lr", "abc"], "--lr: must be a number in [2^-126, 10] (got 'abc')"),
    # an lr that is 0 in float32 trained nothing, silently
    (["intro", "--lr", "1e-320"], "--lr: must be a number in [2^-126, 10]"),
    # one point dropped an end of the range, silently
    (["intro", "--points", "1"], "--points: must be an integer in [2, 1000]"),
    (["correlated", "--points", "1"], "--points: must be an integer in [2, 1000]"),
    (["phase-diagram", "--grid", "1"], "--grid: must be an integer in [2, 1024]"),
    # densities below float32's resolution named a --feature-probability option that does not exist
    (["intro", "--density-min", "1e-9"], "--density-min: must be a number in [2^-24, 1]"),
    (["non-uniform", "--density", "0.00001"], "--rel-min: must be at least 2^-24 / density"),
    # double-descent trains on its whole dataset: a batch size was recorded but never used
    (["double-descent", "--batch-size", "7"], "--batch-size: must be left at its default, 1024"),
    (["double-descent", "--points", "100", "--examples-min", "1", "--examples-max", "2"], "--points: must be at most 2"),
    # tf32 on a CPU was recorded in spec.json but every matmul was fp32
    (["intro", "--precision", "tf32", "--backend", "torch"] if not torch.cuda.is_available() else
     ["intro", "--precision", "tf32", "--backend", "cpu"], "--precision: must be fp32 on the"),
])
def test_cli_refuses_in_one_line(args, message, capsys, tmp_path):
    code, out, err = cli([*args, "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def test_threads_apply_to_the_torch_backend_on_a_cpu(capsys, tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("the torch backend runs on the GPU here")
    before, seen = torch.get_num_threads(), []
    set_threads = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda k: (seen.append(k), set_threads(k)))
    code, _, err = cli(["intro", "--points", "2", "--fits", "1", "--steps", "5", "--batch-size", "8", "--threads", "1",
                        "--backend", "torch", "--no-progress", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r/summary.json").read_text())["environment"]["threads"] == 1
    assert seen[0] == 1 and torch.get_num_threads() == before  # set for the run, then restored


@pytest.mark.parametrize("make, field", [
    (lambda: TrainSpec(lr="0.1"), "lr"),          # a number string was stored as given: TypeError in training
    (lambda: TrainSpec(weight_decay="0.01"), "weight_decay"),
    (lambda: TrainSpec(eps="1e-8"), "eps"),
    (lambda: TrainSpec(lr=True), "lr"),
    (lambda: TrainSpec(eps=1e-320), "eps"),      # 0 in float32: a division by zero where the gradient is 0
    (lambda: TrainSpec(steps=10**30), "steps"),
    (lambda: DataSpec(np.full((1, 3), 0.5), np.full(3, 1e39)), "importance"),  # NaN loss, silently
    (lambda: DataSpec([[0.5, 0.5], [0.5]]), "feature_probability"),            # ragged
    (lambda: DataSpec(np.array([[0.5 + 1j, 0.5]])), "feature_probability"),   # complex: imaginary part dropped
    (lambda: DataSpec(np.full((1, 3), 0.5), ["a", "b", "c"]), "importance"),
    (lambda: train(ModelSpec(3, 2), DataSpec(np.full((1, 3), 0.5)), {"steps": 5}), "training"),
    (lambda: train(None, DataSpec(np.full((1, 3), 0.5))), "model"),
    (lambda: train(ModelSpec(3, 2), DataSpec(np.full((1, 3), 0.5)), TrainSpec(steps=2), backend="torch",
                   device="foo", progress=False), "device"),
    (lambda: train(ModelSpec(3, 2), DataSpec(np.full((1, 3), 0.5)), TrainSpec(steps=2), backend="torch",
                   device="meta", progress=False), "device"),
    (lambda: metrics.feature_norms(torch.ones(2, 3)), "W"),  # a 2-D W was read along the wrong axis
    (lambda: metrics.superposition([]), "W"),
    (lambda: metrics.classify(np.ones(3), np.ones(2)), "sup"),
    (lambda: metrics.nearest_fraction([0.5], tol=-1), "tol"),
    (lambda: theory.phase(2, float("nan"), 1.0), "density"),  # returned "not represented"
    (lambda: theory.phase(2, 0.5, -3.0), "rel_importance"),
    (lambda: theory.phase(4, 0.5, 1.0), "features"),
])
def test_api_refuses_by_field(make, field):
    with pytest.raises(SpecError) as e:
        make()
    assert e.value.field == field and "\n" not in str(e.value)


def test_api_normalises_what_it_accepts():
    t = TrainSpec(lr=np.float32(0.01), beta1=torch.tensor(0.8))
    assert type(t.lr) is float and type(t.beta1) is float and TrainSpec.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert DataSpec(np.full((1, 3), 0.5), sets=None).sets == ()
    p = torch.full((2, 3), 0.5, requires_grad=True)
    assert DataSpec(p).feature_probability.shape == (2, 3)
    assert torch.isinf(metrics.dimensions_per_feature(torch.zeros(2, 2, 3))).all()  # no feature stored: D* = inf


def test_every_number_option_refuses_text_by_name():
    """The CLI hands unparsable number text to the spec (for a message with the range): every int and
    float field of every experiment must refuse it under its own name, never let it through."""
    from engine.experiments import EXPERIMENTS
    from engine.experiments.base import spec_fields
    for name, exp in EXPERIMENTS.items():
        for f, typ in spec_fields(exp.spec_cls):
            if typ in (int, float):
                with pytest.raises(SpecError) as e:
                    exp.make_spec(**{f.name: "abc"})
                assert e.value.field == f.name, (name, f.name)


def test_train_refuses_a_call_too_big_for_memory():
    """ModelSpec has no upper bound of its own: a model of 10^5 x 10^5 (W alone 40 GB) must be refused
    with the figure before anything is allocated, as the CLI's sweeps are (experiments/memory.py)."""
    from engine.memory import check_train_fits
    args = (ModelSpec(100_000, 100_000), DataSpec(np.full((1, 100_000), 0.5)), TrainSpec(steps=2, batch_size=4))
    with pytest.raises(SpecError, match="memory: must be enough for this call") as e:
        train(*args, backend="torch", progress=False)
    assert "GiB" in str(e.value) and "\n" not in str(e.value)
    small = (ModelSpec(5, 2), DataSpec(np.full((3, 5), 0.5)), TrainSpec(steps=2, batch_size=4))
    assert 0 < check_train_fits(*small, "torch", 3) < 1 << 20
    with pytest.raises(SpecError, match="memory"):
        check_train_fits(*small, "torch", 3, available=1000)
