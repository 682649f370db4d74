"""engine.load_run: a finished run directory read back in one call, and refused in one line when it is not one."""
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

import engine
from engine.errors import SpecError
from engine.experiments import basic, runner


@pytest.fixture(scope="module")
def basic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "basic"
    spec = basic.BasicSpec(fits=2, steps=20, batch_size=16, backend="torch")
    runner.run(basic.EXPERIMENT, spec, out, progress=False, log=lambda m: None)
    return out


def test_load_run_holds_every_file_of_the_run(basic_run):
    run = engine.load_run(basic_run)
    assert run.root == basic_run and run.experiment == "basic"
    assert run.spec == json.loads((basic_run / "spec.json").read_text())
    assert run.summary["checks_total"] == len(run.checks) == 3
    assert set(run.tables) == {"instances", "features"}
    for name, columns in run.tables.items():
        table = pq.read_table(basic_run / f"{name}.parquet").to_pydict()
        assert list(columns) == list(table)
        for col, values in columns.items():
            assert isinstance(values, np.ndarray) and values.tolist() == table[col], (name, col)
    inst = run.tables["instances"]
    assert {"instance", "fit", "final_loss", "expected_loss", "diverged", "kept"} <= set(inst)
    assert inst["variant"].dtype == object and set(inst["variant"]) == {"linear", "relu-output"}
    saved = load_file(str(basic_run / "weights.safetensors"))
    assert set(run.weights) == set(saved) and all(torch.equal(run.weights[k], saved[k]) for k in saved)
    assert run.weights["W_relu-output"].shape == (2 * len(basic.DENSITIES), 5, 20)
    assert [p.name for p in run.figures] == ["basic.png"]
    assert engine.load_run(str(basic_run)).summary == run.summary  # a str path too


def test_load_run_refuses_what_is_not_a_finished_run(basic_run, tmp_path):
    with pytest.raises(SpecError, match="run: must be an existing run directory"):
        engine.load_run(tmp_path / "missing")
    with pytest.raises(SpecError, match="run: must be a finished run directory .*spec.json and summary.json"):
        engine.load_run(tmp_path)  # empty: not a run, or one cut short before its summary
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in ("spec.json", "summary.json", "instances.parquet"):
        (damaged / f).write_bytes((basic_run / f).read_bytes())
    (damaged / "summary.json").write_text('{"checks": [')
    with pytest.raises(SpecError, match="summary.json is readable JSON") as e:
        engine.load_run(damaged)
    assert e.value.field == "run"
    (damaged / "summary.json").write_bytes((basic_run / "summary.json").read_bytes())
    (damaged / "instances.parquet").write_bytes(b"not parquet")
    with pytest.raises(SpecError, match="instances.parquet is a readable Parquet table"):
        engine.load_run(damaged)
    (damaged / "instances.parquet").unlink()
    (damaged / "weights.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(SpecError, match="weights.safetensors is readable"):
        engine.load_run(damaged)


def test_importing_engine_does_not_import_the_reader():
    """load_run comes on first use: training never needs pyarrow."""
    code = "import sys, engine; print('pyarrow' in sys.modules); engine.load_run; print('engine.results' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def test_readme_txt_says_how_to_read_the_run(basic_run, tmp_path, monkeypatch):
    """Every run's README.txt gives the load_run line, with the directory's absolute path: it works
    from anywhere."""
    lines = (basic_run / "README.txt").read_text().splitlines()
    code = lines[lines.index("Read it in Python (tables, weights, checks):") + 1].strip()
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(code, scope)
    assert scope["run"].root == basic_run.resolve() and scope["run"].experiment == "basic"
