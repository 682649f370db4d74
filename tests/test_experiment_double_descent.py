"""double-descent: dataset sizes, the test loss against the reference, and a tiny run end to end."""
import numpy as np
import pyarrow.parquet as pq
import torch

from engine import reference
from engine.experiments import double_descent as dd
from engine.experiments import runner


def test_every_job_trains_on_its_whole_dataset():
    spec = dd.DoubleDescentSpec(points=4, examples_min=3, examples_max=300, fits=2)
    jobs = dd.EXPERIMENT.jobs(spec)
    assert [j.name for j in jobs] == [f"T{t}" for t in spec.sizes()] and spec.sizes() == [3, 14, 65, 300]
    assert all(j.data.examples == j.train.batch_size == int(j.name[1:]) and j.n_instances == 2 for j in jobs)


def test_test_loss_is_the_reference_loss_on_the_fixed_sample():
    spec = dd.DoubleDescentSpec(features=7, test_examples=5000)
    x = dd.test_sample(spec)
    W, b = torch.randn(3, 2, 7), torch.randn(3, 7) * 0.1
    want = reference.instance_loss(W.double(), b.double(), x.expand(3, -1, -1), torch.ones(3, 7, dtype=torch.float64),
                                   "relu-output")
    assert np.allclose(dd.test_losses(W, b, x, rows=999), want.numpy(), rtol=1e-12)
    assert abs(float((x != 0).double().mean()) - spec.density) < 0.002


def test_a_tiny_run_writes_its_outputs(tmp_path):
    spec = dd.DoubleDescentSpec(features=10, points=3, examples_min=2, examples_max=50, fits=2, steps=30,
                                test_examples=500, backend="torch")
    summary = runner.run(dd.EXPERIMENT, spec, tmp_path, progress=False, log=lambda m: None)
    assert [c["name"] for c in summary["checks"]] == ["test-loss-peak", "memorize-then-generalize",
                                                      "large-data-beats-memorizing"]
    sizes = pq.read_table(tmp_path / "sizes.parquet").to_pydict()
    assert sizes["examples"] == spec.sizes() and len(summary["mean_test_loss"]) == 3


def test_row_losses_average_the_models_per_test_example():
    spec = dd.DoubleDescentSpec(features=6, test_examples=700)
    x = dd.test_sample(spec)
    W, b = torch.randn(3, 2, 6), torch.randn(3, 6) * 0.1
    per = ((reference.forward(W.double(), b.double(), x.expand(3, -1, -1), "relu-output") - x) ** 2).mean(2)
    assert torch.allclose(dd.row_losses(W, b, x, rows=97), per.mean(0), rtol=1e-12)
    assert np.allclose(dd.test_losses(W, b, x, rows=97), per.mean(1).numpy(), rtol=1e-12)


def test_paired_z_is_the_mean_difference_in_standard_errors():
    g = torch.Generator().manual_seed(0)
    low = torch.rand(5000, generator=g, dtype=torch.float64)
    high = low + 0.01 + 0.1 * torch.randn(5000, generator=g, dtype=torch.float64)
    d = (high - low).numpy()
    assert abs(dd.paired_z(low, high) - d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))) < 1e-9
    assert dd.paired_z(low, low) == 0.0  # no difference at all: no evidence


# Medians over fits per size, shaped like the quick run (n=100, density 0.01; x 1e-3).
EXAMPLES = [3, 6, 14, 30, 65, 139, 300, 646, 1392, 3000]
REAL_TEST = np.array([3.30, 3.30, 3.62, 3.38, 4.54, 4.96, 3.93, 3.22, 3.20, 3.19]) * 1e-3
REAL_TRAIN = np.array([1e-13, 2e-12, 1.2e-4, 1.4e-3, 1.9e-3, 2.2e-3, 2.6e-3, 2.9e-3, 3.0e-3, 3.04e-3])


