"""correlated: the set geometry on planted weights, and a tiny run end to end."""
import math

import numpy as np
import pyarrow.parquet as pq
import torch

from engine.experiments import correlated as co
from engine.experiments import runner


def test_set_geometry_on_planted_weights():
    c, s = math.cos(0.3), math.sin(0.3)
    W = torch.tensor([[[1.0, 0.0, -1.0, 0.7, c, c],
                       [0.0, 1.0, 0.0, 0.7, s, s]]])   # set 0 orthogonal, set 1 at 45 deg, set 2 collapsed
    sets = (("correlated", 0, 2), ("anticorrelated", 2, 2), ("correlated", 4, 2))
    g = co.set_geometry(W, sets)[0]
    assert [x["collapsed"] for x in g] == [False, False, True]
    assert abs(g[0]["max_abs_cos"]) < 1e-9 and abs(g[1]["max_cos"] + math.sqrt(0.5)) < 1e-6
    assert g[1]["represented"] == 2 and g[2]["min_cos"] > 0.999


def test_block_cosines_separate_within_and_across_sets():
    W = torch.eye(4)[:, [0, 1, 0, 1]] + 0.0   # set 0 = features 0, 1 (orthogonal); set 1 repeats them
    within, across = co.block_cosines(W, (("correlated", 0, 2), ("correlated", 2, 2)))
    assert within == 0.0 and across == 0.5


def test_a_tiny_run_writes_its_outputs(tmp_path):
    spec = co.CorrelatedSpec(fits=2, points=2, steps=20, batch_size=16, backend="torch")
    summary = runner.run(co.EXPERIMENT, spec, tmp_path, progress=False, log=lambda m: None)
    assert [c["name"] for c in summary["checks"]] == ["correlated-orthogonal", "anticorrelated-antipodal",
                                                      "sets-collapse", "local-bases"]
    sets = pq.read_table(tmp_path / "sets.parquet").to_pydict()
    assert len(sets["setup"]) == 2 + 2 + 3 * 2 + 2 and set(sets["kind"]) == {"correlated", "anticorrelated"}
    inst = pq.read_table(tmp_path / "instances.parquet").to_pydict()
    assert np.bincount([list(co.SETUPS).index(s) for s in inst["setup"]]).tolist() == [2, 2, 4, 2]
    assert np.all(np.isfinite(inst["expected_loss"]))
    for lo in range(0, 10, 2):  # per setup and density, the analysed fit has the lowest expected loss
        best = min((lo, lo + 1), key=lambda k: inst["expected_loss"][k])
        assert [inst["kept"][lo], inst["kept"][lo + 1]] == [lo == best, lo + 1 == best]
