"""pytest-benchmark suite.

GPU workloads: in CI (CPU) they run in smoke mode (tiny batch and K, torch providers and
interpreted Triton) so the benchmark code cannot rot; those timings are never reported. On a GPU,
``SUPBENCH_BENCH=full SUPBENCH_TEST_ON_GPU=1 pytest bench`` times the real workloads.

CPU workloads (``test_cpu_training_step``): the CPU backends at a reduced K with the full batch,
really timed, in CI too. ``test_cpu_fused_beats_the_reference`` prints the ratio table and fails
only if the fused cpu backend is not faster than the torch backend in the same run (a guard
noise cannot trip: the measured margin is 20-100x). The recorded results come from
``python -m bench.suite --device cpu``, which interleaves providers.
"""
import dataclasses
import json
import math
import os

import pytest
import torch

from bench import providers, report, suite
from bench.workloads import CPU_WORKLOADS, WORKLOADS

FULL = os.environ.get("SUPBENCH_BENCH") == "full" and torch.cuda.is_available()
DEVICE = "cuda" if FULL else "cpu"


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("provider", [p for p in providers.GPU_PROVIDERS if p != "compile"] + ["compile"])
def test_training_step(benchmark, workload, provider):
    if provider == "compile" and not FULL and workload != "basic":
        pytest.skip("smoke mode compiles one workload only (about 20 s on CPU)")
    reason = providers.available(provider, DEVICE)
    if reason:
        pytest.skip(reason)
    wl = WORKLOADS[workload] if FULL else WORKLOADS[workload].smoke()
    prov = providers.make(provider, wl, DEVICE, triton_steps_per_call=100 if FULL else 1)

    def step():
        prov.run()
        providers.synchronize(prov, DEVICE)

    benchmark.pedantic(step, rounds=5 if FULL else 2, warmup_rounds=1)
    benchmark.extra_info.update(workload=workload, K=wl.K, n=wl.n, m=wl.m, batch=wl.batch,
                                steps_per_call=prov.steps_per_call, precision=providers.PRECISION[provider])
    # Whatever the provider, the parameters it trained stay finite and moved from the init.
    if isinstance(prov, providers.Triton):
        W = prov.state["W"]
    elif isinstance(prov, providers.Jax):
        W = torch.as_tensor(__import__("numpy").asarray(prov.params[0]))
    else:
        W = prov.W
    assert torch.isfinite(W).all()


def test_eager_and_triton_providers_train_the_same_model():
    """Same init, same workload: after a few steps both providers have moved W by a similar amount
    (they draw different random batches, so only the size of the update is compared)."""
    wl = WORKLOADS["basic"].smoke()
    eager = providers.make("eager", wl, "cpu")
    trit = providers.make("triton-fp32", wl, "cpu", triton_steps_per_call=3)
    W0 = eager.W.clone()
    assert torch.equal(W0, trit.state["W"].cpu())
    for _ in range(3):
        eager.run()
    trit.run()
    de = (eager.W - W0).norm().item()
    dt = (trit.state["W"].cpu() - W0).norm().item()
    assert de > 0 and dt > 0 and 0.5 < de / dt < 2.0


def test_suite_smoke_records_and_report_renders(tmp_path):
    out = suite.main(["--smoke", "--workloads", "phase,uniform", "--providers", "eager,triton-fp32",
                      "--rounds", "2", "--out", str(tmp_path / "smoke.json")])
    rec = json.loads(out.read_text())
    assert rec["provenance"]["smoke"] is True and rec["provenance"]["torch"] == torch.__version__
    for w in ("phase", "uniform"):
        for p in ("eager", "triton-fp32"):
            r = rec["workloads"][w]["providers"][p]
            assert r["ms_per_step"] > 0 and len(r["rounds_ms"]) == 2
            assert math.isclose(r["instance_steps_per_s"], rec["workloads"][w]["workload"]["K"] / (r["ms_per_step"] / 1e3))
        assert "triton-fp32/eager" in rec["workloads"][w]["speedups"]
    assert set(rec["scaling"]["providers"]) == {"2", "5"}
    assert rec["end_to_end"]["agreement"] >= 0
    # The report ignores smoke records unless told otherwise, and renders them when told.
    md = report.main(["--results", str(tmp_path), "--out", str(tmp_path / "B.md")])
    assert "No GPU results recorded yet" in md.read_text()
    md = report.main(["--results", str(tmp_path), "--out", str(tmp_path / "B.md"), "--allow-smoke"])
    text = md.read_text()
    assert "### phase" in text and "triton-fp32/eager" in text and (tmp_path / "bench/results/smoke-scaling.png").exists()


def test_suite_refuses_to_time_a_cpu_as_a_result():
    if torch.cuda.is_available():
        pytest.skip("GPU present")
    with pytest.raises(SystemExit):
        suite.main([])


def test_plain_jax_adamw_matches_optax():
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    import numpy as np
    from engine import TrainSpec

    tr = TrainSpec()
    ref = optax.adamw(tr.lr, b1=tr.beta1, b2=tr.beta2, eps=tr.eps, weight_decay=tr.weight_decay)
    ours = providers._jax_adamw(tr)
    p = jax.numpy.linspace(-1.0, 1.0, 5)
    s1, s2 = ref.init(p), ours.init(p)
    for k in range(5):
        g = jax.numpy.sin(p * (k + 1))
        u1, s1 = ref.update(g, s1, p)
        u2, s2 = ours.update(g, s2, p)
        assert np.allclose(np.asarray(u1), np.asarray(u2), rtol=1e-5, atol=1e-9)


