"""correlated: the set geometry on planted weights, and a tiny run end to end."""
import math

import numpy as np
import pytest
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


def test_fit_shares_count_every_converged_fit():
    """local-bases wants most fits, not only the kept one: trained on independent features, 1 of 10
    fits had local bases by chance and the set-aware ranking kept it (an audit's control)."""
    from engine.experiments.base import JobResult
    local = torch.zeros(10, 20)
    local[range(10), range(10)] = 1.0
    for j in range(0, 10, 2):  # each set its own orthonormal basis, the two 45 degrees apart
        local[j, 10 + j] = local[j + 1, 10 + j] = local[j, 11 + j] = 1 / math.sqrt(2)
        local[j + 1, 11 + j] = -1 / math.sqrt(2)
    mixed = torch.eye(10)[:, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9]] + 0.0  # pairs in a set share
    orth = torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, -1.0]])  # sets {0,1}, {2,3} orthogonal inside
    anti = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]])  # antipodal inside
    results = {
        "corr2x2": JobResult(torch.stack([orth, orth, anti, orth]), torch.zeros(4, 4),
                             torch.tensor([0.0, 0.0, 0.0, math.nan])),  # the last diverged: not counted
        "anti2x2": JobResult(torch.stack([anti, orth, orth, orth]), torch.zeros(4, 4), torch.zeros(4)),
        "corr2x10": JobResult(torch.stack([local, mixed, mixed]), torch.zeros(3, 20), torch.zeros(3)),
    }
    shares = co.fit_shares(results)
    assert shares == {"corr2x2_orthogonal": 2 / 3, "anti2x2_antipodal": 0.25, "corr2x10_local_bases": 1 / 3}
    sets = co.SETUPS["corr2x10"][2]
    assert co.block_cosines(local, sets) == (pytest.approx(0.0, abs=1e-12), pytest.approx(2 * 0.7071 / 10, abs=1e-4))
    assert co.local_bases(local, sets) and not co.local_bases(mixed, sets)
    # A model that learned nothing, or only one set, has no pair to judge (a review: (0, 0) passed).
    assert all(math.isnan(v) for v in co.block_cosines(torch.zeros(10, 20), sets))
    one_set = local.clone()
    one_set[:, 10:] = 0.0
    within, across = co.block_cosines(one_set, sets)
    assert within == 0.0 and math.isnan(across) and not co.local_bases(one_set, sets)
    # A second review: 3 of 20 features learned; and 10 features in dimensions of their own.
    few = torch.zeros(10, 20)
    few[0, 0], few[1, 1], few[0, 10] = 1.0, 1.0, 1.0
    assert co.block_cosines(few, sets) == (0.0, 0.5) and not co.local_bases(few, sets)
    own = torch.zeros(10, 20)
    own[range(5), range(5)] = 1.0
    own[range(5, 10), range(10, 15)] = 1.0
    own[0, 10] = 1e-3  # one column tilted
    assert not co.local_bases(own, sets)
