import numpy as np
import pytest

from engine import DataSpec, ModelSpec, SpecError, TrainSpec


@pytest.mark.parametrize("kwargs, field", [
    (dict(n_features=0, n_hidden=1), "n_features"),
    (dict(n_features=3, n_hidden=-1), "n_hidden"),
    (dict(n_features=3, n_hidden=1, variant="tanh"), "variant"),
])
def test_model_spec_rejects(kwargs, field):
    with pytest.raises(SpecError) as e:
        ModelSpec(**kwargs)
    assert e.value.field == field and field in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, field", [
    (dict(steps=0), "steps"), (dict(batch_size=-3), "batch_size"), (dict(lr=0.0), "lr"),
    (dict(optimizer="sgd"), "optimizer"), (dict(schedule="step"), "schedule"),
    (dict(precision="bf16"), "precision"), (dict(weight_decay=-1), "weight_decay"), (dict(seed=-1), "seed"),
    (dict(steps=2.5), "steps"),
])
def test_train_spec_rejects(kwargs, field):
    with pytest.raises(SpecError) as e:
        TrainSpec(**kwargs)
    assert e.value.field == field


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, np.nan])
def test_data_spec_rejects_probability_outside_unit_interval(p):
    with pytest.raises(SpecError, match=r"feature_probability: must be in \[2\^-24"):
        DataSpec(np.full((2, 3), p))


def test_data_spec_broadcasts_importance_and_round_trips():
    d = DataSpec(np.full((4, 3), 0.5), 0.7 ** np.arange(3))
    assert d.importance.shape == (4, 3) and d.n_instances == 4 and d.n_features == 3
    d2 = DataSpec.from_dict(d.to_dict())
    assert np.array_equal(d2.importance, d.importance) and np.array_equal(d2.feature_probability, d.feature_probability)
    with pytest.raises(SpecError, match="importance"):
        DataSpec(np.full((4, 3), 0.5), np.ones(5))


def test_specs_given_numpy_numbers_write_plain_json():
    """A researcher's numpy integers (np.arange, a sweep grid) are stored as Python ints: to_dict() and
    spec.json must be plain JSON (json.dumps refused numpy int64 before)."""
    import json

    from engine.experiments import phase_diagram

    m = ModelSpec(np.int64(5), np.int32(2))
    t = TrainSpec(steps=np.int64(50), batch_size=np.int16(7), seed=np.uint8(3))
    d = DataSpec(np.full((1, 2), 0.5), examples=np.int64(4))
    assert json.loads(json.dumps(m.to_dict())) == {"n_features": 5, "n_hidden": 2, "variant": "relu-output"}
    assert json.loads(json.dumps(t.to_dict()))["steps"] == 50 and type(t.seed) is int and type(d.examples) is int
    spec = phase_diagram.EXPERIMENT.spec_cls(steps=np.int64(100), lr=np.float32(0.5), seed=np.int64(2))
    assert json.loads(json.dumps(spec.fields_dict()))["steps"] == 100 and type(spec.lr) is float


def test_train_spec_round_trip_and_schedules():
    t = TrainSpec(steps=101, schedule="cosine")
    assert TrainSpec.from_dict(t.to_dict()) == t
    assert t.lr_at(0) == pytest.approx(1e-3) and t.lr_at(100) == pytest.approx(0.0, abs=1e-12)
    lin = TrainSpec(steps=10, schedule="linear")
    assert lin.lr_at(5) == pytest.approx(0.5e-3)
    assert TrainSpec().lr_at(9999) == 1e-3


def test_settings_that_cannot_train_are_refused():
    """Found by a hostile test: AdamW with lr * wd >= 1 flips or zeroes the weights every step (every
    model NaN), and a probability below float32's resolution makes 0 * inf = NaN features."""
    import numpy as np
    import pytest
    from engine import DataSpec, SpecError, TrainSpec
    with pytest.raises(SpecError, match="weight_decay"):
        TrainSpec(lr=3, weight_decay=1)
    TrainSpec(lr=3, weight_decay=1, optimizer="adam")  # L2 decay: no such flip
    TrainSpec(lr=0.9, weight_decay=1)
    with pytest.raises(SpecError, match="feature_probability"):
        DataSpec(np.full((1, 2), 1e-40))
    DataSpec(np.full((1, 2), 2.0**-24))


def test_train_refuses_bad_arguments_by_name():
    import numpy as np
    import pytest
    import torch
    from engine import BackendUnavailable, DataSpec, ModelSpec, SpecError, TrainSpec, train
    args = (ModelSpec(3, 2), DataSpec(np.full((2, 3), 0.5)), TrainSpec(steps=2, batch_size=4))
    for kw, field in (({"chunk_size": -1}, "chunk_size"), ({"history_every": -5}, "history_every"),
                      ({"first_instance": -1}, "first_instance")):
        with pytest.raises(SpecError, match=field):
            train(*args, backend="torch", progress=False, **kw)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="CUDA"):
            train(*args, backend="torch", device="cuda", progress=False)
