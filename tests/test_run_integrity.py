"""Run integrity (#11): a run directory never lies. Diverged instances are flagged and left out of
the analysis; chunks are tied to the spec that made them; damaged files are named and retrained;
existing files are never overwritten by an unrelated run."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from engine import metrics
from engine.experiments import phase_diagram as pd
from engine.experiments import runner
from engine.experiments.base import best_of_fits

QUIET = dict(progress=False, log=lambda m: None)


def _planted(monkeypatch, instance: int):
    """Make phase-diagram instance ``instance`` diverge: dense features with an importance whose
    weighted loss overflows float32 (inf loss)."""
    real = pd.data_spec

    def data_spec(spec, table):
        d = real(spec, table)
        d.importance[instance] = 3e38
        d.feature_probability[instance] = 1.0
        return d

    monkeypatch.setattr(pd, "data_spec", data_spec)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_a_planted_diverging_instance_is_flagged_and_the_others_are_untouched(backend, tmp_path, monkeypatch):
    spec = pd.PhaseDiagramSpec(grid=3, seeds=2, steps=40, batch_size=16, backend=backend)
    clean = runner.run(pd.EXPERIMENT, spec, tmp_path / "clean", **QUIET)
    _planted(monkeypatch, 3)
    logs = []
    summary = runner.run(pd.EXPERIMENT, spec, tmp_path / "planted", progress=False, log=logs.append)

    assert summary["diverged_instances"] == {"models": 1} and clean["diverged_instances"] == {"models": 0}
    assert any("1 of 18 models instances diverged" in m for m in logs), logs
    inst = pq.read_table(tmp_path / "planted" / "instances.parquet").to_pydict()
    assert inst["diverged"] == [i == 3 for i in range(18)]
    assert inst["phase"][3] == "diverged" and not inst["kept"][3]  # never classified, never kept
    a, b = (load_file(str(tmp_path / d / "weights.safetensors")) for d in ("clean", "planted"))
    others = torch.arange(18) != 3
    assert torch.equal(a["W"][others], b["W"][others]) and torch.equal(a["b"][others], b["b"][others])
    # Instance 3 is seed 1 of cell 1: that cell's phase comes from seed 0 alone.
    cells = pq.read_table(tmp_path / "planted" / "cells.parquet").to_pydict()
    assert cells["seeds_diverged"][1] == 1 and cells["seeds_kept"][1] == 1
    assert cells["empirical_phase"][1] != "diverged"


def test_a_cell_whose_seeds_all_diverged_is_excluded_from_the_agreement():
    spec = pd.PhaseDiagramSpec(grid=2, seeds=2, steps=10)
    W = torch.zeros(8, 1, 2)
    W[:, 0, :] = torch.tensor([1.0, 0.0])  # extra feature not represented everywhere
    loss = np.full(8, 0.1)
    W[0:2] = float("nan")                  # cell 0: both seeds diverged
    loss[0:2] = np.nan
    inst, cells, agreement, by_protocol = pd.analyse(spec, W, loss, np.isnan(loss))
    assert cells["empirical_phase"][0] == "diverged" and cells["seeds_kept"][0] == 0
    emp = np.array(cells["empirical_phase"][1:])
    assert agreement == pytest.approx(np.mean(emp == np.array(cells["theory_phase"][1:])))
    everything = np.full(8, True)
    _, cells, agreement, _ = pd.analyse(spec, W, loss, everything)
    assert np.isnan(agreement) and set(cells["empirical_phase"]) == {"diverged"}


def test_nan_is_never_classified():
    phase = metrics.classify(np.array([np.nan, 1.0, np.inf, 1.0]), np.array([0.0, np.nan, 0.0, 0.0]))
    assert phase.tolist() == [metrics.DIVERGED, metrics.DIVERGED, metrics.DIVERGED, metrics.DEDICATED]


def test_best_of_fits_never_picks_a_diverged_fit_even_with_a_finite_loss():
    loss = np.array([0.1, 0.5, 0.3, 0.2])
    diverged = np.array([True, False, False, False])  # e.g. weights NaN after the last update
    assert best_of_fits(loss, 2, diverged).tolist() == [1, 3]
    assert best_of_fits(loss, 2).tolist() == [0, 3]


# --- Findings 2-4 and 6 of the hostile test: each failed on the code before the fix. ---------------

TINY = ["--grid", "3", "--seeds", "2", "--steps", "30", "--batch-size", "16", "--backend", "torch", "--no-progress"]


def run_cli(args, capsys):
    from engine.cli import main
    with pytest.raises(SystemExit) as e:
        main(["run", "phase-diagram", *args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _weights(path):
    w = load_file(str(path / "weights.safetensors"))
    return w["W"], w["b"]


def test_chunks_of_another_spec_are_never_reported_as_this_ones(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert run_cli([*TINY, "--out", out], capsys)[0] == 0
    spec_path = tmp_path / "r/spec.json"
    spec = json.loads(spec_path.read_text())
    spec["seed"] = 1  # edit spec.json to say another seed made these chunks
    spec_path.write_text(json.dumps(spec))
    code, _, err = run_cli([*TINY, "--seed", "1", "--out", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "models_000000000-000000003.safetensors" in err and "another spec" in err


def test_a_directory_without_spec_json_is_never_overwritten(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert run_cli([*TINY, "--out", out], capsys)[0] == 0
    (tmp_path / "r/spec.json").unlink()
    before = (tmp_path / "r/summary.json").read_bytes()
    code, _, err = run_cli([*TINY, "--seed", "3", "--out", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no spec.json" in err, err
    assert (tmp_path / "r/summary.json").read_bytes() == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other/cells.parquet").write_text("someone's results")
    code, _, err = run_cli([*TINY, "--out", str(tmp_path / "other")], capsys)
    assert code == 2 and "cells.parquet" in err
    assert (tmp_path / "other/cells.parquet").read_text() == "someone's results"


def test_out_empty_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli([*TINY, "--out", ""], capsys)
    assert code == 2 and "--out: must be a directory path" in err and list(tmp_path.iterdir()) == []


def test_a_damaged_chunk_is_named_and_retrained(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert run_cli([*TINY, "--out", out], capsys)[0] == 0
    W0, b0 = _weights(tmp_path / "r")
    chunks = sorted((tmp_path / "r/chunks").glob("*.safetensors"))
    chunks[0].write_bytes(b"")                                # empty (as after a power loss)
    chunks[1].write_bytes(chunks[1].read_bytes()[:-40])      # truncated
    code, _, err = run_cli([*TINY, "--out", out], capsys)
    assert code == 0, err
    assert f"{chunks[0].name} is damaged" in err and f"{chunks[1].name} is damaged" in err
    W1, b1 = _weights(tmp_path / "r")
    assert torch.equal(W0, W1) and torch.equal(b0, b1)


def test_damaged_or_impossible_checkpoints_are_discarded(tmp_path):
    """A truncated checkpoint, and one whose step is past the end (accepted before: negative
    throughput), are named and discarded; the chunk retrains from its start to the same result."""
    spec = pd.PhaseDiagramSpec(grid=2, seeds=1, steps=30, batch_size=16, backend="torch", chunk_size=4)
    whole = runner.run(pd.EXPERIMENT, spec, tmp_path / "r", **QUIET)
    W0, b0 = _weights(tmp_path / "r")
    chunk = next((tmp_path / "r/chunks").glob("*.safetensors"))
    meta_key = runner.chunk_key(pd.EXPERIMENT.identity(spec), "models", 0, 4, "torch-cpu")
    tensors = load_file(str(chunk))
    from engine.store import write_tensors
    partial = chunk.with_name(chunk.name.replace(".safetensors", ".partial.safetensors"))
    for damage in ("past-end", "truncated"):
        write_tensors(partial, {**tensors, "next_step": torch.tensor(35)}, metadata={"spec_hash": meta_key})
        if damage == "truncated":
            partial.write_bytes(partial.read_bytes()[:50])
        chunk.unlink()
        logs = []
        summary = runner.run(pd.EXPERIMENT, spec, tmp_path / "r", progress=False, log=logs.append)
        assert any("discarded a checkpoint" in m and partial.name in m for m in logs), logs
        assert summary["instance_steps_trained"] == 4 * 30 and summary["instance_steps_per_second"] > 0
        W1, b1 = _weights(tmp_path / "r")
        assert torch.equal(W0, W1) and torch.equal(b0, b1) and not partial.exists()
    assert whole["chunks_trained"] == 1


def test_a_spec_json_holding_null_is_named(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert run_cli([*TINY, "--out", out], capsys)[0] == 0
    (tmp_path / "r/spec.json").write_text("null")
    code, _, err = run_cli([*TINY, "--out", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "spec.json is damaged" in err, err


def test_orphan_temporary_files_are_removed(tmp_path, capsys):
    """A writer killed by SIGKILL between write and rename leaves .<name>.tmp behind."""
    out = str(tmp_path / "r")
    assert run_cli([*TINY, "--out", out], capsys)[0] == 0
    orphan = tmp_path / "r/chunks/.models_000000000-000000003.safetensorsabc.tmp"
    orphan.write_bytes(b"half a chunk")
    assert run_cli([*TINY, "--out", out], capsys)[0] == 0
    assert not orphan.exists()


def test_a_chunk_that_runs_out_of_memory_is_split_and_retried(tmp_path, monkeypatch):
    """cpu backend: its batches are keyed by (seed, instance, step), so the split chunks train to
    exactly the unsplit result; the split is recorded in spec.json, so a resume keeps it."""
    pytest.importorskip("numba")
    from engine import backends
    spec = pd.PhaseDiagramSpec(grid=2, seeds=3, steps=20, batch_size=16, backend="cpu")
    runner.run(pd.EXPERIMENT, spec, tmp_path / "whole", **QUIET)
    real = backends.train_chunk_fn("cpu")

    def small_memory(model, p, *a, **k):
        if len(p) > 4:
            raise MemoryError
        return real(model, p, *a, **k)

    monkeypatch.setattr(backends, "train_chunk_fn", lambda name: small_memory)
    logs = []
    summary = runner.run(pd.EXPERIMENT, spec, tmp_path / "split", progress=False, log=logs.append)
    assert summary["plan"]["chunks"]["models"] == [[0, 3], [3, 6], [6, 9], [9, 12]]
    assert json.loads((tmp_path / "split/spec.json").read_text())["plan"]["chunks"] == summary["plan"]["chunks"]
    assert sum("ran out of memory" in m for m in logs) == 3
    a, b = (load_file(str(tmp_path / d / "weights.safetensors")) for d in ("whole", "split"))
    assert torch.equal(a["W"], b["W"]) and torch.equal(a["b"], b["b"])


# --- Finding 5: memory ------------------------------------------------------------------------------

def test_a_sweep_too_big_for_memory_is_refused_with_the_figure_before_anything_is_built(tmp_path, capsys):
    """The hostile test's example: it passed validation and died with a MemoryError traceback (here,
    on a 24 GiB machine, the OOM killer took it while it listed its instances)."""
    code, _, err = run_cli(["--grid", "1024", "--seeds", "1000", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("supbench: error: memory: must be enough") or "memory: must be enough" in err
    assert "GiB" in err and "1,048,576,000 instances" in err and not (tmp_path / "r").exists()


def test_an_explicit_chunk_too_big_for_memory_is_named():
    from engine.errors import SpecError
    from engine.experiments import memory
    spec = pd.PhaseDiagramSpec(grid=100, seeds=10, chunk_size=100_000, backend="torch")
    sizes = pd.EXPERIMENT.job_sizes(spec)
    with pytest.raises(SpecError) as e:
        memory.check_fits(sizes, spec, "torch", "cpu", available=1 << 30)
    assert e.value.field == "chunk_size" and "100,000 instances needs about" in e.value.allowed
    small = pd.PhaseDiagramSpec(grid=100, seeds=10, chunk_size=1000, backend="torch")
    assert memory.check_fits(pd.EXPERIMENT.job_sizes(small), small, "torch", "cpu", available=1 << 30) < 1 << 30


def _experiment_names():
    from engine.experiments import EXPERIMENTS
    return list(EXPERIMENTS)


@pytest.mark.parametrize("name", _experiment_names())
@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_an_experiments_arithmetic_job_sizes_match_its_jobs(name, preset):
    """Every experiment sizes its jobs by arithmetic (the memory check runs before anything is built)
    and the figures are those of the jobs it then builds."""
    from engine.experiments import EXPERIMENTS
    from engine.experiments.base import Experiment
    exp = EXPERIMENTS[name]
    spec = exp.make_spec(**exp.presets[preset])
    assert type(exp).job_sizes is not Experiment.job_sizes, "override job_sizes with arithmetic"
    assert exp.job_sizes(spec) == Experiment.job_sizes(exp, spec)


# --- Findings of the review of the first version (each failed on it) --------------------------------

def _nan_instances(monkeypatch, job: str, indices, loss_only=False):
    """Make the given global instances of ``job`` come back diverged from training."""
    from engine import backends
    real = backends.train_chunk_fn

    def fn_for(name):
        inner = real(name)

        def train_chunk(model, p, imp, train, first, **k):
            params, loss, hist = inner(model, p, imp, train, first, **k)
            for i in indices:
                if first <= i < first + len(loss) and k.get("_job", job) == job:
                    loss[i - first] = float("inf")
                    if not loss_only:
                        params["W"][i - first] = float("nan")
            return params, loss, hist
        return train_chunk

    monkeypatch.setattr(backends, "train_chunk_fn", fn_for)


def test_a_check_over_a_nan_never_passes():
    from engine.experiments.base import check
    assert not check("x", "c", [1.0, float("nan")], True, "e")["passed"]
    assert not check("x", "c", {"a": float("-inf")}, True, "e")["passed"]
    assert check("x", "c", [1.0, 2], True, "e")["passed"]


def test_a_run_with_a_diverged_instance_reports_a_failed_check(tmp_path, monkeypatch):
    _nan_instances(monkeypatch, "models", [0])
    spec = pd.PhaseDiagramSpec(grid=2, seeds=2, steps=20, batch_size=16, backend="torch")
    summary = runner.run(pd.EXPERIMENT, spec, tmp_path, **QUIET)
    failed = [c for c in summary["checks"] if c["name"] == "no-divergence"]
    assert failed and not failed[0]["passed"] and failed[0]["measured"] == {"models": 1}


def test_every_instance_diverged_is_one_line_and_no_analysis(tmp_path, capsys, monkeypatch):
    _nan_instances(monkeypatch, "models", range(100))
    code, out, err = run_cli([*TINY, "--out", str(tmp_path / "r")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "every models instance diverged" in err, err
    summary = json.loads((tmp_path / "r/summary.json").read_text())
    assert summary["diverged_instances"] == {"models": 18} and not (tmp_path / "r/cells.parquet").exists()


def test_adversarial_never_passes_a_check_on_a_point_without_a_trained_model(tmp_path, monkeypatch):
    """The review's case: both linear fits at the densest point diverged; linear-flat passed with -0.0."""
    from engine.experiments import adversarial as adv
    spec = adv.AdversarialSpec(points=3, fits=2, steps=30, batch_size=32, backend="torch", test_samples=500)
    real = runner.train_one

    def planted(fn, job, a, b, device, **k):
        out = real(fn, job, a, b, device, **k)
        if job.name == "linear":
            for i in (0, 1):
                if a <= i < b:
                    out["W"][i - a] = float("nan")
                    out["loss"][i - a] = float("nan")
        return out

    monkeypatch.setattr(runner, "train_one", planted)
    summary = runner.run(adv.EXPERIMENT, spec, tmp_path, **QUIET)
    flat = next(c for c in summary["checks"] if c["name"] == "linear-flat")
    assert not flat["passed"]
    inst = pq.read_table(tmp_path / "instances.parquet").to_pydict()
    assert not any(d and k for d, k in zip(inst["diverged"], inst["kept"]))  # never both


