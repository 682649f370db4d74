"""Run integrity (#11): a run directory never lies. Diverged instances are flagged and left out of
the analysis; chunks are tied to the spec that made them; damaged files are named and retrained;
existing files are never overwritten by an unrelated run."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from engine import metrics
from engine.experiments import phase_diagram as pd
from engine.experiments import runner
from engine.experiments.base import best_of_fits

QUIET = dict(progress=False, log=lambda m: None)


def _planted(monkeypatch, instance: int):
    """Make phase-diagram instance ``instance`` diverge: dense features with an importance whose
    weighted loss overflows float32 (inf loss)."""
    real = pd.data_spec

    def data_spec(spec, table):
        d = real(spec, table)
        d.importance[instance] = 3e38
        d.feature_probability[instance] = 1.0
        return d

    monkeypatch.setattr(pd, "data_spec", data_spec)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_a_planted_diverging_instance_is_flagged_and_the_others_are_untouched(backend, tmp_path, monkeypatch):
    spec = pd.PhaseDiagramSpec(grid=3, seeds=2, steps=40, batch_size=16, backend=backend)
    clean = runner.run(pd.EXPERIMENT, spec, tmp_path / "clean", **QUIET)
    _planted(monkeypatch, 3)
    logs = []
    summary = runner.run(pd.EXPERIMENT, spec, tmp_path / "planted", progress=False, log=logs.append)

    assert summary["diverged_instances"] == {"models": 1} and clean["diverged_instances"] == {"models": 0}
    assert any("1 of 18 models instances diverged" in m for m in logs), logs
    inst = pq.read_table(tmp_path / "planted" / "instances.parquet").to_pydict()
    assert inst["diverged"] == [i == 3 for i in range(18)]
    assert inst["phase"][3] == "diverged" and not inst["kept"][3]  # never classified, never kept
    a, b = (load_file(str(tmp_path / d / "weights.safetensors")) for d in ("clean", "planted"))
    others = torch.arange(18) != 3
    assert torch.equal(a["W"][others], b["W"][others]) and torch.equal(a["b"][others], b["b"][others])
    # Instance 3 is seed 1 of cell 1: that cell's phase comes from seed 0 alone.
    cells = pq.read_table(tmp_path / "planted" / "cells.parquet").to_pydict()
    assert cells["seeds_diverged"][1] == 1 and cells["seeds_kept"][1] == 1
    assert cells["empirical_phase"][1] != "diverged"


def test_a_cell_whose_seeds_all_diverged_is_excluded_from_the_agreement():
    spec = pd.PhaseDiagramSpec(grid=2, seeds=2, steps=10)
    W = torch.zeros(8, 1, 2)
    W[:, 0, :] = torch.tensor([1.0, 0.0])  # extra feature not represented everywhere
    loss = np.full(8, 0.1)
    W[0:2] = float("nan")                  # cell 0: both seeds diverged
    loss[0:2] = np.nan
    inst, cells, agreement, by_protocol = pd.analyse(spec, W, loss, np.isnan(loss))
    assert cells["empirical_phase"][0] == "diverged" and cells["seeds_kept"][0] == 0
    emp = np.array(cells["empirical_phase"][1:])
    assert agreement == pytest.approx(np.mean(emp == np.array(cells["theory_phase"][1:])))
    everything = np.full(8, True)
    _, cells, agreement, _ = pd.analyse(spec, W, loss, everything)
    assert np.isnan(agreement) and set(cells["empirical_phase"]) == {"diverged"}


def test_nan_is_never_classified():
    phase = metrics.classify(np.array([np.nan, 1.0, np.inf, 1.0]), np.array([0.0, np.nan, 0.0, 0.0]))
    assert phase.tolist() == [metrics.DIVERGED, metrics.DIVERGED, metrics.DIVERGED, metrics.DEDICATED]


def test_best_of_fits_never_picks_a_diverged_fit_even_with_a_finite_loss():
    loss = np.array([0.1, 0.5, 0.3, 0.2])
    diverged = np.array([True, False, False, False])  # e.g. weights NaN after the last update
    assert best_of_fits(loss, 2, diverged).tolist() == [1, 3]
    assert best_of_fits(loss, 2).tolist() == [0, 3]