def _rows(mean, seed):
    g = torch.Generator().manual_seed(seed)
    return mean + 0.002 * torch.rand(20_000, generator=g, dtype=torch.float64)


def _checks(test, train=REAL_TRAIN, last_shift=-0.00011):
    zero = _rows(0.00238, 1)  # the zero model's per-example losses, mean ~3.38e-3
    first = zero - 0.00007 + 0.0001 * torch.randn(20_000, generator=torch.Generator().manual_seed(2),
                                                  dtype=torch.float64)
    last = zero + last_shift + 0.0001 * torch.randn(20_000, generator=torch.Generator().manual_seed(3),
                                                    dtype=torch.float64)
    return {c["name"]: c["passed"] for c in dd.descent_checks(test, train, EXAMPLES, first, last, zero)}


def test_a_real_descent_passes_every_check():
    assert _checks(REAL_TEST) == {"test-loss-peak": True, "memorize-then-generalize": True,
                                  "large-data-beats-memorizing": True}


def test_wrong_descents_fail():
    # The audit's model: every size from T=6 on is the zero model (one fit of T=65 off at random, which
    # the median ignores): no peak, and the largest dataset learned nothing.
    zero_like = REAL_TEST.copy()
    zero_like[1:] = 3.38e-3
    got = _checks(zero_like, train=np.r_[REAL_TRAIN[0], np.full(9, 3.3e-3)], last_shift=0.0)
    assert got == {"test-loss-peak": False, "memorize-then-generalize": True, "large-data-beats-memorizing": False}
    # One fit far off at one size does not move that size's median (the audit's random fit at T=65).
    assert dd._fit_statistics(np.array([3.3e-3, 3.31e-3, 3.32e-3, 40e-3, 3.3e-3]), np.zeros(5))[
        "median_test_loss"] == 3.31e-3
    # A peak one size wide, carried by the median, is a peak: the paper preset's (n=1000) at T=300.
    paper = np.array([3.49, 3.33, 3.36, 3.35, 3.33, 3.50, 6.04, 3.31, 3.28, 3.28]) * 1e-3
    assert _checks(paper)["test-loss-peak"] is True
    # With 1 or 2 fits a median is one fit's: the peak check is not run.
    zero = torch.zeros(20_000, dtype=torch.float64)
    few = dd.descent_checks(REAL_TEST, REAL_TRAIN, EXAMPLES, zero, zero, zero, fits=2)
    assert few[0]["name"] == "test-loss-peak" and few[0]["passed"] is None and "--fits >= 3" in few[0]["expected"]
    # A test loss that rises to the largest size peaks at an end: no double descent.
    assert _checks(np.linspace(3.3e-3, 5e-3, 10))["test-loss-peak"] is False


def test_the_analysis_compares_the_largest_dataset_with_the_smallest(tmp_path):
    """The wiring of large-data-beats-memorizing: a bad model at the smallest size and the zero model
    everywhere else. The largest size beats the smallest by far (z > 5) but not the zero model (it is
    the zero model): the check fails, and the measured order is [vs smallest, vs zero]."""
    from engine.experiments.base import JobResult
    from engine.store import RunDir
    spec = dd.DoubleDescentSpec(features=6, points=3, examples_min=3, examples_max=30, fits=2, test_examples=3000)
    res = {}
    for T in spec.sizes():
        W = torch.zeros(2, 2, 6)
        if T == spec.sizes()[0]:
            W[:, 0, :] = 1.0  # every output is the sum of the inputs: a bad model
        res[f"T{T}"] = JobResult(W, torch.zeros(2, 6), torch.zeros(2))
    summary = dd.EXPERIMENT.analyse(spec, res, RunDir(tmp_path))
    got = {c["name"]: c for c in summary["checks"]}["large-data-beats-memorizing"]
    assert got["measured"][0] > 5 and got["measured"][1] == 0.0 and got["passed"] is False
