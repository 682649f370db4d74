"""The learning-dynamics experiment: a tiny run writes every output; the jump, loss-plateau and D*
criteria on synthetic trajectories with known answers; and the backends' weight snapshots equal
runs trained for exactly that many steps, also across a resume from a mid-chunk checkpoint."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from engine import backends, reference
from engine.errors import SpecError
from engine.experiments import learning_dynamics as ld, runner
from engine.spec import ModelSpec, TrainSpec

TINY = dict(features=20, hidden=5, seeds=2, steps=60, batch_size=32, snapshots=8)


def test_tiny_run_writes_every_output(tmp_path):
    spec = ld.LearningDynamicsSpec(**TINY, backend="torch")
    summary = runner.run(ld.EXPERIMENT, spec, tmp_path / "r", progress=False, log=lambda m: None)
    r = tmp_path / "r"
    for f in ("spec.json", "summary.json", "README.txt", *ld.EXPERIMENT.outputs):
        assert (r / f).is_file(), f
    assert (r / "figures/learning_dynamics.png").read_bytes()[:4] == b"\x89PNG"
    steps = spec.snapshot_steps()
    assert steps[0] == 0 and steps[-1] == 60 and list(steps) == sorted(set(steps))
    w = load_file(str(r / "weights.safetensors"))
    S = len(steps)
    assert w["W_snapshots"].shape == (S, 2, 5, 20) and w["b_snapshots"].shape == (S, 2, 20)
    assert w["snapshot_steps"].tolist() == list(steps)
    assert torch.equal(w["W_snapshots"][-1], w["W"]) and torch.equal(w["b_snapshots"][-1], w["b"])
    # the init snapshot is the engine's initialisation of those instances
    init = reference.init_weights(spec.model, spec.seed, torch.arange(2))
    assert torch.equal(w["W_snapshots"][0], init)
    snaps = pq.read_table(r / "snapshots.parquet").to_pydict()
    hist = pq.read_table(r / "history.parquet").to_pydict()
    assert len(snaps["dimensionality"]) == S * 2 * 20 and len(hist["loss"]) == 60 * 2
    from engine import metrics
    # rows ordered by seed, step, feature
    assert snaps["seed"][:S * 20] == [0] * S * 20 and snaps["step"][20] == steps[1]
    assert snaps["feature"][:3] == [0, 1, 2]
    np.testing.assert_allclose(snaps["dimensionality"][-20:], metrics.dimensionality(w["W"])[1].numpy())
    assert [c["name"] for c in summary["checks"]] == ["jumps", "loss-plateau", "d-star-falls"]
    assert len(summary["D_star"]) == 2 and len(summary["D_star"][0]) == S


# --- the criteria on synthetic trajectories -------------------------------------------------------

STEPS = np.array(ld.LearningDynamicsSpec(steps=10_000, snapshots=50).snapshot_steps())


def _traj(kind, t=STEPS):
    t = np.asarray(t, float)
    if kind == "step":          # 0.1 until step 1000, then on the 1/2 line
        return np.where(t < 1000, 0.1, 0.5)
    if kind == "log-ramp":      # smooth on the log-step axis, from 0.1 to 1/2 over 4 decades
        return 0.1 + 0.4 * np.log10(np.maximum(t, 1)) / 4
    if kind == "exp":           # an exponential approach to 1/2
        return 0.1 + 0.4 * (1 - np.exp(-t / 1000))
    if kind == "linear":        # a ramp linear in steps, ending at the last step
        return 0.1 + 0.4 * t / t[-1]
    raise ValueError(kind)


@pytest.mark.parametrize("kind, expected", [("step", 1.0), ("log-ramp", 0.25 / 4), ("exp", 0.21), ("linear", 0.20)])
def test_jump_share_of_known_trajectories(kind, expected):
    share, jump_step = ld.jump_shares(STEPS, _traj(kind)[:, None])
    assert share[0] == pytest.approx(expected, abs=0.03)
    if kind == "step":
        assert 500 < jump_step[0] < 2000


def test_jump_check_passes_steps_and_fails_smooth_ramps():
    jumps = np.stack([_traj("step"), _traj("step") - 0.1, _traj("log-ramp"), _traj("exp")], axis=1)
    # features: two steps (to 1/2 and to 2/5), two smooth arrivals at 1/2
    s = ld.jump_summary(STEPS, jumps)
    assert s["judged"] == 4 and s["jumping"] == 2
    smooth = np.stack([_traj("log-ramp"), _traj("exp"), _traj("exp")], axis=1)
    assert ld.jump_summary(STEPS, smooth)["jumping"] == 0
    # not judged: ends off the lines (0.6), or never moved (sits on 1/2 from the start)
    other = np.stack([_traj("step") + 0.1, np.full(len(STEPS), 0.5)], axis=1)
    assert ld.jump_summary(STEPS, other)["judged"] == 0


def test_loss_plateau_then_drop_passes():
    t = np.arange(10_000)
    rng = np.random.default_rng(0)
    loss = 0.06 + 0.004 * (t < 1000) + 0.005 * np.exp(-t / 10) + rng.normal(0, 2e-4, t.size)
    r = ld.loss_plateau(t, loss, [800, 1000, 1100, 1500])
    assert r["passed"] and r["plateau"] < 0.05 and r["drop"] > 0.5
    assert r["plateau_window"][1] <= r["jump_window"][0] * 1.0001


def test_a_linear_ramp_ending_at_the_last_step_is_not_a_jump():
    """An audit's finding: a ramp linear in steps makes 0.44 of its move in the last 0.25 decades, and
    passed as a jump; windows ending in the last 0.25 decades are left out, so it scores 0.20."""
    ramps = np.stack([_traj("linear"), _traj("linear") - 0.1], axis=1)  # ending on 1/2 and 2/5
    s = ld.jump_summary(STEPS, ramps)
    assert s["judged"] == 2 and s["jumping"] == 0
    # a late step (at 3,000 of 10,000, 0.5 decades before the end) still counts
    late = np.where(STEPS < 3000, 0.1, 0.5)[:, None]
    assert ld.jump_summary(STEPS, late)["jumping"] == 1


def test_the_flat_start_of_a_decay_is_no_plateau():
    """An audit's finding: an exponential decay is flat at its start on a log axis, and that passed as a
    plateau before the jumps. The plateau must now follow a first fall of DROP_MIN of the decrease."""
    t = np.arange(10_000)
    loss = 0.06 + 0.006 * np.exp(-t / 2000)
    r = ld.loss_plateau(t, loss, [1000, 1500, 2000, 3000])
    assert not r["passed"] and r["drop"] >= ld.DROP_MIN  # it drops across the jumps, but
    assert r["plateau"] is None  # no 0.4-decade window after the first fifth of the fall ends before them
    # the same decay after a first fall and a plateau passes
    stepped = 0.06 + 0.006 * np.exp(-np.maximum(t - 400, 0) / 2000) + 0.008 * np.exp(-t / 10)
    r = ld.loss_plateau(t, stepped, [1000, 1500, 2000, 3000])
    assert r["passed"] and r["before"] >= ld.DROP_MIN


@pytest.mark.parametrize("case", ["log-decline", "drop-elsewhere", "no-jumps", "rising"])
def test_loss_plateau_fails(case):
    t = np.arange(10_000)
    jumps = [2000, 3000, 4000]
    if case == "log-decline":      # falls evenly on the log axis: no plateau anywhere
        loss = 0.07 - 0.002 * np.log10(t + 1)
    elif case == "drop-elsewhere":  # a plateau, but the loss fell long before the features jump
        loss = 0.06 + 0.004 * (t < 100)
    elif case == "rising":
        loss = 0.06 + 1e-7 * t
    else:
        loss, jumps = 0.06 + 0.004 * (t < 1000), []
    r = ld.loss_plateau(t, loss, jumps)
    assert not r["passed"]
    if case == "log-decline":
        assert r["plateau"] == pytest.approx(0.4 / 3, abs=0.02)
    if case == "drop-elsewhere":
        assert r["plateau"] < 0.01 and r["drop"] < 0.05


def _result(Ws, hist, steps):
    """A one-seed JobResult from snapshots Ws (S, 1, m, n) and a loss history (T, 1)."""
    from engine.experiments.base import JobResult
    n = Ws.shape[-1]
    return JobResult(Ws[-1], torch.zeros(1, n), torch.tensor([0.06]), hist, tuple(steps), Ws,
                     torch.zeros(len(steps), 1, n))


def test_checks_on_synthetic_snapshots(tmp_path):
    """The whole analysis on synthetic snapshots: 4 antipodal pairs that form at step ~1000 (a jump)
    while the loss sits on a plateau and then drops, and D* falling from 1 to 1/2."""
    from engine.store import RunDir
    m, n, T = 4, 8, 10_000
    spec = ld.LearningDynamicsSpec(features=n, hidden=m, seeds=1, steps=T, snapshots=50, backend="torch")
    steps = spec.snapshot_steps()
    snaps = []
    for t in steps:
        W = np.zeros((m, n))
        for j in range(m):    # feature 2j dedicated to e_j throughout; 2j+1 grows antipodal to it at step 1000
            W[j, 2 * j] = 1.0
            W[j, 2 * j + 1] = -1.0 if t >= 1000 else -0.01
        snaps.append(W[None])
    Ws = torch.tensor(np.array(snaps), dtype=torch.float32)          # (S, 1, m, n)
    hist = torch.tensor(0.06 + 0.004 * (np.arange(T) < 1000) + 0.005 * np.exp(-np.arange(T) / 10),
                        dtype=torch.float32)[:, None]
    res = _result(Ws, hist, steps)
    summary = ld.EXPERIMENT.analyse(spec, {"models": res}, RunDir(tmp_path))
    checks = {c["name"]: c for c in summary["checks"]}
    # every feature ends at 1/2; the dedicated ones start at ~1 and the grown ones at ~0: all moved by >= 0.1
    assert checks["jumps"]["passed"] and checks["jumps"]["measured"]["judged"] == n
    assert checks["jumps"]["measured"]["fraction"] == 1.0
    assert checks["loss-plateau"]["passed"]
    assert checks["d-star-falls"]["passed"] and checks["d-star-falls"]["measured"][0] == pytest.approx(0.5, abs=0.01)
    assert summary["seeds"][0]["fraction_counts"]["1/2"] == n
    assert (tmp_path / "figures/learning_dynamics.png").is_file()
    # the same weights without the jump: the pairs form gradually over the log axis, the loss falls evenly
    smooth = []
    for t in steps:
        W = np.zeros((m, n))
        frac = np.log10(max(t, 1)) / 4
        for j in range(m):
            W[j, 2 * j], W[j, 2 * j + 1] = 1.0, -max(frac, 0.01)
        smooth.append(W[None])
    Ws = torch.tensor(np.array(smooth), dtype=torch.float32)
    hist = torch.tensor(0.07 - 0.002 * np.log10(np.arange(T) + 1), dtype=torch.float32)[:, None]
    res = _result(Ws, hist, steps)
    summary = ld.EXPERIMENT.analyse(spec, {"models": res}, RunDir(tmp_path / "smooth"))
    checks = {c["name"]: c for c in summary["checks"]}
    assert not checks["jumps"]["passed"] and not checks["loss-plateau"]["passed"]
    assert checks["d-star-falls"]["passed"]  # D* still falls 1 -> 1/2, just smoothly
    # and a model whose D* never falls
    flat = torch.tensor(np.array([np.eye(m, n)[None]] * len(steps)), dtype=torch.float32)
    res = _result(flat, hist, steps)
    summary = ld.EXPERIMENT.analyse(spec, {"models": res}, RunDir(tmp_path / "flat"))
    assert not {c["name"]: c for c in summary["checks"]}["d-star-falls"]["passed"]


def test_bad_fields_are_refused():
    for field, value in (("inv_density", 0.5), ("seeds", 0), ("snapshots", 1), ("history_every", 0)):
        with pytest.raises(SpecError, match=field):
            ld.LearningDynamicsSpec(**{field: value})


# --- snapshots on the backends ------------------------------------------------------------------

def _backend_fn(name):
    if name == "cpu":
        pytest.importorskip("numba")
    return backends.train_chunk_fn(name)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_snapshots_equal_runs_of_that_many_steps(backend):
    fn = _backend_fn(backend)
    model, K = ModelSpec(6, 2), 3
    p = np.full((K, 6), 0.3)
    imp = np.ones((K, 6))
    train = TrainSpec(steps=40, batch_size=16, lr=1e-2, schedule="constant", seed=3)
    got = {}
    params, _, _ = fn(model, p, imp, train, 5, snapshot_steps=(0, 3, 10, 25, 40),
                      on_snapshot=lambda t, W, b: got.__setitem__(t, (W, b)))
    W, b = params["W"], params["b"]
    assert sorted(got) == [0, 3, 10, 25, 40]
    assert torch.equal(got[0][0], reference.init_weights(model, 3, torch.arange(5, 8)))
    assert torch.equal(got[0][1], torch.zeros(K, 6))
    assert torch.equal(got[40][0], W) and torch.equal(got[40][1], b)
    for t in (3, 10, 25):
        at_t, _, _ = fn(model, p, imp, TrainSpec(steps=t, batch_size=16, lr=1e-2, schedule="constant", seed=3), 5)
        assert torch.equal(got[t][0], at_t["W"]) and torch.equal(got[t][1], at_t["b"]), t


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_snapshots_survive_a_kill_inside_a_chunk(backend, tmp_path, monkeypatch):
    """Killed mid-chunk (after some snapshots were saved) and resumed from its checkpoint, a run
    stores the same snapshots, weights and loss history as an uninterrupted one."""
    _backend_fn(backend)
    spec = ld.LearningDynamicsSpec(features=6, hidden=2, seeds=2, steps=200, batch_size=16, snapshots=8,
                                   backend=backend)
    runner.run(ld.EXPERIMENT, spec, tmp_path / "whole", progress=False, log=lambda m: None)
    if backend == "torch":
        # 2 chunks of 1 instance (the torch plan); die in chunk 1 at step 120 (a checkpoint every 2 steps)
        module, name, die_at, wanted = reference, "params_train_step", 200 + 121, lambda *a, **k: True
    else:
        # 1 chunk of 2 instances; segments end at every snapshot step: die in the 6th segment
        from engine import cpu_backend
        module, name, die_at = cpu_backend, "run_steps", 6
        wanted = lambda model, *a, **k: model.n_features == 6  # noqa: E731  (not the compile probe)
    real, calls = getattr(module, name), []

    def dies_midway(*a, **k):
        if wanted(*a, **k):
            calls.append(1)
            if len(calls) == die_at:
                raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(module, name, dies_midway)
    with pytest.raises(KeyboardInterrupt):
        runner.run(ld.EXPERIMENT, spec, tmp_path / "cut", progress=False, log=lambda m: None, checkpoint_every_s=0)
    chunk = "models_000000001-000000002" if backend == "torch" else "models_000000000-000000002"
    assert (tmp_path / f"cut/chunks/{chunk}.partial.safetensors").exists()
    assert list((tmp_path / "cut/chunks").glob(f"{chunk}.snapshot_*"))  # some snapshots saved before the kill
    monkeypatch.setattr(module, name, real)
    summary = runner.run(ld.EXPERIMENT, spec, tmp_path / "cut", progress=False, log=lambda m: None)
    assert 0 < summary["instance_steps_trained"] < 2 * 200
    assert not list((tmp_path / "cut/chunks").glob("*.snapshot_*"))
    a = load_file(str(tmp_path / "whole/weights.safetensors"))
    b = load_file(str(tmp_path / "cut/weights.safetensors"))
    for key in ("W", "b", "W_snapshots", "b_snapshots", "snapshot_steps"):
        assert torch.equal(a[key], b[key]), key
    ha, hb = (pq.read_table(tmp_path / d / "history.parquet").to_pydict() for d in ("whole", "cut"))
    assert ha == hb


def test_line_changes_counts_features_that_move_between_lines():
    half, fifth, off = 0.5, 0.4, 0.3
    D = np.array([
        [off, half, half, half, fifth, fifth],     # 1/2 then 2/5: counts
        [off, half, half, half, half, half],       # one line only
        [off, half, fifth, half, half, half],      # 2/5 for a single snapshot: not held
        [half, half, off, off, half, half],        # leaves 1/2 and comes back to it: one line
    ]).T
    assert ld.line_changes(D) == 1


def test_snapshots_too_sparse_for_a_window_show_no_jump():
    share, where = ld.jump_shares([0, 1000, 10_000], np.array([[0.1], [0.5], [0.5]]))
    assert share.tolist() == [0.0] and np.isnan(where).all()


def test_the_report_says_how_many_snapshots_were_kept():
    """Log-spaced steps that round to the same early step are kept once; the printed report says so
    (50 asked for over 10,000 steps: 45 distinct steps, plus step 0)."""
    spec = ld.LearningDynamicsSpec(steps=10_000, snapshots=50)
    summary = {"snapshot_steps": list(spec.snapshot_steps()), "seeds": [], "backend": "cpu"}
    line = ld.EXPERIMENT.report(spec, summary)[0]
    assert "weights at step 0 and 45 log-spaced steps of the 50 asked for (5 of the early ones rounded" in line
    spec = ld.LearningDynamicsSpec(steps=60, snapshots=8)
    line = ld.EXPERIMENT.report(spec, {"snapshot_steps": list(spec.snapshot_steps()), "seeds": [], "backend": "cpu"})[0]
    assert line.endswith("8 log-spaced steps of the 8 asked for")


def test_a_coarse_history_is_not_a_plateau():
    """Recorded every 100 steps, the bins before step ~450 hold no record; they used to take the
    nearest one, a flat line there, so the check passed on a loss that falls evenly on the log axis."""
    t = np.arange(0, 10_000, 100)
    loss = 0.07 - 0.002 * np.log10(t + 1) - 0.004 * (t > 1200)  # no plateau before the drop at the jumps
    r = ld.loss_plateau(t, loss, [1100, 1200, 1300])
    assert not r["passed"] and r["plateau"] is None and r["judged_from"] > 300
    assert np.isnan(ld.smooth_loss(t, loss, [10.0, 20.0])).all()
    # every record: judged from step 10, as before
    assert ld.loss_plateau(np.arange(10_000), 0.07 - 0.002 * np.log10(np.arange(10_000) + 1),
                           [2000, 3000, 4000])["judged_from"] == 10


def test_history_every_past_the_last_step_is_refused():
    for every in (5000, 5001):  # history_every == steps records step 0 alone too
        with pytest.raises(SpecError, match=r"history_every: must be an integer in \[1, 4999\]"):
            ld.LearningDynamicsSpec(history_every=every, steps=5000)
    assert ld.LearningDynamicsSpec(history_every=4999, steps=5000).history_every == 4999


def test_history_every_is_judged_against_the_presets_steps(capsys):
    """The CLI's early check used the spec's bare default (5,000 steps); the paper preset trains 10,000."""
    from engine import cli
    cli._validate_early(ld.EXPERIMENT, "paper", {"history_every": 6000})  # 10,000 steps: fine
    cli._validate_early(ld.EXPERIMENT, "auto", {"history_every": 6000})   # some preset takes it
    with pytest.raises(SpecError, match=r"history_every: must be an integer in \[1, 4999\]"):
        cli._validate_early(ld.EXPERIMENT, "quick", {"history_every": 6000})
    with pytest.raises(SystemExit) as e:  # a value no preset takes: one line naming it, before any work
        cli.main(["run", "learning-dynamics", "--history-every", "20000"])
    assert e.value.code == 2 and "--history-every: must be an integer in [1, 4999]" in capsys.readouterr().err
