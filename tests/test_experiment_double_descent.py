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
    assert [c["name"] for c in summary["checks"]] == ["test-loss-peak", "memorize-then-generalize"]
    sizes = pq.read_table(tmp_path / "sizes.parquet").to_pydict()
    assert sizes["examples"] == spec.sizes() and len(summary["mean_test_loss"]) == 3
