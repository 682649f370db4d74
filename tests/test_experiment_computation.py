"""computation: neuron rescaling keeps the function, the R^2 of planted models, a tiny run end to end."""
import numpy as np
import pytest
import pyarrow.parquet as pq
import torch

from engine import reference
from engine.experiments import computation as co
from engine.experiments import runner
from engine.spec import ModelSpec


def test_rescaling_neurons_keeps_the_function():
    g = torch.Generator().manual_seed(0)
    P = {k: torch.randn(*s, generator=g) for k, s in ModelSpec(6, 4, "abs-computation").param_shapes().items()}
    P["W1"][2] = 0.0  # a dead neuron stays as it is
    R = co.rescale_neurons(P)
    assert torch.allclose(R["W1"].abs().amax(1)[[0, 1, 3]], torch.ones(3))
    x = torch.rand(1, 50, 6, generator=g) * 2 - 1
    ones = torch.ones(1, 6)
    a = reference.params_instance_loss({k: v[None] for k, v in P.items()}, x, ones, ModelSpec(6, 4, "abs-computation"))
    b = reference.params_instance_loss({k: v[None] for k, v in R.items()}, x, ones, ModelSpec(6, 4, "abs-computation"))
    assert torch.allclose(a, b, rtol=1e-5)


def test_r2_is_one_for_a_model_computing_abs_and_at_most_zero_for_a_constant():
    spec = co.ComputationSpec(features=3, hidden=6, test_examples=3000)
    # |x_i| = ReLU(x_i) + ReLU(-x_i): two neurons per feature
    W1 = torch.zeros(6, 3)
    W2 = torch.zeros(3, 6)
    for i in range(3):
        W1[2 * i, i], W1[2 * i + 1, i] = 1.0, -1.0
        W2[i, 2 * i] = W2[i, 2 * i + 1] = 1.0
    exact = {"W1": W1, "b1": torch.zeros(6), "W2": W2, "b2": torch.zeros(3)}
    assert np.allclose(co.feature_r2(exact, spec, 0.05), 1.0)
    constant = {"W1": torch.zeros(6, 3), "b1": torch.zeros(6), "W2": torch.zeros(3, 6), "b2": torch.full((3,), 0.25)}
    assert (co.feature_r2(constant, spec, 0.05) <= 1e-9).all()
    half = {**exact, "W2": W2 * torch.tensor([1.0, 0.0] * 3)}  # ReLU(x_i) only: one sign
    r2 = co.feature_r2(half, spec, 0.05)
    assert (r2 > co.HALF).all() and (r2 < co.COMPUTED).all()


def test_one_neuron_per_feature_never_counts_as_computed():
    """Why the checks compare with m/2: one neuron reading only x_i makes y_i monotone in x_i, which
    predicts |x_i| with R^2 <= 0.395, below COMPUTED, however its weights and biases are set."""
    spec = co.ComputationSpec(features=1, hidden=1, test_examples=20_000)
    best = -np.inf
    for a in (1.0, -1.0, 2.5):
        for c in (-0.3, 0.0, 0.1, 0.2, 0.4):
            for w, b in ((1.0, 0.0), (0.7, 0.1), (1.0, -0.2), (-1.0, 0.5), (0.5, 0.05)):
                P = {"W1": torch.tensor([[a]]), "b1": torch.tensor([c]), "W2": torch.tensor([[w]]), "b2": torch.tensor([b])}
                best = max(best, float(co.feature_r2(P, spec, 0.05)[0]))
    assert 0.3 < best < 0.4 < co.COMPUTED


def test_a_tiny_run_writes_its_outputs(tmp_path):
    spec = co.ComputationSpec(features=8, hidden=3, fits=1, steps=20, batch_size=16, test_examples=200,
                              backend="torch")
    summary = runner.run(co.EXPERIMENT, spec, tmp_path, progress=False, log=lambda m: None)
    assert [c["name"] for c in summary["checks"]] == ["computes-in-superposition", "dense-without-superposition",
                                                      "dense-monosemantic", "sparse-polysemantic"]
    assert len(summary["mean_features_per_neuron"]) == len(co.DENSITIES)
    assert (tmp_path / "neurons.parquet").stat().st_size > 0
    assert len(summary["features_computed"]) == len(co.DENSITIES)
    assert (tmp_path / "figures/computation.png").stat().st_size > 10_000
    assert "expected_loss" not in pq.read_table(tmp_path / "instances.parquet").column_names  # one fit: no ranking