def test_tune_variants_are_valid_layouts_and_train_correctly():
    """Every layout bench.tune would time on a GPU is a valid TileConfig; a sample of them (each
    path once, on a small stand-in of the workload's shape) matches float64 for one step."""
    from engine import ModelSpec, TrainSpec
    from engine import triton_backend as tb
    from bench import tune
    from kernels.layout import tile_config

    seen = {}
    for wl in WORKLOADS.values():
        for layout in list(tune.baselines(wl.n, wl.m)) + list(tune.candidates(wl.n, wl.m)):
            cfg = tile_config(wl.n, wl.m, wl.batch, **layout)
            if cfg.path == "lanes":
                assert cfg.BB >= 4 // min(cfg.NP, 4), cfg  # whole Philox calls per tile
            seen.setdefault(cfg.path, (wl, layout))
    assert {"lanes", "fused", "gram", "blocked"} <= set(seen)
    for path, (wl, layout) in seen.items():
        n, m = (wl.n, wl.m) if wl.n <= 32 else (40, 5)  # the uniform shape is too slow to interpret
        small = {k: v for k, v in layout.items() if k not in ("BB", "NB")} | (
            {"BB": 16, "NB": 16} if path == "blocked" else {"BB": min(layout.get("BB", 16), 64)})
        g = torch.Generator().manual_seed(0)
        p, imp = torch.rand(3, n, generator=g) * 0.8 + 0.1, torch.rand(3, n, generator=g) + 0.2
        err = tb.one_step_gradient_error(ModelSpec(n, m), TrainSpec(batch_size=24), p, imp, **small)
        assert err < 1e-5, (path, small, err)


# CPU workloads at a tenth of their K (at least 2), full batch: a few seconds in all.
CPU_CI = {name: dataclasses.replace(wl, K=max(2, wl.K // 10)) for name, wl in CPU_WORKLOADS.items()}
CPU_MEDIANS: dict = {}


@pytest.mark.parametrize("workload", list(CPU_CI))
@pytest.mark.parametrize("provider", ["eager", "cpu"])
def test_cpu_training_step(benchmark, workload, provider):
    reason = providers.available(provider, "cpu")
    if reason:
        pytest.skip(reason)
    wl = CPU_CI[workload]
    prov = providers.make(provider, wl, "cpu", cpu_steps_per_call=1)
    W0 = prov.W.clone()
    prov.run()  # warm-up (compilation is cached on disk)
    benchmark.pedantic(prov.run, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(workload=workload, K=wl.K, n=wl.n, m=wl.m, batch=wl.batch, device="cpu",
                                precision=providers.PRECISION[provider])
    CPU_MEDIANS[(workload, provider)] = benchmark.stats.stats.median
    # Seven Adam steps at lr 1e-3 move every weight by about 7e-3 (Adam's steps are ~lr each).
    moved = (prov.W - W0).abs()
    assert torch.isfinite(prov.W).all() and moved.mean() > 2e-3 and moved.max() < 2e-2


def test_cpu_fused_beats_the_reference(capsys):
    """Runs after the CPU benchmarks above (file order): prints their ratio table and fails only if
    the fused cpu backend is not faster than the torch backend on the same workload in this run."""
    rows = [(w, CPU_MEDIANS.get((w, "eager")), CPU_MEDIANS.get((w, "cpu"))) for w in CPU_CI]
    rows = [r for r in rows if r[1] and r[2]]
    if not rows:
        pytest.skip("the CPU benchmarks did not run (numba missing, or run on their own)")
    with capsys.disabled():
        print("\nCPU benchmarks (ms per step, median of 5; reduced K):")
        for w, ref, ours in rows:
            wl = CPU_CI[w]
            print(f"  {w:8s} n={wl.n:<3d} m={wl.m:<2d} K={wl.K:<5d} torch backend {ref * 1e3:8.2f}   "
                  f"cpu {ours * 1e3:7.2f}   speed-up {ref / ours:6.1f}x")
    for w, ref, ours in rows:
        assert ours < ref, f"{w}: fused cpu {ours * 1e3:.2f} ms/step is not faster than the torch backend's {ref * 1e3:.2f}"


def test_cpu_suite_smoke_records_the_cpu_provider_and_its_ratios(tmp_path):
    pytest.importorskip("numba")
    out = suite.main(["--smoke", "--device", "cpu", "--workloads", "basic", "--providers", "eager,cpu", "--rounds", "2",
                      "--no-scaling", "--no-e2e", "--out", str(tmp_path / "cpu.json")])
    rec = json.loads(out.read_text())
    prov = rec["provenance"]
    assert prov["device"] == "cpu" and prov["cores"] >= 1 and prov["numba"] and prov["cpu"]
    r = rec["workloads"]["basic"]["providers"]["cpu"]
    assert r["ms_per_step"] > 0 and "cpu/eager" in rec["workloads"]["basic"]["speedups"]
    if prov["fp32_peak_gflops"]:
        assert r["fp32_peak_share"] == pytest.approx(r["useful_tflops"] * 1e3 / prov["fp32_peak_gflops"])
    md = report.main(["--results", str(tmp_path), "--out", str(tmp_path / "B.md"), "--allow-smoke"])
    assert "## CPU: " in md.read_text() and "cpu/eager" in md.read_text()


@pytest.mark.parametrize("args", [["--workloads", "bogus"], ["--providers", "nope"]])
def test_suite_refuses_unknown_names_with_one_line(args, capsys):
    with pytest.raises(SystemExit) as e:
        suite.main(["--smoke", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and args[1] in err and "Traceback" not in err
