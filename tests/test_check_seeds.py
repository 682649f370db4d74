"""bench.check_seeds: an experiment's checks run under several seeds, tabulated, resumed from the runs,
and a run that does not finish reported as a failure (never with an earlier run's results)."""
import json

import pytest

from bench import check_seeds

ENTRY = "intro --points 2 --fits 1 --steps 30 --batch-size 16"
STEM = "intro_points_2_fits_1_steps_30_batch-size_16-quick-torch"


def _args(tmp_path, *seeds, entry=ENTRY):
    return ["--experiments", entry, "--seeds", *map(str, seeds), "--out", str(tmp_path), "--backend", "torch"]


def test_check_seeds_runs_each_seed_tabulates_every_check_and_reanalyses_on_a_second_call(tmp_path, capsys):
    """Two seeds of a tiny intro run on the torch backend: a run directory per seed with its own seed in
    spec.json, every check in checks.json for both seeds, and a second call that re-analyses the same
    trained models (no chunk trained, summary.json rewritten, the same measured values)."""
    args = _args(tmp_path, 0, 3)
    code = check_seeds.main(args)
    out = capsys.readouterr().out
    for seed in (0, 3):
        assert json.loads((tmp_path / f"{STEM}-s{seed}" / "spec.json").read_text())["seed"] == seed
    record = json.loads((tmp_path / "checks.json").read_text())
    checks = record["checks"][ENTRY]
    assert set(checks) == {"dense-keeps-m", "sparse-pentagon"}
    assert all(set(by_seed) == {"0", "3"} for by_seed in checks.values())
    failed = [v for by_seed in checks.values() for v in by_seed.values() if v["passed"] is False]
    assert code == (1 if failed else 0)
    assert record["total"] == 4 and record["passed"] == 4 - len(failed)
    assert f"{4 - len(failed)} of 4 checks passed over seeds [0, 3]" in out
    assert [(r["backend"], r["preset"]) for r in record["runs"]] == [("torch", "quick")] * 2
    assert all(r["chunks_trained"] > 0 for r in record["runs"])
    w0 = (tmp_path / f"{STEM}-s0" / "weights.safetensors").read_bytes()
    assert w0 != (tmp_path / f"{STEM}-s3" / "weights.safetensors").read_bytes()  # seeds train different models
    summary = tmp_path / f"{STEM}-s0" / "summary.json"
    before = summary.stat().st_mtime_ns
    assert check_seeds.main(args) == code
    again = json.loads((tmp_path / "checks.json").read_text())
    assert again["checks"] == record["checks"]
    assert [r["chunks_trained"] for r in again["runs"]] == [0, 0]  # re-analysed, not retrained
    assert summary.stat().st_mtime_ns > before


def test_a_run_that_does_not_finish_is_a_failure_and_an_old_summary_is_never_reported(tmp_path, capsys):
    """A refused option, and a run directory whose spec no longer matches (as after a preset change):
    each is one failed row with the CLI's reason, even where the directory still holds a summary.json
    whose checks all passed."""
    assert check_seeds.main(_args(tmp_path, 0, entry="intro --steps 0")) == 1
    record = json.loads((tmp_path / "checks.json").read_text())
    row = record["checks"]["intro --steps 0"]["(run)"]["0"]
    assert row["passed"] is False and "--steps" in row["measured"] and "exit code 2" in row["measured"]
    assert record == {**record, "passed": 0, "total": 1}

    check_seeds.main(_args(tmp_path, 0))
    run = tmp_path / f"{STEM}-s0"
    spec = json.loads((run / "spec.json").read_text())
    (run / "spec.json").write_text(json.dumps({**spec, "lr": spec["lr"] * 2}))  # trained under other settings
    summary = json.loads((run / "summary.json").read_text())
    for c in summary["checks"]:
        c["passed"] = True  # a stale summary that would pass
    (run / "summary.json").write_text(json.dumps(summary))
    capsys.readouterr()
    assert check_seeds.main(_args(tmp_path, 0)) == 1
    assert "the run did not finish" in capsys.readouterr().out
    record = json.loads((tmp_path / "checks.json").read_text())
    assert set(record["checks"][ENTRY]) == {"(run)"} and "lr" in record["checks"][ENTRY]["(run)"]["0"]["measured"]


def test_the_table_counts_passes_failures_and_checks_not_run(tmp_path, monkeypatch, capsys):
    """Exit code 0 only when every check that ran passed; a check not run is shown as such and counted
    apart, not as a pass or a failure."""
    def fake(passes):
        def run_one(entry, seed, out, preset, backend):
            checks = [{"name": "a", "passed": passes, "measured": 1.0, "expected": ">= 1"},
                      {"name": "b", "passed": None, "measured": None, "expected": "x"}]
            return {"checks": checks, "backend": "cpu", "preset": "quick", "chunks_trained": 1, "process_wall": 0.1}
        return run_one
    monkeypatch.setattr(check_seeds, "run_one", fake(True))
    assert check_seeds.main(["--experiments", "intro", "--seeds", "0", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1/1 checks passed (1 not run)" in out and "seed 0: not run null" in out
    assert "2 of 2 checks passed over seeds [0, 1] (2 not run)" in out
    monkeypatch.setattr(check_seeds, "run_one", fake(False))
    assert check_seeds.main(["--experiments", "intro", "--seeds", "0", "--out", str(tmp_path)]) == 1
    record = json.loads((tmp_path / "checks.json").read_text())
    assert (record["passed"], record["total"], record["not_run"]) == (0, 1, 1)


@pytest.mark.parametrize("entry, message", [
    ("nope", "--experiments: one of .*not 'nope'"),
    ("intro --seed 5", "sets --seed, which check_seeds sets itself"),
    ("intro --backend=cpu", "sets --backend, which check_seeds sets itself"),
])
def test_check_seeds_refuses_a_bad_entry_in_one_line_before_training(tmp_path, entry, message):
    with pytest.raises(SystemExit, match=message):
        check_seeds.main(["--experiments", "intro", entry, "--seeds", "0", "--out", str(tmp_path)])
    assert not (tmp_path / "checks.json").exists() and not any(tmp_path.iterdir())
