"""bench.check_seeds: an experiment's checks run under several seeds, tabulated, and resumed from the runs."""
import json

import pytest

from bench import check_seeds


def test_check_seeds_runs_each_seed_tabulates_every_check_and_reanalyses_on_a_second_call(tmp_path, capsys):
    """Two seeds of a tiny intro run on the torch backend: a run directory per seed with its own seed in
    spec.json, every check in checks.json for both seeds, an exit code that says whether any failed,
    and a second call that re-analyses the same trained models (same measured values, no retraining)."""
    entry = "intro --points 2 --fits 1 --steps 30 --batch-size 16"
    args = ["--experiments", entry, "--seeds", "0", "3", "--out", str(tmp_path), "--backend", "torch"]
    code = check_seeds.main(args)
    out = capsys.readouterr().out
    for seed in (0, 3):
        run = tmp_path / f"intro_points_2_fits_1_steps_30_batch-size_16-s{seed}"
        assert json.loads((run / "spec.json").read_text())["seed"] == seed
    record = json.loads((tmp_path / "checks.json").read_text())
    checks = record["checks"][entry]
    assert set(checks) == {"dense-keeps-m", "sparse-pentagon"}
    assert all(set(by_seed) == {"0", "3"} for by_seed in checks.values())
    failed = [v for by_seed in checks.values() for v in by_seed.values() if v["passed"] is False]
    assert code == (1 if failed else 0)
    assert record["total"] == 4 and record["passed"] == 4 - len(failed)
    assert f"{4 - len(failed)} of 4 checks passed over seeds [0, 3]" in out
    # Trained models differ by seed (the check values may not: 30 steps train little).
    w0 = (tmp_path / "intro_points_2_fits_1_steps_30_batch-size_16-s0" / "weights.safetensors").read_bytes()
    w3 = (tmp_path / "intro_points_2_fits_1_steps_30_batch-size_16-s3" / "weights.safetensors").read_bytes()
    assert w0 != w3
    assert check_seeds.main(args) == code
    again = json.loads((tmp_path / "checks.json").read_text())
    assert again["checks"] == record["checks"]
    assert (tmp_path / "intro_points_2_fits_1_steps_30_batch-size_16-s0" / "weights.safetensors").read_bytes() == w0


def test_check_seeds_refuses_an_unknown_experiment_in_one_line(tmp_path):
    with pytest.raises(SystemExit, match="--experiments: one of .*not 'nope'"):
        check_seeds.main(["--experiments", "nope", "--seeds", "0", "--out", str(tmp_path)])
