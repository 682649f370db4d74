"""The dimensionality experiment (uniform superposition): a tiny run writes every output, and each
check's logic on synthetic weights whose D*, D_i and plateau are known."""
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from engine.errors import SpecError
from engine.experiments import dimensionality as dim, runner
from engine.experiments.base import JobResult
from engine.store import RunDir


def test_tiny_run_writes_every_output(tmp_path):
    spec = dim.DimensionalitySpec(features=20, hidden=5, points=3, fits=2, steps=40, batch_size=32, backend="torch")
    summary = runner.run(dim.EXPERIMENT, spec, tmp_path / "r", progress=False, log=lambda m: None)
    r = tmp_path / "r"
    for f in ("spec.json", "summary.json", "README.txt", *dim.EXPERIMENT.outputs):
        assert (r / f).is_file(), f
    assert (r / "figures/dimensionality.png").read_bytes()[:4] == b"\x89PNG"
    points = pq.read_table(r / "points.parquet").to_pydict()
    features = pq.read_table(r / "features.parquet").to_pydict()
    instances = pq.read_table(r / "instances.parquet").to_pydict()
    assert len(points["D_star"]) == 3 and len(features["dimensionality"]) == 3 * 20 and len(instances["fit"]) == 6
    assert points["inv_density"][0] == pytest.approx(1.0) and points["inv_density"][-1] == pytest.approx(100.0)
    np.testing.assert_allclose(np.array(points["density"]) * np.array(points["inv_density"]), 1.0)
    np.testing.assert_allclose(points["features_per_dimension"], 1 / np.array(points["D_star"]))
    w = load_file(str(r / "weights.safetensors"))
    assert w["W"].shape == (6, 5, 20) and w["b"].shape == (6, 20) and w["kept"].tolist() == points["kept_instance"]
    # The kept fit is the lowest-loss one of its density, and its D* is the metric of its weights.
    loss = np.array(instances["final_loss"]).reshape(3, 2)
    assert points["kept_instance"] == (np.arange(3) * 2 + loss.argmin(1)).tolist()
    from engine import metrics
    np.testing.assert_allclose(points["D_star"], metrics.dimensions_per_feature(w["W"][w["kept"]]).numpy())
    assert [c["name"] for c in summary["checks"]] == ["half-plateau", "dense", "sticky-half"]
    assert set(summary["fraction_counts"]) == {f"{x:.4g}" for x in points["inv_density"]}


