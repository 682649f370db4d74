"""engine.experiments.phase_diagram.kept_seeds: which seeds of each grid cell make its phase, on
hand-made final losses (cells, seeds) whose answers are known."""
import numpy as np
import pytest

from engine.experiments.phase_diagram import PROTOCOLS, kept_seeds

LOSS = np.array([
    [0.30, 0.10, 0.20, 0.40],   # worst: seed 3, best: seed 1
    [0.50, 0.05, 0.90, 0.60],   # worst: seed 2, best: seed 1
    [0.02, 0.03, 0.01, 0.04],   # worst: seed 3, best: seed 2
    [7.00, 1.00, 3.00, 2.00],   # worst: seed 0, best: seed 1
])


def test_drop_worst_drops_exactly_the_highest_loss_seed_of_each_cell():
    kept = kept_seeds(LOSS, "drop-worst")
    assert kept.dtype == bool and kept.shape == LOSS.shape
    expected = np.ones_like(LOSS, dtype=bool)
    expected[[0, 1, 2, 3], [3, 2, 3, 0]] = False
    np.testing.assert_array_equal(kept, expected)


def test_best_keeps_exactly_the_lowest_loss_seed_of_each_cell():
    kept = kept_seeds(LOSS, "best")
    assert kept.dtype == bool and kept.shape == LOSS.shape
    expected = np.zeros_like(LOSS, dtype=bool)
    expected[[0, 1, 2, 3], [1, 1, 2, 1]] = True
    np.testing.assert_array_equal(kept, expected)


def test_cells_are_independent_of_each_other():
    """A cell's kept seeds depend on its own losses only: any subset of cells gives the same rows."""
    for protocol in PROTOCOLS:
        whole = kept_seeds(LOSS, protocol)
        for c in range(len(LOSS)):
            np.testing.assert_array_equal(kept_seeds(LOSS[c:c + 1], protocol), whole[c:c + 1])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_one_seed_is_always_kept(protocol):
    loss = np.array([[0.7], [0.1], [3.0]])
    np.testing.assert_array_equal(kept_seeds(loss, protocol), np.ones((3, 1), bool))


def test_two_seeds():
    loss = np.array([[0.2, 0.1], [0.1, 0.2]])
    np.testing.assert_array_equal(kept_seeds(loss, "drop-worst"), [[False, True], [True, False]])
    np.testing.assert_array_equal(kept_seeds(loss, "best"), [[False, True], [True, False]])


def test_ties_drop_or_keep_exactly_one_seed_the_lowest_index():
    """Tied worst (or best) losses: still exactly one seed is dropped (kept), deterministically the
    first of the tied ones, so a rerun classifies the cell the same way."""
    loss = np.array([
        [0.1, 0.5, 0.5, 0.2],   # tied worst: seeds 1 and 2
        [0.3, 0.1, 0.3, 0.1],   # tied worst 0 and 2, tied best 1 and 3
        [0.4, 0.4, 0.4, 0.4],   # all tied
        [0.2, 0.2, 0.9, 0.5],   # tied best: seeds 0 and 1
    ])
    drop = kept_seeds(loss, "drop-worst")
    np.testing.assert_array_equal(drop.sum(axis=1), [3, 3, 3, 3])
    np.testing.assert_array_equal(~drop, [[False, True, False, False], [True, False, False, False],
                                          [True, False, False, False], [False, False, True, False]])
    best = kept_seeds(loss, "best")
    np.testing.assert_array_equal(best.sum(axis=1), [1, 1, 1, 1])
    np.testing.assert_array_equal(best, [[True, False, False, False], [False, True, False, False],
                                         [True, False, False, False], [True, False, False, False]])


def test_inputs_are_not_modified():
    loss = LOSS.copy()
    for protocol in PROTOCOLS:
        kept_seeds(loss, protocol)
    np.testing.assert_array_equal(loss, LOSS)


def test_best_never_keeps_a_diverged_seed():
    loss = np.array([[1.0, np.nan, 0.5]])
    assert kept_seeds(loss, "best").tolist() == [[False, False, True]]


def test_the_minima_probe_retrains_missed_cells_and_leaves_the_initialisation_as_it_was(tmp_path, capsys):
    """bench.probe_phase_minima on a tiny finished run: one line per variant, shares in [0, 1], and
    the engine's init_weights restored (the probe scales it while it trains)."""
    pytest.importorskip("numba")
    from bench import probe_phase_minima
    from engine import reference
    from engine.experiments import phase_diagram as pd
    from engine.experiments import runner
    spec = pd.PhaseDiagramSpec(grid=3, seeds=2, steps=30, batch_size=32, backend="cpu")
    runner.run(pd.EXPERIMENT, spec, tmp_path / "run", progress=False, log=lambda m: None)
    draw = reference.init_weights
    probe_phase_minima.main(["--run", str(tmp_path / "run"), "--seeds", "2", "--variants", "1,0.01,20", "0.5,0.01,20"])
    out = capsys.readouterr().out
    assert reference.init_weights is draw
    lines = [line for line in out.splitlines() if line.startswith("init x")]
    assert len(lines) == 2 and lines[1].startswith("init x0.5 lr 0.01 steps 20")
    shares = [float(w.strip(",;")) for line in lines for w in line.split(": ", 1)[1].split() if w[0].isdigit()
              and "." in w and not w.endswith("s")]
    assert shares and all(0 <= v <= 1 for v in shares)


