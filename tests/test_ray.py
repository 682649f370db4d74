"""Sweeps on Ray (#11): chunks run as Ray tasks on a local Ray instance (CPU, small sizes) and give
the local result bit for bit; a worker killed mid-chunk is retried; a killed driver resumes; a
duplicate completion is ignored. Ray is the optional extra ``[ray]`` (installed in CI)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from engine.cli import main

ray = pytest.importorskip("ray")
pytest.importorskip("numba")

ARGS = ["run", "phase-diagram", "--grid", "4", "--seeds", "2", "--steps", "200", "--batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def _shutdown_ray():
    yield
    ray.shutdown()


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def same_weights(a, b) -> bool:
    wa, wb = (load_file(str(d / "weights.safetensors")) for d in (a, b))
    return torch.equal(wa["W"], wb["W"]) and torch.equal(wa["b"], wb["b"])


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_a_ray_run_is_bit_identical_to_a_local_run(backend, tmp_path, capsys):
    assert run_cli([*ARGS, "--backend", backend, "--out", str(tmp_path / "local")], capsys)[0] == 0
    code, _, err = run_cli([*ARGS, "--backend", backend, "--ray", "--threads", "2", "--out", str(tmp_path / "ray")], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "ray/summary.json").read_text())
    assert summary["ray"] and summary["chunks_trained"] == summary["n_chunks"] > 1  # spread over workers
    assert same_weights(tmp_path / "local", tmp_path / "ray")


def test_a_duplicate_completion_is_ignored(tmp_path):
    from engine.experiments import distributed, runner
    from engine.experiments import phase_diagram as pd
    from engine.store import RunDir
    spec = pd.PhaseDiagramSpec(grid=2, seeds=1, steps=20, batch_size=16, backend="cpu", chunk_size=2)
    distributed.connect("local", 2, log=lambda m: None)
    jobs = pd.EXPERIMENT.jobs(spec)
    plan = runner.make_plan(spec, jobs)
    run = RunDir.open(tmp_path / "r", {"plan": plan})
    store = runner.ChunkStore(run, jobs, pd.EXPERIMENT.identity(spec), plan["data_stream"], lambda m: None)
    logs = []
    todo = [(jobs[0], 0, 2), (jobs[0], 0, 2), (jobs[0], 2, 4)]  # chunk [0, 2) completes twice
    saved, _ = distributed.train_chunks(pd.EXPERIMENT, jobs, plan, store, todo, False, logs.append)
    assert saved == 2 and sum("completed twice" in m for m in logs) == 1
    assert sorted(p.name for p in (tmp_path / "r/chunks").iterdir()) == [
        "models_000000000-000000002.safetensors", "models_000000002-000000004.safetensors"]
    run.close()


def _cli(out, *extra):
    return [sys.executable, "-m", "engine.cli", *ARGS, "--backend", "cpu", "--chunk-size", "2", "--ray",
            "--threads", "2", "--out", str(out), *extra]


def test_a_worker_killed_mid_chunk_is_retried(tmp_path, capsys):
    assert run_cli([*ARGS, "--backend", "cpu", "--out", str(tmp_path / "local")], capsys)[0] == 0
    marker = tmp_path / "killed-once"
    env = {**os.environ, "SUPBENCH_TEST_KILL_WORKER_ONCE": str(marker)}
    res = subprocess.run(_cli(tmp_path / "ray"), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert marker.exists()  # a worker did die mid-chunk
    names = sorted(p.name for p in (tmp_path / "ray/chunks").iterdir())
    assert names == [f"models_{a:09d}-{a + 2:09d}.safetensors" for a in range(0, 32, 2)]  # complete, once each
    assert same_weights(tmp_path / "local", tmp_path / "ray")


def test_a_killed_driver_leaves_a_directory_the_next_run_resumes(tmp_path, capsys):
    assert run_cli([*ARGS, "--backend", "cpu", "--steps", "3000", "--out", str(tmp_path / "local")], capsys)[0] == 0
    out = tmp_path / "ray"
    proc = subprocess.Popen(_cli(out, "--steps", "3000"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(out.glob("chunks/models_*.safetensors"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    done = {p.name: p.read_bytes() for p in out.glob("chunks/models_*.safetensors")}
    assert done and len(done) < 16, "the driver must die mid-run for this test"
    res = subprocess.run(_cli(out, "--steps", "3000"), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "resuming:" in res.stderr, res.stderr
    assert all((out / "chunks" / n).read_bytes() == b for n, b in done.items())  # not retrained
    assert same_weights(tmp_path / "local", out)


def test_ray_without_ray_installed_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code, _, err = run_cli([*ARGS, "--backend", "cpu", "--ray", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and 'pip install -e ".[ray]"' in err, err


def test_an_unreachable_cluster_is_one_line_within_seconds(tmp_path, capsys):
    t0 = time.time()
    code, _, err = run_cli([*ARGS, "--backend", "cpu", "--ray", "127.0.0.1:1", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--ray" in err and time.time() - t0 < 30, err


def test_gpu_tasks_on_a_cluster_without_gpus_are_refused():
    from engine.errors import SpecError
    from engine.experiments import distributed
    with pytest.raises(SpecError, match="GPUs"):
        distributed.check_resources("triton", "cuda", {"CPU": 2.0})
    distributed.check_resources("cpu", "cpu", {"CPU": 2.0})


def test_a_task_that_runs_out_of_memory_is_split_and_others_fail_in_one_line(tmp_path, monkeypatch, capsys):
    """Inside a Ray task an out-of-memory error is re-raised on the driver: the chunk is split and
    resubmitted; any other task error is one line (no Ray traceback), exit 1."""
    from engine.experiments import distributed, runner
    from engine.experiments import phase_diagram as pd
    from engine.store import RunDir
    spec = pd.PhaseDiagramSpec(grid=2, seeds=2, steps=20, batch_size=16, backend="cpu", chunk_size=8)
    distributed.connect("local", 2, log=lambda m: None)
    jobs = pd.EXPERIMENT.jobs(spec)
    plan = runner.make_plan(spec, jobs)
    run = RunDir.open(tmp_path / "r", {"plan": plan})
    store = runner.ChunkStore(run, jobs, pd.EXPERIMENT.identity(spec), plan["data_stream"], lambda m: None)
    # The injected task functions live in this test module, which workers cannot import: ship them by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(distributed, "_train_remote", _fails_above_4)
    logs = []
    saved, _ = distributed.train_chunks(pd.EXPERIMENT, jobs, plan, store, [(jobs[0], 0, 8)], False, logs.append,
                                        split=lambda job, a, b: runner.split_chunk(run, plan, job, a, b, "cpu",
                                                                                   logs.append))
    assert saved == 2 and plan["chunks"]["models"] == [[0, 4], [4, 8]]
    monkeypatch.setattr(distributed, "_train_remote", _always_fails)
    from engine.errors import TrainingFailed
    with pytest.raises(TrainingFailed) as e:
        distributed.train_chunks(pd.EXPERIMENT, jobs, plan, store, [(jobs[0], 0, 4)], False, logs.append)
    assert str(e.value) == "chunk models [0, 4) failed on ray: ValueError: broken worker" and "\x1b" not in str(e.value)
    run.close()


def _fails_above_4(job, start, stop, backend, device):
    if stop - start > 4:
        raise MemoryError
    from engine import backends
    from engine.experiments.runner import train_one
    return train_one(backends.train_chunk_fn("cpu"), job, start, stop, device)


def _always_fails(job, start, stop, backend, device):
    raise ValueError("broken worker\nsecond line")