def _pairs(m, n):
    """(m, n): m/... antipodal pairs along the first axes (features 2j, 2j+1 = +-e_j), rest zero."""
    W = np.zeros((m, n))
    for j in range(min(m, n // 2)):
        W[j, 2 * j], W[j, 2 * j + 1] = 1.0, -1.0
    return W


def _polygons(m, n, k):
    """(m, n): regular k-gons in the planes (e0, e1), (e2, e3), ... (D_i = 2/k), rest zero."""
    W = np.zeros((m, n))
    f = 0
    for plane in range(m // 2):
        for i in range(k):
            if f < n:
                a = 2 * math.pi * i / k
                W[2 * plane, f], W[2 * plane + 1, f] = math.cos(a), math.sin(a)
                f += 1
    return W


def _identity(m, n):
    W = np.zeros((m, n))
    W[:, :m] = np.eye(m)
    return W


def _analyse(tmp_path, layouts, good_fit=None):
    """Run the analysis on synthetic weights: layouts[i] is density i's (m, n) weights, stored as the
    lowest-loss fit (index good_fit[i], default 0) beside a random higher-loss fit."""
    m, n = layouts[0].shape
    spec = dim.DimensionalitySpec(features=n, hidden=m, points=len(layouts), fits=2, backend="torch")
    rng = np.random.default_rng(0)
    W, loss = [], []
    for i, good in enumerate(layouts):
        g = (good_fit or [0] * len(layouts))[i]
        for fit in range(2):
            W.append(good if fit == g else rng.normal(size=(m, n)))
            loss.append(0.1 if fit == g else 0.5)
    res = JobResult(torch.tensor(np.array(W), dtype=torch.float32), torch.zeros(len(W), n),
                    torch.tensor(loss, dtype=torch.float32))
    summary = dim.EXPERIMENT.analyse(spec, {"models": res}, RunDir(tmp_path))
    return spec, {c["name"]: c for c in summary["checks"]}, summary


def test_checks_pass_on_the_papers_geometry(tmp_path):
    m, n = 4, 10
    # dense: one dimension per feature (D* = 1); then pairs twice (D* = 1/2, the plateau; the second
    # density's kept model is fit 1); then pentagons (D* = 2/5).
    spec, checks, summary = _analyse(tmp_path, [_identity(m, n), _pairs(m, n), _pairs(m, n), _polygons(m, n, 5)],
                                     good_fit=[0, 0, 1, 0])
    inv = spec.inv_density()
    assert checks["half-plateau"]["passed"]
    got = checks["half-plateau"]["measured"]
    assert got["points"] == 2 and got["inv_density_range"] == [inv[1], inv[2]]
    assert got["slopes_before_on_after"] == pytest.approx([math.log10(2) / math.log10(inv[1]), 0.0,
                                                          math.log10(1.25) / math.log10(inv[3] / inv[2])], abs=1e-4)
    assert checks["dense"]["passed"] and checks["dense"]["measured"] == pytest.approx(1.0)
    assert checks["sticky-half"]["passed"] and checks["sticky-half"]["measured"] == 8
    np.testing.assert_allclose(summary["D_star"], [1.0, 0.5, 0.5, 0.4], atol=1e-6)
    assert summary["fraction_counts"][f"{inv[3]:.4g}"] == {"1": 0, "3/4": 0, "2/3": 0, "1/2": 0, "2/5": 10, "3/8": 0}
    assert summary["fraction_counts"][f"{inv[0]:.4g}"]["1"] == 4
    features = pq.read_table(tmp_path / "features.parquet").to_pydict()
    assert features["fraction_line"][3 * n:] == ["2/5"] * n
    assert (tmp_path / "figures/dimensionality.png").is_file()


def test_checks_fail_without_the_plateau_or_the_dense_point(tmp_path):
    m, n = 4, 10
    # dense point in superposition (triangles, D* = 2/3), and the pairs at only one density in between
    _, checks, _ = _analyse(tmp_path, [_polygons(m, n, 3), _pairs(m, n), _polygons(m, n, 5), _pairs(m, n)])
    assert not checks["half-plateau"]["passed"] and checks["half-plateau"]["measured"]["points"] == 1
    assert not checks["dense"]["passed"] and checks["dense"]["measured"] == pytest.approx(2 / 3)
    assert checks["sticky-half"]["passed"]
    # no antipodal pair anywhere: nothing on the 1/2 line
    _, checks, _ = _analyse(tmp_path / "2", [_identity(m, n), _polygons(m, n, 3), _polygons(m, n, 5),
                                             _polygons(m, n, 5)])
    assert not checks["sticky-half"]["passed"] and checks["sticky-half"]["measured"] == 0
    assert not checks["half-plateau"]["passed"] and checks["half-plateau"]["measured"]["points"] == 0


def _fans(m, n):
    """(m, n): in each plane (e0, e1), (e2, e3), ..., 4 unit vectors at 0, 45, 90, 135 degrees, rest zero: a
    tight frame, so every D_i is 1/2, but no two features are opposite (lowest cosine -0.71)."""
    W = np.zeros((m, n))
    f = 0
    for plane in range(m // 2):
        for i in range(4):
            if f < n:
                a = math.pi * i / 4
                W[2 * plane, f], W[2 * plane + 1, f] = math.cos(a), math.sin(a)
                f += 1
    return W


def test_the_checks_are_not_fooled_by_shrunk_weights_or_a_tight_frame(tmp_path):
    """Two wrong models the checks passed before (a helper's audit): dense weights shrunk to 0.3 (nothing
    represented; D* = 11, above the old one-sided bound) and 1/2-line features without an antipodal partner."""
    m, n = 4, 10
    _, checks, summary = _analyse(tmp_path, [0.3 * _identity(m, n), _fans(m, n), _fans(m, n), _polygons(m, n, 5)])
    assert not checks["dense"]["passed"] and checks["dense"]["measured"] == pytest.approx(1 / 0.09, rel=1e-5)
    assert summary["fraction_counts"][f"{summary['inv_density'][1]:.4g}"]["1/2"] == 8  # on the line ...
    assert not checks["sticky-half"]["passed"] and checks["sticky-half"]["measured"] == 0  # ... but not antipodal


def test_best_of_fits_decides_what_is_analysed(tmp_path):
    # The pairs are the higher-loss fit here: the random lower-loss fit is analysed instead.
    m, n = 4, 10
    _, checks, summary = _analyse(tmp_path, [_identity(m, n), _pairs(m, n), _pairs(m, n), _pairs(m, n)],
                                  good_fit=[0, 1, 1, 1])
    assert summary["D_star"][0] == pytest.approx(1.0)
    _, checks2, summary2 = _analyse(tmp_path / "2", [_identity(m, n), _pairs(m, n), _pairs(m, n), _pairs(m, n)])
    assert summary2["D_star"][1:] == pytest.approx([0.5] * 3)


@pytest.mark.parametrize("d_star, points, first, last", [
    ([1.0, 0.9, 0.5, 0.52, 0.3], 2, 2, 3),
    ([0.5, 0.5, 0.9, 0.46, 0.47, 0.55, 0.2], 3, 3, 5),   # the longest run wins
    ([1.0, 0.5, 0.9, 0.5, 0.2], 1, 1, 1),                # a tie: the first
    ([1.0, 0.44, 0.56, 0.2], 0, None, None),            # bounds are [0.45, 0.55]
])
def test_plateau_run(d_star, points, first, last):
    inv = np.arange(1, len(d_star) + 1, dtype=float)
    run = dim.plateau_run(inv, d_star)
    assert run["points"] == points
    assert run["inv_density_range"] == (None if first is None else [inv[first], inv[last]])


def test_a_smooth_power_law_has_no_plateau():
    """An audit's finding: D* = (1/(1-S))^-0.4, no plateau at all, has two points of the quick grid in
    [0.45, 0.55] (5.46 and 6.95) and passed. The quick run's own curve passes (slopes 1.33, 0.105, 0.72)."""
    inv = np.logspace(0, 2, 20)
    run = dim.plateau_run(inv, inv ** -0.4)
    assert run["points"] == 2 and run["slopes"] == pytest.approx([0.4, 0.4, 0.4], rel=1e-9)
    assert not dim.is_plateau(run)
    quick = [1.0084, 1.0123, 0.9936, 0.9321, 0.6225, 0.4846, 0.4724, 0.4205, 0.3314, 0.2693, 0.2154, 0.1771,
             0.144, 0.1176, 0.0989, 0.0834, 0.0721, 0.0631, 0.0569, 0.0528]
    run = dim.plateau_run(inv, quick)
    assert run["points"] == 2 and dim.is_plateau(run)
    assert run["slopes"][1] < 0.15 * min(run["slopes"][0], run["slopes"][2])
    # a run at the edge of the sweep is compared with the side the sweep reaches (an audit: with
    # --inv-density-max 6 the quick curve's plateau reaches the end) ...
    edge = dim.plateau_run(inv, np.r_[0.5, 0.5, inv[2:] ** -0.9])
    assert edge["points"] == 2 and math.isnan(edge["slopes"][0]) and dim.is_plateau(edge)
    assert dim.is_plateau(dim.plateau_run(inv, np.r_[1.0, inv[1:-2] ** -0.9, 0.5, 0.5]))
    # ... and a sweep that is all band has no side to compare with
    assert not dim.is_plateau(dim.plateau_run(inv[:3], [0.5, 0.5, 0.5]))
    # the flattest step counts, not the run end to end: a finer grid puts the steep flanks in the band
    fine = np.logspace(0, 2, 30)
    curve = 10 ** np.interp(np.log10(fine), np.log10(inv), np.log10(quick))
    run = dim.plateau_run(fine, curve)
    assert run["points"] == 3 and dim.is_plateau(run)


def test_bad_fields_are_refused():
    with pytest.raises(SpecError, match="hidden"):
        dim.DimensionalitySpec(features=10, hidden=10)
    with pytest.raises(SpecError, match="inv_density_max"):
        dim.DimensionalitySpec(inv_density_max=1.0)
    with pytest.raises(SpecError, match="points"):
        dim.DimensionalitySpec(points=1)


def test_presets_are_valid_specs():
    for preset in dim.PRESETS:
        spec = dim.EXPERIMENT.make_spec(**dim.EXPERIMENT.preset_fields(preset, "cpu"))
        assert (spec.features, spec.hidden) == (400, 30)
        assert spec.inv_density()[0] == 1.0 and spec.inv_density()[-1] == pytest.approx(100.0)