def test_several_fits_are_ranked_by_expected_loss(tmp_path):
    spec = co.ComputationSpec(features=8, hidden=3, fits=2, steps=20, batch_size=16, test_examples=200,
                              backend="torch")
    runner.run(co.EXPERIMENT, spec, tmp_path, progress=False, log=lambda m: None)
    inst = pq.read_table(tmp_path / "instances.parquet").to_pydict()
    assert np.all(np.isfinite(inst["expected_loss"])) and len(inst["expected_loss"]) == 2 * len(co.DENSITIES)
    for lo in range(0, 2 * len(co.DENSITIES), 2):
        best = min((lo, lo + 1), key=lambda k: inst["expected_loss"][k])
        assert [inst["kept"][lo], inst["kept"][lo + 1]] == [lo == best, lo + 1 == best]


def test_features_per_neuron_counts_weights_of_at_least_a_quarter_and_skips_dead_neurons():
    W1 = torch.tensor([[1.0, 0.0, 0.0, 0.0],      # monosemantic
                       [-1.0, 0.3, -0.25, 0.2],  # three features at >= 0.25 of its largest
                       [0.0, 0.0, 0.0, 0.0]])    # dead
    P = {"W1": W1, "b1": torch.zeros(3), "W2": torch.zeros(4, 3), "b2": torch.zeros(4)}
    counts = co.features_per_neuron(P)
    assert counts.tolist() == [1, 3, 0]
    assert np.mean(counts == 1) == 1 / 3 and np.mean(counts >= 2) == 1 / 3


def test_trained_abs_models_compute_both_signs_of_every_feature():
    """The W2 = |W2| start (reference.init_params): with a signed start, an output side whose pre-activation
    starts negative gets no gradient and never learns, and some feature ends computing one sign only."""
    from engine import DataSpec, TrainSpec, train
    spec = co.ComputationSpec(features=4, hidden=8, test_examples=2000)
    p = np.full((4, 4), 0.1)
    res = train(ModelSpec(4, 8, "abs-computation"), DataSpec(p, np.ones(4)),
                TrainSpec(steps=3000, batch_size=256, lr=1e-2, weight_decay=0.0, optimizer="adam"),
                backend="cpu", progress=False)
    for k in range(4):
        r2 = co.feature_r2({n: t[k] for n, t in res.params.items()}, spec, 0.1)
        assert (r2 > 0.9).all(), (k, r2)


def test_the_recipe_probe_runs_and_leaves_the_initialisation_as_it_was(capsys):
    from bench import probe_computation
    from engine import reference
    default = reference.W2_INIT_SCALE
    probe_computation.main(["--steps", "3", "--densities", "0.1", "0.01", "--fits", "2", "--w2-scale", "1"])
    out = capsys.readouterr().out
    assert "W2 init scale 1.0, 2 fit(s)" in out and out.count("every fit:") == 2
    assert reference.W2_INIT_SCALE == default


def test_untrained_and_dead_models_have_no_polysemantic_neurons():
    """Found by an audit: counted on raw weights, an untrained init (every neuron carries several
    features at random) and a model whose neurons never fire (b1 = -100) passed sparse-polysemantic.
    Only features computed at least one sign of, in neurons that fire, count."""
    spec = co.ComputationSpec(features=30, hidden=12, test_examples=1000)
    u = co.eval_uniforms(spec)
    init = co.rescale_neurons({k: v[0] for k, v in reference.init_params(spec.model, 0, torch.tensor([0])).items()})
    raw = co.features_per_neuron(init)
    assert np.mean(raw[raw > 0] >= 2) >= co.MOSTLY  # the old count: "polysemantic"
    for P in (init, {**init, "b1": torch.full((12,), -100.0)}):
        used = co.used_features_per_neuron(P, co.feature_r2(P, spec, 0.001, u))
        assert np.mean(used >= 2) == 0.0
    assert not co.fires({**init, "b1": torch.full((12,), -100.0)}).any()
    assert co.fires({**init, "b1": torch.full((12,), 0.1)}).all()
    # can fire: some input with one active feature in [-1, 1] makes the pre-activation positive
    one = {"W1": torch.tensor([[0.5, -0.2], [0.3, 0.1]]), "b1": torch.tensor([-0.4, -0.3])}
    assert co.fires(one).tolist() == [True, False]
    # A neuron carrying two computed features (0 and 1: ReLU(x_0) and ReLU(-x_0) style pairs) counts 2.
    W1, W2 = torch.zeros(12, 30), torch.zeros(30, 12)
    for i in range(6):
        W1[2 * i, i], W1[2 * i + 1, i] = 1.0, -1.0
        W2[i, 2 * i] = W2[i, 2 * i + 1] = 1.0
    W1[0, 1] = 0.5  # neuron 0 also reads feature 1 (computed by neurons 2 and 3)
    P = {"W1": W1, "b1": torch.zeros(12), "W2": W2, "b2": torch.zeros(30)}
    used = co.used_features_per_neuron(P, co.feature_r2(P, spec, 0.01, u))
    assert used.tolist() == [2] + [1] * 11