def test_the_minima_probe_finds_each_protocols_misses_whatever_the_run_was_analysed_under(tmp_path):
    """probe_phase_minima.cell_matches recomputes each cell's phase from instances.parquet: under the
    protocol a run was analysed under it gives that run's cells.parquet exactly, and under the other one
    what a re-analysis under it writes."""
    pytest.importorskip("numba")
    import dataclasses

    import pyarrow.parquet as pq
    from bench.probe_phase_minima import cell_matches
    from engine.experiments import phase_diagram as pd
    from engine.experiments import runner
    spec = pd.PhaseDiagramSpec(grid=4, seeds=3, steps=60, batch_size=32, backend="cpu", protocol="best")
    run = tmp_path / "run"
    for protocol in ("best", "drop-worst"):
        runner.run(pd.EXPERIMENT, dataclasses.replace(spec, protocol=protocol), run, progress=False,
                   log=lambda m: None)
        cells = pq.read_table(run / "cells.parquet").to_pydict()
        got = cell_matches(run, protocol)
        assert got["empirical_phase"].tolist() == cells["empirical_phase"] and got["match"].tolist() == cells["match"]


def test_the_minima_probe_classifies_a_hand_made_cell_under_each_protocol(tmp_path):
    """Two cells, three seeds each, written by hand. Cell (0, 0): its best seed (lowest expected loss) is in
    superposition, while drop-worst averages seeds 0 and 1 (norm 0.5, superposition 0.45: dedicated).
    Cell (0, 1): seed 1 diverged and is never kept; both protocols end with seed 0 alone (dedicated)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from bench.probe_phase_minima import cell_matches
    f32 = pa.float32()
    pq.write_table(pa.table({
        "instance": list(range(6)), "density_index": [0] * 6, "importance_index": [1, 1, 1, 0, 0, 0],
        "seed_index": [0, 1, 2, 0, 1, 2],
        "expected_loss": [2.0, 1.0, 3.0, 1.0, 2.0, 3.0], "diverged": [False, True, False, False, False, False],
        "extra_norm": pa.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0], f32),
        "extra_superposition": pa.array([0.1, 0.0, 0.0, 0.9, 0.0, 0.9], f32)}), tmp_path / "instances.parquet")
    pq.write_table(pa.table({"density_index": [0, 0], "importance_index": [0, 1],
                             "theory_phase": ["superposition", "dedicated"]}), tmp_path / "cells.parquet")
    best, worst = cell_matches(tmp_path, "best"), cell_matches(tmp_path, "drop-worst")
    assert best["empirical_phase"].tolist() == ["superposition", "dedicated"]
    assert worst["empirical_phase"].tolist() == ["dedicated", "dedicated"]
    assert best["match"].tolist() == [True, True] and worst["match"].tolist() == [False, True]


@pytest.mark.parametrize("features", [2, 3])
def test_the_boundary_check_fails_maps_that_agreement_alone_passes(features):
    """Maps drawn by hand from theory: the boundary ignoring r (superposition iff s < 0.3), or theory's
    read at 1.5x and 0.7x the density. Agreement (share of cells) passes each in 2->1 (>= 0.9); the
    boundary check (engine.experiments.phase_diagram.boundary_shifts) must fail them and pass theory
    itself, and a boundary one grid step off."""
    from engine import theory
    from engine.experiments import phase_diagram as pd

    spec = pd.PhaseDiagramSpec(grid=20, features=features)
    d, r = spec.axes()
    di, ri = np.meshgrid(np.arange(20), np.arange(20), indexing="ij")
    s, rr = d[di.ravel()], r[ri.ravel()]
    names = {k: p for k, p in enumerate(("not represented", "dedicated", "superposition"))}

    def theory_map(scale):
        return np.array([names[int(theory.phase(features, density=min(1.0, a / scale), rel_importance=b))]
                         for a, b in zip(s, rr)])

    def share(empirical):
        cells = {"importance_index": ri.ravel(), "empirical_phase": empirical, "theory_phase": theory_map(1.0)}
        shifts = pd.boundary_shifts(cells, d)
        step = (np.log10(d[-1]) - np.log10(d[0])) / 19
        return float(np.mean(np.abs(shifts) <= max(pd.BOUNDARY_DECADES, step) + 1e-9))

    flat = np.where(s < 0.3, "superposition", np.where(rr > 1, "dedicated", "not represented"))
    step_off = theory_map(10 ** 0.105)  # one grid step (0.105 decades) denser, as the trained maps lean
    assert share(theory_map(1.0)) == 1.0 and share(step_off) >= pd.BOUNDARY_SHARE
    for wrong in (flat, theory_map(1.5), theory_map(0.7)):
        assert share(wrong) < pd.BOUNDARY_SHARE


def test_the_minima_probe_refuses_a_run_analysed_before_expected_losses_in_one_line(tmp_path, capsys):
    """A run whose instances.parquet predates the expected_loss column: one line saying how to re-analyse it."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from bench import probe_phase_minima
    (tmp_path / "spec.json").write_text(json.dumps({"features": 2, "grid": 2, "seeds": 1}))
    pq.write_table(pa.table({"density_index": [0], "importance_index": [0], "seed_index": [0], "final_loss": [1.0],
                             "diverged": [False], "extra_norm": [1.0], "extra_superposition": [0.0]}),
                   tmp_path / "instances.parquet")
    pq.write_table(pa.table({"density_index": [0], "importance_index": [0], "theory_phase": ["dedicated"]}),
                   tmp_path / "cells.parquet")
    with pytest.raises(SystemExit) as e:
        probe_phase_minima.main(["--run", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "no expected_loss" in err[-1] and "re-analyse" in err[-1]
