"""The experiment runner (engine/experiments/runner.py): the chunk plan is decided once and recorded,
so resuming under another memory budget, device or backend trains exactly what an uninterrupted run
would have, or is refused with one line."""
import json
from pathlib import Path

import pytest
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from engine import backends
from engine.cli import main
from engine.errors import SpecError
from engine.experiments import EXPERIMENTS, runner
from engine.experiments import phase_diagram as pd

TINY = ["--grid", "3", "--seeds", "2", "--steps", "30", "--batch-size", "16", "--no-progress"]


def run_cli(args, capsys, command=("run", "phase-diagram")):
    with pytest.raises(SystemExit) as e:
        main([*command, *args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_resume_under_another_memory_budget_gives_the_uninterrupted_result(tmp_path, capsys, monkeypatch):
    """Before the plan was recorded, the automatic chunk size was recomputed on resume (it depends on
    the device and its memory budget), so a run cut short on one machine and resumed on another
    died with "cannot reshape array" (or, worse, mixed chunks of two plans)."""
    spec = pd.PhaseDiagramSpec(grid=3, seeds=2, steps=30, batch_size=16, backend="torch")
    monkeypatch.setattr(runner, "default_chunk_size", lambda *a: 3)  # this machine's budget: 3 instances
    runner.run(pd.EXPERIMENT, spec, tmp_path / "whole", progress=False, log=lambda m: None)

    real, calls = backends.train_chunk_fn("torch"), []

    def dies_in_third_chunk(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(backends, "train_chunk_fn", lambda name: dies_in_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        runner.run(pd.EXPERIMENT, spec, tmp_path / "cut", progress=False, log=lambda m: None)
    monkeypatch.setattr(backends, "train_chunk_fn", lambda name: real)
    monkeypatch.setattr(runner, "default_chunk_size", lambda *a: 5)  # "another machine": another budget
    logs = []
    summary = runner.run(pd.EXPERIMENT, spec, tmp_path / "cut", progress=False, log=logs.append)
    assert any("resuming: 2 of 6 chunks" in m for m in logs), logs
    assert summary["plan"]["chunk_size"] == {"models": 3} and summary["n_chunks"] == 6
    assert summary["plan"]["chunks"] == {"models": [[a, a + 3] for a in range(0, 18, 3)]}
    a, b = (load_file(str(tmp_path / d / "weights.safetensors")) for d in ("whole", "cut"))
    assert torch.equal(a["W"], b["W"]) and torch.equal(a["b"], b["b"])


def test_a_torch_run_resumes_on_its_recorded_device():
    recorded = {"backend": "torch", "device": "cpu", "data_stream": "torch-cpu", "chunk_size": {"models": 4}, "chunks": {"models": [[0, 4]]}}
    proposed = {"backend": "torch", "device": "cuda", "data_stream": "torch-cuda", "chunk_size": {"models": 9}, "chunks": {"models": [[0, 4]]}}
    spec = pd.PhaseDiagramSpec(backend="torch")
    assert runner.reconcile_plan(recorded, proposed, spec) == recorded  # CPU generator, same chunks


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_torch_run_started_on_cuda_is_refused_without_cuda():
    recorded = {"backend": "torch", "device": "cuda", "data_stream": "torch-cuda", "chunk_size": {"models": 4}, "chunks": {"models": [[0, 4]]}}
    proposed = {"backend": "torch", "device": "cpu", "data_stream": "torch-cpu", "chunk_size": {"models": 9}, "chunks": {"models": [[0, 4]]}}
    with pytest.raises(SpecError, match="CUDA"):
        runner.reconcile_plan(recorded, proposed, pd.PhaseDiagramSpec(backend="torch"))


def test_fused_backends_share_a_stream_torch_does_not():
    fused = {"backend": "triton", "device": "cuda", "data_stream": "philox", "chunk_size": {"models": 100}, "chunks": {"models": [[0, 100]]}}
    cpu = {"backend": "cpu", "device": "cpu", "data_stream": "philox", "chunk_size": {"models": 7}, "chunks": {"models": [[0, 7]]}}
    plan = runner.reconcile_plan(fused, cpu, pd.PhaseDiagramSpec(backend="cpu"))
    assert plan["backend"] == "cpu" and plan["device"] == "cpu" and plan["chunk_size"] == {"models": 100}
    torch_plan = {"backend": "torch", "device": "cpu", "data_stream": "torch-cpu", "chunk_size": {"models": 7}, "chunks": {"models": [[0, 7]]}}
    with pytest.raises(SpecError) as e:
        runner.reconcile_plan(fused, torch_plan, pd.PhaseDiagramSpec(backend="torch"))
    assert e.value.field == "backend" and "cpu or triton" in e.value.allowed


def test_resume_with_another_backend_is_one_line_another_chunk_size_replans(tmp_path, capsys):
    pytest.importorskip("numba")
    out = str(tmp_path / "r")
    assert run_cli([*TINY, "--backend", "cpu", "--out", out], capsys)[0] == 0
    # Finished: any backend may re-analyse it (nothing is trained), and the protocol is analysis only.
    code, text, err = run_cli([*TINY, "--backend", "torch", "--protocol", "drop-worst", "--out", out], capsys)
    summary = json.loads((tmp_path / "r/summary.json").read_text())
    assert code == 0 and summary["chunks_trained"] == 0 and summary["backend"] == "cpu", err
    assert "already trained (on cpu): nothing trains here" in text + err  # --backend torch is not silently dropped
    # a changed analysis option is said, with how to keep the old one (a preset's may change between versions)
    assert ("note: analysed under --protocol drop-worst; this run was last analysed under --protocol best "
            "(pass --protocol best to keep it)") in text + err
    assert json.loads((tmp_path / "r/spec.json").read_text())["analysis"]["protocol"] == "drop-worst"
    code, text, err = run_cli([*TINY, "--backend", "torch", "--protocol", "drop-worst", "--out", out], capsys)
    assert code == 0 and "note: analysed under" not in text + err  # the same again: nothing to say
    for chunk in (tmp_path / "r/chunks").glob("*.safetensors"):
        chunk.unlink()  # as if cut short before its only chunk was saved
    code, _, err = run_cli([*TINY, "--backend", "torch", "--out", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--backend" in err and "cpu or triton" in err
    before = load_file(str(tmp_path / "r/weights.safetensors"))
    # The plan of chunks not yet trained may change (here: all of them); philox data does not
    # depend on chunking, so the result is the same.
    code, out_text, err = run_cli([*TINY, "--backend", "cpu", "--chunk-size", "5", "--out", out], capsys)
    assert code == 0 and "re-planned" in out_text + err, err
    plan = json.loads((tmp_path / "r/spec.json").read_text())["plan"]
    assert plan["chunks"] == {"models": [[0, 5], [5, 10], [10, 15], [15, 18]]}
    after = load_file(str(tmp_path / "r/weights.safetensors"))
    assert torch.equal(before["W"], after["W"]) and torch.equal(before["b"], after["b"])


def test_a_run_of_another_experiment_is_named_as_such(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert run_cli([*TINY, "--backend", "torch", "--out", out], capsys)[0] == 0
    code, _, err = run_cli(["--points", "2", "--fits", "1", "--steps", "5", "--backend", "torch", "--no-progress",
                            "--out", out], capsys, command=("run", "intro"))
    assert code == 2 and "experiment is 'phase-diagram' there but 'intro' here" in err


def test_readme_txt_command_reproduces_the_run_from_anywhere(tmp_path, capsys, monkeypatch):
    import shlex
    out = tmp_path / "my run"
    assert run_cli([*TINY, "--backend", "torch", "--out", str(out)], capsys)[0] == 0
    command = (out / "README.txt").read_text().splitlines()[3].strip()
    argv = shlex.split(command)
    assert argv[:3] == ["supbench", "run", "phase-diagram"] and argv[-1] == str(out.resolve())
    monkeypatch.chdir(tmp_path)
    argv[-1] = str(tmp_path / "again")
    assert run_cli(argv[3:], capsys, command=("run", "phase-diagram"))[0] == 0
    a, b = (load_file(str(d / "weights.safetensors")) for d in (out, tmp_path / "again"))
    assert torch.equal(a["W"], b["W"])


@pytest.mark.parametrize("again", [["--backend", "cpu"], ["--backend", "torch", "--chunk-size", "4"]])
def test_readme_txt_names_the_plan_that_trained_not_a_later_call(again, tmp_path, capsys, monkeypatch):
    """A second call on a finished run only re-analyses it, whatever backend or chunk size it names;
    README.txt's command used to take them from that call, and reproduced something else (torch
    batches depend on both)."""
    import shlex
    out = tmp_path / "r"
    monkeypatch.setattr(runner, "default_chunk_size", lambda *a: 3)  # auto plan: chunks of 3 on torch
    assert run_cli([*TINY, "--backend", "torch", "--out", str(out)], capsys)[0] == 0
    first = (out / "README.txt").read_text().splitlines()[3].strip()
    assert "--backend torch" in first and "--chunk-size 3" in first  # the auto size, pinned for a new machine
    assert run_cli([*TINY, *again, "--out", str(out)], capsys)[0] == 0
    command = (out / "README.txt").read_text().splitlines()[3].strip()
    assert command == first
    assert json.loads((out / "summary.json").read_text())["rerun"] == command
    monkeypatch.setattr(runner, "default_chunk_size", lambda *a: 5)  # another machine's budget
    argv = shlex.split(command)
    argv[-1] = str(tmp_path / "again")
    assert run_cli(argv[3:], capsys)[0] == 0
    a, b = (load_file(str(d / "weights.safetensors")) for d in (out, tmp_path / "again"))
    assert torch.equal(a["W"], b["W"]) and torch.equal(a["b"], b["b"])


def test_readme_txt_names_no_chunk_size_where_it_changes_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli([*TINY, "--backend", "cpu", "--out", str(out)], capsys)[0] == 0
    assert run_cli([*TINY, "--backend", "cpu", "--chunk-size", "4", "--out", str(out)], capsys)[0] == 0
    command = (out / "README.txt").read_text().splitlines()[3].strip()
    assert "--backend cpu" in command and "--chunk-size" not in command  # philox data: one chunk of 18 as planned


def test_results_are_readable_by_collaborators(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli([*TINY, "--backend", "torch", "--out", str(out)], capsys)[0] == 0
    import os
    umask = os.umask(0)
    os.umask(umask)
    for f in ("summary.json", "weights.safetensors", "cells.parquet", "spec.json"):
        assert (out / f).stat().st_mode & 0o777 == 0o666 & ~umask, f


def test_auto_resumes_on_the_backend_the_run_was_started_on(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert run_cli([*TINY, "--backend", "torch", "--lr", "0.01", "--out", out], capsys)[0] == 0
    code, stdout, err = run_cli([*TINY, "--lr", "0.01", "--out", out], capsys)  # --backend auto
    assert code == 0, err
    summary = json.loads((tmp_path / "r/summary.json").read_text())
    assert summary["backend"] == "torch" and summary["chunks_trained"] == 0


def test_list_shows_every_experiment_one_line_each(capsys):
    code, out, _ = run_cli([], capsys, command=("list",))
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == len(EXPERIMENTS)
    for name, line in zip(EXPERIMENTS, lines):
        assert line.startswith(name) and "quick" in line


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_spec_field_is_an_option_with_help(name, capsys):
    code, out, _ = run_cli(["--help"], capsys, command=("run", name))
    assert code == 0
    exp = EXPERIMENTS[name]
    from engine.experiments.base import spec_fields
    for f, _ in spec_fields(exp.spec_cls):
        assert "--" + f.name.replace("_", "-") in out and f.metadata.get("help"), f.name


def test_help_gives_no_default_that_every_preset_overrides(capsys):
    """basic's presets both train 20,000 steps: "Default 10000" (the spec's) never applied."""
    out = " ".join(run_cli(["--help"], capsys, command=("run", "basic"))[1].split())
    assert "Training steps per model. Default, by preset: quick: 20000; paper: 20000." in out
    assert "Default 10000" not in out
    out = " ".join(run_cli(["--help"], capsys, command=("run", "phase-diagram"))[1].split())
    # every preset sets it (the paper's scale too classifies by the lowest-loss seed), so no other default shows
    assert "Default, by preset: quick: best; quick on cpu/triton: best; paper: best." in out
    assert "worst (the paper's" in out  # (click may break "drop-worst" at its hyphen)


def _bad_values():
    """(experiment, option, a value outside its range) for every field of every experiment."""
    from engine.experiments.base import spec_fields
    for name, exp in EXPERIMENTS.items():
        for f, typ in spec_fields(exp.spec_cls):
            if f.name == "backend":
                continue
            bad = {int: "-1", float: "nan"}.get(typ, "bogus")
            yield name, "--" + f.name.replace("_", "-"), bad


@pytest.mark.parametrize("name, option, value", list(_bad_values()))
def test_every_option_refuses_a_bad_value_in_one_line(name, option, value, tmp_path, capsys):
    code, _, err = run_cli([option, value, "--no-progress", "--out", str(tmp_path / "bad")], capsys,
                           command=("run", name))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and option in lines[0] and "must be" in lines[0], err
    assert not (tmp_path / "bad").exists()


def test_preset_auto_resumes_the_recorded_preset(tmp_path, capsys):
    """A run started with --preset paper (e.g. on a GPU, where auto means paper) and resumed with
    --preset auto elsewhere keeps the paper preset instead of refusing or starting another run."""
    out = str(tmp_path / "r")
    tiny = ["--points", "2", "--steps", "5", "--batch-size", "8", "--backend", "torch", "--no-progress", "--out", out]
    assert run_cli(["--preset", "paper", *tiny], capsys, command=("run", "intro"))[0] == 0
    code, _, err = run_cli(tiny, capsys, command=("run", "intro"))  # --preset auto: quick on this machine
    summary = json.loads((tmp_path / "r/summary.json").read_text())
    assert code == 0 and summary["preset"] == "paper" and summary["chunks_trained"] == 0, err


def test_snapshot_steps_beyond_the_run_are_refused():
    import numpy as np
    from engine.experiments.base import Job
    from engine.spec import DataSpec, ModelSpec, TrainSpec
    with pytest.raises(SpecError, match="snapshot_steps"):
        Job("x", ModelSpec(3, 2), DataSpec(np.full((1, 3), 0.5)), TrainSpec(steps=10), snapshot_steps=(0, 11))


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_experiment_runs_from_the_command_line(name, tmp_path, capsys):
    """`supbench run <name>` end to end at a tiny size: exit 0, every declared output, its checks printed."""
    out = tmp_path / name
    batch = [] if name == "double-descent" else ["--batch-size", "8"]  # its batch is its dataset (refused)
    code, stdout, err = run_cli(["--steps", "3", *batch, "--backend", "torch", "--no-progress",
                                 "--out", str(out)], capsys, command=("run", name))
    assert code == 0, err
    for f in ("spec.json", "summary.json", "README.txt", *EXPERIMENTS[name].outputs):
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checks_total"] == len(summary["checks"]) >= 1 and stdout.count("check ") >= 1
    if "instances.parquet" in EXPERIMENTS[name].outputs:  # the README's common columns
        cols = set(pq.read_table(out / "instances.parquet").column_names)
        common = {"instance", "final_loss", "diverged", "kept", "seed_index" if name == "phase-diagram" else "fit"}
        assert common <= cols, common - cols


def test_rerunning_a_finished_run_keeps_its_training_record(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert run_cli([*TINY, "--backend", "torch", "--out", out], capsys)[0] == 0
    first = json.loads((tmp_path / "r/summary.json").read_text())
    assert run_cli([*TINY, "--backend", "torch", "--out", out], capsys)[0] == 0
    again = json.loads((tmp_path / "r/summary.json").read_text())
    assert again["chunks_trained"] == 0 and "reanalysis" in again
    for k in ("train_seconds", "instance_steps_per_second", "instance_steps_trained", "backend"):
        assert again[k] == first[k] and first[k], k


def test_summary_environment_names_the_cpu_and_every_version():
    """A figure must trace to the machine and the software behind it (a fresh-clone audit found the
    CPU recorded as 'x86_64' and no numba/llvmlite version)."""
    from engine import machine
    from engine.experiments.runner import environment
    env = environment("cpu", 2)
    assert env["cpu"] == machine.cpu_model() and env["threads"] == 2
    assert {"torch", "numpy", "triton", "numba", "llvmlite", "supbench_commit"} <= set(env)
    import numpy
    assert env["numpy"] == numpy.__version__
    if Path("/proc/cpuinfo").exists() and "model name" in Path("/proc/cpuinfo").read_text():
        assert env["cpu"] not in ("x86_64", "")


def test_a_run_resumed_on_another_backend_records_it(tmp_path, monkeypatch):
    """cpu and triton draw the same batches, so a run may resume on the other; the plan in spec.json
    kept the first backend, and the next call's re-run command named it. Triton is played by the cpu
    kernel here (this machine has no GPU)."""
    from engine.experiments import memory
    monkeypatch.setattr(memory, "check_fits", lambda *a, **k: None)
    monkeypatch.setattr(backends, "default_device", lambda b: "cpu")
    real = backends.train_chunk_fn

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(backends, "train_chunk_fn", lambda b: interrupted)
    spec = pd.PhaseDiagramSpec(grid=2, seeds=2, steps=30, batch_size=16, backend="cpu")
    with pytest.raises(KeyboardInterrupt):
        runner.run(pd.EXPERIMENT, spec, tmp_path, progress=False, log=lambda m: None)
    monkeypatch.setattr(backends, "train_chunk_fn", lambda b: real("cpu"))
    again = pd.PhaseDiagramSpec(grid=2, seeds=2, steps=30, batch_size=16, backend="triton")
    for _ in range(2):  # resumed, then the same command with nothing left to train
        summary = runner.run(pd.EXPERIMENT, again, tmp_path, progress=False, log=lambda m: None)
        assert "--backend triton" in summary["rerun"]
    plan = json.loads((tmp_path / "spec.json").read_text())["plan"]
    assert plan["backend"] == "triton" and plan["backends_used"] == ["cpu", "triton"]
    assert "trained on cpu then triton" in (tmp_path / "README.txt").read_text()


def test_a_checkpointed_chunk_split_for_memory_is_not_counted_as_resumed(tmp_path, cut_inside_a_chunk):
    spec = pd.PhaseDiagramSpec(grid=2, seeds=2, steps=300, batch_size=16, chunk_size=4, backend="torch")
    cut_inside_a_chunk(spec, tmp_path)  # chunk 1, step 150
    fn = backends.train_chunk_fn("torch")

    def out_of_memory_when_resumed(model, p, imp, train, start, checkpoint=None, **k):
        if checkpoint is not None and checkpoint.load() is not None and p.shape[0] == 4:
            raise MemoryError("simulated")
        return fn(model, p, imp, train, start, checkpoint=checkpoint, **k)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backends, "train_chunk_fn", lambda b: out_of_memory_when_resumed)
        summary = runner.run(pd.EXPERIMENT, spec, tmp_path, progress=False, log=lambda m: None)
    # the halves trained from step 0: nothing continued from the checkpoint
    assert summary["chunks_from_checkpoint"] == 0 and summary["instance_steps_trained"] == 4 * 300


def test_the_analysis_keeps_to_threads(tmp_path, monkeypatch):
    """--threads bounds the analysis too (torch's float64 ranking), and torch's setting is restored after:
    a probe measured the analysis 4-7x slower on a loaded 2-core machine with torch's default threads."""
    seen, analyse = [], pd.EXPERIMENT.analyse
    monkeypatch.setattr(pd.EXPERIMENT, "analyse", lambda *a: seen.append(torch.get_num_threads()) or analyse(*a))
    before = torch.get_num_threads()
    spec = pd.PhaseDiagramSpec(grid=3, seeds=2, steps=30, batch_size=16, backend="torch")
    runner.run(pd.EXPERIMENT, spec, tmp_path / "one", progress=False, log=lambda m: None, threads=1)
    runner.run(pd.EXPERIMENT, spec, tmp_path / "default", progress=False, log=lambda m: None)
    assert seen == [1, before] and torch.get_num_threads() == before


def test_the_analysis_is_announced_when_progress_is_shown(tmp_path):
    """Long work shows progress: after the training bar, one line says the analysis is running (basic
    --size large ranks its fits for half a minute); --no-progress keeps the log to what it was."""
    spec = pd.PhaseDiagramSpec(grid=3, seeds=2, steps=30, batch_size=16, backend="torch")
    shown, quiet = [], []
    runner.run(pd.EXPERIMENT, spec, tmp_path / "a", progress=True, log=shown.append)
    runner.run(pd.EXPERIMENT, spec, tmp_path / "b", progress=False, log=quiet.append)
    assert "phase-diagram: analysing 18 trained models (checks, tables, figures)" in shown
    assert not any("analysing" in m for m in quiet)
