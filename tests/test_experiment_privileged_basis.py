"""privileged-basis: the neuron analysis on planted weights, and a tiny run end to end."""
import json

import numpy as np
import pyarrow.parquet as pq

from engine.experiments import privileged_basis as pb
from engine.experiments import runner


def test_neuron_table_counts_drivers_per_neuron():
    W = np.zeros((2, 5, 10), np.float32)
    W[0, np.arange(5), np.arange(5)] = 1.0      # five features, one neuron each: monosemantic
    W[1, np.arange(5), np.arange(5)] = 1.0
    W[1, 0, 7] = 0.8                            # feature 7 shares neuron 0 (polysemantic)
    W[1, 0, 8] = -1.0                           # a negative weight drives nothing through the ReLU
    W[1, 4, 4] = 0.1                            # neuron 4 nearly silent: dead
    t = pb.neuron_table(W)
    assert t["monosemantic"].tolist() == [5, 3] and t["polysemantic"].tolist() == [0, 1]
    assert t["dead"].tolist() == [0, 1] and t["represented"].tolist() == [5, 6]
    assert t["driven_by"][1, 0].nonzero()[0].tolist() == [0, 7]


def test_a_tiny_run_writes_its_outputs_and_checks(tmp_path):
    spec = pb.PrivilegedBasisSpec(points=3, fits=2, steps=50, batch_size=32, density_max=0.6, density_min=0.03,
                                  backend="torch")
    summary = runner.run(pb.EXPERIMENT, spec, tmp_path, progress=False, log=lambda m: None)
    assert {c["name"] for c in summary["checks"]} == {"dense-monosemantic", "sparse-polysemantic"}
    neurons = pq.read_table(tmp_path / "neurons.parquet").to_pydict()
    assert len(neurons["neuron"]) == 3 * 5 and set(neurons) >= {"drivers", "features", "w_0", "w_9"}
    assert (tmp_path / "figures/privileged_basis.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "summary.json").read_text())["experiment"] == "privileged-basis"
    # the analysed fit of each density is the one with the lowest expected loss, not the training window
    inst = pq.read_table(tmp_path / "instances.parquet").to_pydict()
    for d in range(3):
        fits = [2 * d, 2 * d + 1]
        best = min(fits, key=lambda k: inst["expected_loss"][k])
        assert [inst["kept"][k] for k in fits] == [k == best for k in fits]
    assert all(np.isfinite(inst["expected_loss"])) and inst["final_loss"] != inst["expected_loss"]
