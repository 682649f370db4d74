"""`supbench run phase-diagram` end to end on tiny sizes: outputs, resume, and every bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from engine import backends
from engine.cli import main
from engine.experiments import phase_diagram as pd, runner

TINY = ["--grid", "3", "--seeds", "2", "--steps", "40", "--batch-size", "32", "--no-progress"]


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "phase-diagram", *args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_tiny_run_writes_every_output(tmp_path, capsys):
    # importance-max 8: no grid column at r = 1 exactly, where two solutions tie (either phase is right)
    code, out, err = run_cli([*TINY, "--importance-max", "8", "--backend", "torch", "--out", str(tmp_path / "r")],
                             capsys)
    assert code == 0, err
    r = tmp_path / "r"
    for f in ["spec.json", "instances.parquet", "cells.parquet", "weights.safetensors", "summary.json",
              "figures/phase_diagram.png"]:
        assert (r / f).is_file(), f
    inst = pq.read_table(r / "instances.parquet").to_pydict()
    cells = pq.read_table(r / "cells.parquet").to_pydict()
    w = load_file(str(r / "weights.safetensors"))
    assert len(inst["final_loss"]) == 18 and len(cells["empirical_phase"]) == 9
    assert w["W"].shape == (18, 1, 2) and w["b"].shape == (18, 2)
    assert sum(inst["kept"]) == 9  # one of the two seeds dropped per grid point
    summary = json.loads((r / "summary.json").read_text())
    assert summary["agreement"] == pytest.approx(independent_agreement(inst, w["W"]))
    assert "agreement with theory" in out and "instance-steps/s" in out and str(r) in out
    assert (r / "figures/phase_diagram.png").read_bytes()[:4] == b"\x89PNG"
    recorded = json.loads((r / "spec.json").read_text())
    assert recorded["grid"] == 3 and recorded["plan"]["backend"] == "torch" and recorded["plan"]["chunk_size"]["models"] > 0
    assert "supbench run phase-diagram" in (r / "README.txt").read_text()


def independent_agreement(inst: dict, W: torch.Tensor) -> float:
    """The agreement recomputed from the weights with none of the engine's analysis code but the
    seeds' expected losses (instances.parquet): the extra feature's norm and superposition by hand,
    drop-worst averaging, the thresholds 0.5 / 0.5, and
    the closed-form 2->1 boundary (paper: superposition iff s < 4r/(2+5r) for r <= 1, s < 4/(5+2r)
    for r >= 1; r = 1 separates not represented from dedicated)."""
    import numpy as np
    W = W.double().numpy()
    extra = W[:, :, -1]
    norm = np.sqrt((extra**2).sum(1))
    unit = extra / np.maximum(norm, 1e-12)[:, None]
    sup = ((unit[:, :, None] * W[:, :, :-1]).sum(1) ** 2).sum(1)
    cells = {}
    for k in range(len(norm)):
        cells.setdefault((inst["density_index"][k], inst["importance_index"][k]), []).append(k)
    matches = []
    for ks in cells.values():
        # ranked by the expected loss (checked against closed forms in test_phase_expected_loss.py)
        kept = sorted(ks, key=lambda k: inst["expected_loss"][k])[:-1] if len(ks) > 1 else ks
        n, s_ = np.mean(norm[kept]), np.mean(sup[kept])
        emp = "not" if n < 0.5 else ("sup" if s_ >= 0.5 else "ded")
        s, r = inst["density"][ks[0]], inst["rel_importance"][ks[0]]
        bound = 4 * r / (2 + 5 * r) if r <= 1 else 4 / (5 + 2 * r)
        th = "sup" if s < bound else ("not" if r < 1 else "ded")
        matches.append(emp == th)
    return float(np.mean(matches))


def test_three_feature_run(tmp_path, capsys):
    code, _, err = run_cli([*TINY, "--features", "3", "--backend", "torch", "--out", str(tmp_path / "r3")], capsys)
    assert code == 0, err
    assert load_file(str(tmp_path / "r3/weights.safetensors"))["W"].shape == (18, 2, 3)


def test_interrupted_run_resumes_to_the_same_result(tmp_path, capsys, monkeypatch):
    args = [*TINY, "--backend", "torch", "--chunk-size", "4"]
    assert run_cli([*args, "--out", str(tmp_path / "whole")], capsys)[0] == 0

    real = backends.train_chunk_fn("torch")
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as Ctrl-C in the third chunk
        return real(*a, **k)

    monkeypatch.setattr(backends, "train_chunk_fn", lambda name: flaky)
    code, _, err = run_cli([*args, "--out", str(tmp_path / "cut")], capsys)
    assert code == 130 and "resume" in err
    assert len(list((tmp_path / "cut/chunks").glob("models_?????????-?????????.safetensors"))) == 2
    monkeypatch.setattr(backends, "train_chunk_fn", lambda name: real)
    code, _, err = run_cli([*args, "--out", str(tmp_path / "cut")], capsys)
    assert code == 0 and "resuming: 2 of 5 chunks" in err
    a = load_file(str(tmp_path / "whole/weights.safetensors"))
    b = load_file(str(tmp_path / "cut/weights.safetensors"))
    assert torch.equal(a["W"], b["W"]) and torch.equal(a["b"], b["b"])
    assert pq.read_table(tmp_path / "whole/cells.parquet").equals(pq.read_table(tmp_path / "cut/cells.parquet"))


def test_killed_process_loses_no_finished_chunk(tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "engine.cli", "run", "phase-diagram", "--grid", "4", "--seeds", "2",
           "--steps", "400", "--batch-size", "64", "--chunk-size", "4", "--backend", "torch", "--no-progress",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("chunks/models_?????????-?????????.safetensors"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in out.glob("chunks/models_?????????-?????????.safetensors"))
    # A kill that lands inside the atomic write of the next chunk leaves its temporary file (seen once
    # in a full run on a loaded machine): never taken for a chunk, and removed when the run reopens.
    assert done
    before = {n: (out / "chunks" / n).read_bytes() for n in done}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert all((out / "chunks" / n).read_bytes() == before[n] for n in done)  # not retrained
    assert not list(out.glob("chunks/*.tmp")) and not list(out.glob("*.tmp"))
    assert (out / "summary.json").exists()


@pytest.mark.parametrize("args, option", [
    (["--grid", "0"], "--grid"), (["--seeds", "-2"], "--seeds"), (["--steps", "0"], "--steps"),
    (["--batch-size", "0"], "--batch-size"), (["--density-min", "0"], "--density-min"),
    (["--density-max", "1.5"], "--density-max"), (["--density-min", "-0.1"], "--density-min"),
    (["--backend", "cuda"], "--backend"), (["--preset", "huge"], "--preset"), (["--lr", "-1"], "--lr"),
    (["--features", "4"], "--features"), (["--grid", "abc"], "--grid"), (["--optimizer", "sgd"], "--optimizer"),
])
def test_bad_input_is_one_line_exit_2(args, option, tmp_path, capsys):
    code, out, err = run_cli([*args, "--out", str(tmp_path / "bad")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "bad").exists()


def test_a_refusal_names_every_option_as_the_user_types_it(tmp_path, capsys):
    """Not the API's field name: '--density-max: must be a number >= --density-min (0.5)'."""
    code, _, err = run_cli(["--density-max", "0.1", "--density-min", "0.5", "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and "--density-max: must be a number >= --density-min (0.5)" in err and "density_" not in err


@pytest.mark.skipif(backends.triton_usable() and __import__("torch").cuda.is_available(), reason="GPU present")
def test_triton_backend_without_gpu_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code, _, err = run_cli(["--backend", "triton", "--out", str(tmp_path / "t")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "triton" in err and "GPU" in err
    assert err.startswith("supbench: error: --backend: ")  # the option, as every other refusal names it


def test_unwritable_out_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run_cli([*TINY, "--out", str(blocker / "sub")], capsys)
    assert code == 2 and err.startswith("supbench: error: --out") and len(err.strip().splitlines()) == 1


def test_mismatched_spec_is_refused_and_nothing_overwritten(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli([*TINY, "--backend", "torch", "--out", str(out)], capsys)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = run_cli([*TINY[:-1], "--steps", "41", "--backend", "torch", "--out", str(out)], capsys)
    assert code == 2 and "--out" in err and "steps" in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_console_script_prints_one_line_and_no_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "engine.cli", "run", "phase-diagram", "--seeds", "0", "--out",
                          str(tmp_path / "x")], capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": "0"})
    assert res.returncode == 2 and res.stderr.strip() == "supbench: error: --seeds: must be an integer in [1, 1000] (got 0)"


def test_phase_diagram_runs_on_the_triton_backend(tmp_path, capsys):
    """Under TRITON_INTERPRET=1 (conftest) the fused kernels train the sweep with no other change."""
    code, out, err = run_cli([*TINY, "--backend", "triton", "--out", str(tmp_path / "tr")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "tr/summary.json").read_text())["backend"] == "triton"
    assert load_file(str(tmp_path / "tr/weights.safetensors"))["W"].shape == (18, 1, 2)


@pytest.mark.gpu
def test_gpu_phase_diagram_agreement_no_worse_on_triton(tmp_path, capsys):
    """Quick preset on both backends on the GPU; the triton agreement may not fall below torch's by
    more than two grid cells in a hundred (seeds differ: the backends draw different batches)."""
    agreements = {}
    for backend in ("torch", "triton"):
        code, out, err = run_cli(["--preset", "quick", "--backend", backend, "--no-progress",
                                  "--out", str(tmp_path / backend)], capsys)
        assert code == 0, err
        agreements[backend] = json.loads((tmp_path / backend / "summary.json").read_text())["agreement"]
    print(f"agreement torch {agreements['torch']:.3f} triton {agreements['triton']:.3f}")
    assert agreements["triton"] >= agreements["torch"] - 0.02 and agreements["triton"] >= 0.85


def test_kill_inside_a_chunk_resumes_from_its_checkpoint(tmp_path, cut_inside_a_chunk):
    spec = pd.PhaseDiagramSpec(grid=2, seeds=2, steps=300, batch_size=16, chunk_size=4, backend="torch")
    runner.run(pd.EXPERIMENT, spec, tmp_path / "whole", progress=False, log=lambda m: None)
    cut_inside_a_chunk(spec, tmp_path / "cut")  # chunk 1, step 150
    partial = tmp_path / "cut/chunks/models_000000004-000000008.partial.safetensors"
    assert partial.exists() and (tmp_path / "cut/chunks/models_000000000-000000004.safetensors").exists()
    logs = []
    summary = runner.run(pd.EXPERIMENT, spec, tmp_path / "cut", progress=False, log=logs.append)
    assert not partial.exists()
    # Only what was not finished is trained again: 8 instances in 2 chunks; the second died in step 150
    # and resumes from its last checkpoint, after step 147 (progress reports come every 3 steps).
    assert summary["instance_steps_trained"] == 4 * (300 - 147)
    assert summary["chunks_resumed"] == 1 and summary["chunks_from_checkpoint"] == 1
    assert "resuming: chunk models [4, 8) from its checkpoint at step 147 of 300" in logs, logs
    a = load_file(str(tmp_path / "whole/weights.safetensors"))
    b = load_file(str(tmp_path / "cut/weights.safetensors"))
    assert torch.equal(a["W"], b["W"]) and torch.equal(a["b"], b["b"])


def test_phase_diagram_on_the_cpu_backend_beats_the_trivial_map(tmp_path, capsys):
    """A small sweep on the fused cpu backend: its map must beat calling every cell
    "superposition" (right on most of the usual grid), find all three phases, and not depend on
    the thread count."""
    pytest.importorskip("numba")
    import numpy as np
    args = ["--grid", "6", "--seeds", "4", "--steps", "2500", "--batch-size", "256", "--lr", "1e-2",
            "--backend", "cpu", "--no-progress", "--protocol", "drop-worst"]
    for threads in ("1", "2"):
        code, out, err = run_cli([*args, "--threads", threads, "--out", str(tmp_path / threads)], capsys)
        assert code == 0, err
    summary = json.loads((tmp_path / "1/summary.json").read_text())
    cells = pq.read_table(tmp_path / "1/cells.parquet").to_pydict()
    theory_sup = np.mean([p == "superposition" for p in cells["theory_phase"]])
    assert summary["backend"] == "cpu" and summary["agreement"] >= max(0.8, theory_sup + 0.1), summary["agreement"]
    assert set(cells["empirical_phase"]) == {"not represented", "dedicated", "superposition"}
    a, b = (load_file(str(tmp_path / t / "weights.safetensors")) for t in ("1", "2"))
    assert torch.equal(a["W"], b["W"]) and torch.equal(a["b"], b["b"])


@pytest.mark.parametrize("args, option", [(["--threads", "0"], "--threads"), (["--protocol", "vote"], "--protocol")])
def test_bad_cpu_options_are_one_line_exit_2(args, option, tmp_path, capsys):
    code, _, err = run_cli([*TINY, *args, "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and option in err
    assert not (tmp_path / "bad").exists()


def test_cpu_backend_without_numba_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(backends, "cpu_usable", lambda: False)
    code, _, err = run_cli([*TINY, "--backend", "cpu", "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "numba" in err


def test_ctrl_c_before_anything_is_saved_does_not_claim_checkpoints(tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(backends, "train_chunk_fn", lambda name: interrupted)
    code, _, err = run_cli([*TINY, "--backend", "torch", "--out", str(tmp_path / "r")], capsys)
    assert code == 130 and "before any chunk or checkpoint was saved" in err and "are saved" not in err