def test_the_neuron_checks_take_shares_of_all_neurons(tmp_path):
    """A review: with shares of the live neurons only, two neurons computing |x_0| beside 10 that read
    random features and write nowhere were 'monosemantic' (1.0), and two live polysemantic neurons
    beside 10 dead ones 'polysemantic' (1.0). Through the analysis, on planted models."""
    from engine.experiments.base import JobResult
    from engine.store import RunDir
    spec = co.ComputationSpec(features=6, hidden=12, fits=1, test_examples=400)
    g = torch.Generator().manual_seed(0)
    W1, W2, b1 = torch.zeros(12, 6), torch.zeros(6, 12), torch.zeros(12)
    W1[0, 0], W1[1, 0] = 1.0, -1.0
    W2[0, 0] = W2[0, 1] = 1.0
    dense = {"W1": W1.clone(), "b1": b1.clone(), "W2": W2.clone(), "b2": torch.zeros(6)}
    dense["W1"][2:] = torch.rand(10, 6, generator=g) * 0.75 + 0.25  # read everything, write nowhere
    sparse = {"W1": W1.clone(), "b1": b1.clone(), "W2": W2.clone(), "b2": torch.zeros(6)}
    sparse["W1"][0, 1], sparse["W1"][1, 1] = 1.0, -1.0  # both live neurons carry features 0 and 1 ...
    sparse["W2"][1, 0] = sparse["W2"][1, 1] = 1.0       # ... and feed both outputs
    sparse["W1"][2:] = torch.rand(10, 6, generator=g)
    sparse["b1"][2:] = -100.0                           # the rest never fire
    models = [dense] * (len(co.DENSITIES) - 1) + [sparse]
    params = {k: torch.stack([m[k] for m in models]) for k in dense}
    res = JobResult(None, None, torch.zeros(len(models)), params=params)
    summary = co.EXPERIMENT.analyse(spec, {"models": res}, RunDir(tmp_path))
    checks = {c["name"]: c for c in summary["checks"]}
    assert checks["dense-monosemantic"]["measured"] == [pytest.approx(2 / 12), 1]
    assert checks["sparse-polysemantic"]["measured"] == pytest.approx(2 / 12)
    assert not checks["dense-monosemantic"]["passed"] and not checks["sparse-polysemantic"]["passed"]
    # A second review's: all 12 neurons on feature 0 (6 x ReLU(x_0), 6 x ReLU(-x_0), each writing 1/6 of
    # |x_0|): every neuron monosemantic, but on one feature; the monosemantic ones must cover m/8 = 2.
    one = {"W1": torch.zeros(12, 6), "b1": torch.zeros(12), "W2": torch.zeros(6, 12), "b2": torch.zeros(6)}
    one["W1"][:, 0] = torch.tensor([1.0, -1.0] * 6)
    one["W2"][0, :] = 1 / 6
    params = {k: torch.stack([one[k]] * len(co.DENSITIES)) for k in one}
    res = JobResult(None, None, torch.zeros(len(co.DENSITIES)), params=params)
    got = {c["name"]: c for c in co.EXPERIMENT.analyse(spec, {"models": res}, RunDir(tmp_path / "one"))["checks"]}
    assert got["dense-monosemantic"]["measured"] == [1.0, 1] and got["dense-monosemantic"]["passed"] is False