def test_a_torch_cpu_allocation_failure_splits_the_chunk(tmp_path, monkeypatch):
    """torch raises a plain RuntimeError when a CPU allocation fails, not MemoryError."""
    from engine import backends
    real = backends.train_chunk_fn("torch")

    def small_memory(model, p, *a, **k):
        if len(p) > 4:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 123 bytes")
        return real(model, p, *a, **k)

    monkeypatch.setattr(backends, "train_chunk_fn", lambda name: small_memory)
    spec = pd.PhaseDiagramSpec(grid=2, seeds=3, steps=10, batch_size=16, backend="torch", chunk_size=12)
    logs = []
    summary = runner.run(pd.EXPERIMENT, spec, tmp_path, progress=False, log=logs.append)
    assert summary["plan"]["chunks"]["models"] == [[0, 3], [3, 6], [6, 9], [9, 12]]
    recorded = json.loads((tmp_path / "spec.json").read_text())["plan"]
    assert recorded["backend"] == "torch" and recorded["chunks"] == summary["plan"]["chunks"]
    # torch batches depend on the chunking: README.txt says the plan changed and where it lives
    assert "chunk plan changed while it ran" in (tmp_path / "README.txt").read_text()


@pytest.mark.parametrize("damage", ["no plan", "null", "empty chunks", "half covered"])
def test_a_damaged_plan_in_spec_json_is_named(damage, tmp_path, capsys):
    out = str(tmp_path / "r")
    assert run_cli([*TINY, "--out", out], capsys)[0] == 0
    path = tmp_path / "r/spec.json"
    spec = json.loads(path.read_text())
    if damage == "no plan":
        del spec["plan"]
    elif damage == "null":
        spec["plan"] = None
    elif damage == "empty chunks":
        spec["plan"]["chunks"] = {}
    else:
        spec["plan"]["chunks"]["models"] = [[0, 9]]
    path.write_text(json.dumps(spec))
    code, _, err = run_cli([*TINY, "--out", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "spec.json is damaged" in err, err


def test_a_directory_of_hidden_files_is_not_a_run_directory_and_is_left_untouched(tmp_path, capsys):
    d = tmp_path / "home"
    d.mkdir()
    (d / ".notes.tmp").write_text("important")
    (d / ".bashrc").write_text("x")
    code, _, err = run_cli([*TINY, "--out", str(d)], capsys)
    assert code == 2 and ".bashrc" in err
    assert sorted(p.name for p in d.iterdir()) == [".bashrc", ".notes.tmp"]  # nothing deleted, nothing added


def test_the_memory_check_counts_finite_datasets_and_their_batches():
    """Review of #10: double-descent jobs train with batch = T and the torch backend holds the
    dataset; the estimate used the spec's batch (1024) and no dataset (0.65 GiB for ~400 GiB)."""
    from engine.errors import SpecError
    from engine.experiments import double_descent as dd
    from engine.experiments import memory
    spec = dd.DoubleDescentSpec(features=20_000, examples_max=200_000, backend="torch")
    with pytest.raises(SpecError, match="memory"):
        memory.check_fits(dd.EXPERIMENT.job_sizes(spec), spec, "torch", "cpu", available=64 << 30)


def test_a_batch_past_the_32_bit_philox_counter_is_refused():
    """rows x ceil(n/4) Philox calls per instance and step: past 2^32 the cpu kernel's counter
    wrapped (repeated rows) while engine/rng.py's did not."""
    import numpy as np
    from engine import DataSpec, ModelSpec, TrainSpec, train
    from engine.errors import SpecError
    n = 100_000
    with pytest.raises(SpecError, match="batch_size: must be at most 171,798 rows for 100,000 features"):
        train(ModelSpec(n, 2), DataSpec(np.full((1, n), 0.01)), TrainSpec(steps=1, batch_size=200_000),
              backend="torch", progress=False)
