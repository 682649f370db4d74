"""Run the benchmark suite and record it: ``python -m bench.suite`` (GPU), ``python -m bench.suite
--device cpu`` (the CPU backends, CPU workloads) or ``--smoke`` (tiny sizes, CI).

Method: for each workload, every available provider is built in this one process, warmed up
(compilation, autotuning), and its peak GPU memory taken over one call; then several rounds, each
timing every provider once in rotating order, synchronised before and after, with enough calls
per timing to last about 50 ms. The median per-step time over rounds is reported with
instance-steps/s, useful TFLOP/s (10 B n m FLOP per instance-step) and its share of the device's
FP32 peak, and supbench's ratio to each peer. Results go to bench/results/<stamp>-<device>.json
with provenance; smoke runs are marked ``smoke`` and never reported.

CPU FP32 peak estimate: cores x clock (``cpu MHz`` of /proc/cpuinfo, the base clock under a
hypervisor) x 32 FLOP/cycle (two 256-bit FMA pipes: 2 x 8 float32 lanes x 2 FLOP; AVX-512 on
AMD Zen 4 runs on the same pipes), or x 64 where a core has two 512-bit FMA pipes (Intel's AVX-512
server cores): that is read from a measurement, a one-core torch sgemm faster than 48 FLOP per cycle
at that clock (one such Intel Xeon here: 160 GFLOP/s at 2.6 GHz, 62 FLOP/cycle; the AMD EPYC: ~34).
Override with --cpu-peak-gflops.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

if __name__ == "__main__" and "--smoke" in sys.argv:
    # The Triton interpreter must be chosen before triton is imported (CPU smoke runs).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from engine import machine  # noqa: E402

from . import providers  # noqa: E402
from .workloads import CPU_WORKLOADS, SCALING_K, WORKLOADS

RESULTS = Path(__file__).parent / "results"
# Dense FP32 (non-tensor-core) peaks, TFLOP/s, from NVIDIA's data sheets (SXM parts).
FP32_PEAK_TFLOPS = {"H100": 67.0, "H200": 67.0, "A100": 19.5}


def fp32_peak(gpu_name: str | None) -> float | None:
    for key, value in FP32_PEAK_TFLOPS.items():
        if gpu_name and key in gpu_name:
            return value
    return None


def provenance(device: str, smoke: bool, argv) -> dict:
    info = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "smoke": smoke,
            "command": "python -m bench.suite " + " ".join(shlex.quote(a) for a in argv),
            "python": sys.version.split()[0], "torch": torch.__version__, "device": device,
            "platform": platform.platform()}
    info.update({k: v for k, v in machine.versions().items() if k != "torch"})  # torch: the imported one above
    for mod in ("jax", "optax"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    info["git_commit"] = machine.git_commit()
    if device == "cpu":
        info.update(cpu_info())
        try:  # whether the cpu backend's kernels got 512-bit code where LLVM would give 256 (kernels/__init__.py)
            from kernels.cpu_products import WIDE_TILES, WIDE_VECTORS
            from kernels.cpu_train import PHILOX_16
            info["numba_512_bit_code_asked"] = WIDE_VECTORS
            info["cpu_wide_tiles"], info["cpu_philox_16_lanes"] = WIDE_TILES, PHILOX_16
        except ImportError:
            info["numba_512_bit_code_asked"] = info["cpu_wide_tiles"] = info["cpu_philox_16_lanes"] = None
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            info["driver"] = None
    return info


def cpu_info() -> dict:
    """CPU model, cores this process may use, clock and the FP32 peak estimate (module docstring)."""
    model, mhz, flags = machine.cpu_model(), None, ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "cpu MHz" and mhz is None:
                mhz = float(value)
            elif key == "flags" and not flags:
                flags = value
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    sgemm = sgemm_gflops_one_core()
    per_cycle, note = flop_per_cycle(flags, mhz, sgemm)
    peak = cores * mhz * 1e-3 * per_cycle if mhz else None
    return {"cpu": model, "cores": cores, "cpu_mhz": mhz, "avx512": ("avx512f" in flags.split()) if flags else None,
            "sgemm_one_core_gflops": sgemm, "fp32_peak_gflops": peak,
            "fp32_peak_note": f"{cores} cores x {mhz} MHz x {per_cycle} FLOP/cycle{note}"}


def flop_per_cycle(flags: str, mhz: float | None, sgemm_gflops: float) -> tuple[int, str]:
    """FP32 FLOP per cycle per core for the peak estimate (module docstring), and what to add to its
    note: 64 where the CPU has AVX-512 and one core's measured sgemm beat 48 FLOP per cycle (two
    512-bit FMA pipes), else 32 with FMA (two 256-bit pipes), else 16."""
    if mhz and "avx512f" in flags.split() and sgemm_gflops / (mhz * 1e-3) > 48:
        return 64, (f": two 512-bit FMA pipes, as one core's sgemm ran {sgemm_gflops:.0f} GFLOP/s "
                    f"({sgemm_gflops / (mhz * 1e-3):.0f} FLOP/cycle)")
    return (32 if "fma" in flags.split() else 16), ""


def sgemm_gflops_one_core(n: int = 1024, seconds: float = 1.0) -> float:
    """GFLOP/s of torch's float32 matrix product (n x n) on one thread: the best of repeated calls
    over about ``seconds``. What the FP32 peak estimate reads the FMA pipes per core from."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        best, t_end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        return 2 * n ** 3 / best / 1e9
    finally:
        torch.set_num_threads(threads)


def _timed(prov, device, calls):
    providers.synchronize(prov, device)
    t0 = time.perf_counter()
    for _ in range(calls):
        prov.run()
    providers.synchronize(prov, device)
    return time.perf_counter() - t0


def measure(wl, names, device, rounds, triton_steps, log, peak_tflops=None, cpu_steps=5,
            max_warmup_s: float = 300.0) -> dict:
    """Interleaved measurement of one workload; returns per-provider figures and ratios.
    A provider whose warm-up (compilation) takes over ``max_warmup_s`` is recorded as skipped."""
    built, out = {}, {}
    for name in names:
        reason = providers.available(name, device)
        if reason:
            out[name] = {"skipped": reason}
            continue
        try:
            prov = providers.make(name, wl, device, triton_steps_per_call=triton_steps, cpu_steps_per_call=cpu_steps)
            warm = _timed(prov, device, 2)  # warm-up: compile, jit, first launches
            if warm > max_warmup_s:
                out[name] = {"skipped": f"warm-up (compilation) took {warm:.0f} s > {max_warmup_s:.0f} s"}
                log(f"  {name}: skipped ({out[name]['skipped']})")
                continue
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            single = _timed(prov, device, 1)
            peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
            built[name] = (prov, max(1, math.ceil(0.05 / max(single, 1e-6))))
            out[name] = {"peak_memory_bytes": peak, "resident_bytes_before": base if peak is not None else None,
                         "precision": providers.PRECISION[name], "steps_per_call": prov.steps_per_call,
                         "optimizer": getattr(prov, "optimizer", "engine.reference.adam_update (AdamW)")}
            if name == "jax":
                out[name]["peak_memory_bytes"] = None  # JAX's allocator is not torch's; not comparable
        except Exception as e:  # a peer that cannot run this workload here is recorded, not fatal
            out[name] = {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            log(f"  {name}: skipped ({out[name]['skipped']})")
    times = {name: [] for name in built}
    order = list(built)
    for r in range(rounds):
        for name in order[r % len(order):] + order[:r % len(order)] if order else []:
            prov, calls = built[name]
            times[name].append(_timed(prov, device, calls) / (calls * prov.steps_per_call))
    peak_tf = peak_tflops if peak_tflops is not None else fp32_peak(
        torch.cuda.get_device_name() if device.startswith("cuda") else None)
    for name, ts in times.items():
        med = sorted(ts)[len(ts) // 2]
        tflops = wl.useful_flop_per_step / med / 1e12
        out[name].update({"ms_per_step": med * 1e3, "rounds_ms": [t * 1e3 for t in ts],
                          "instance_steps_per_s": wl.K / med, "useful_tflops": tflops,
                          "fp32_peak_share": tflops / peak_tf if peak_tf else None})
        log(f"  {name:12s} {med * 1e3:9.3f} ms/step  {wl.K / med:12.4g} inst-steps/s  {tflops:7.3f} TFLOP/s")
    ratios = {}
    for ours in providers.OURS:
        for peer in ("eager", "compile", "jax"):
            if ours in times and peer in times:
                ratios[f"{ours}/{peer}"] = out[peer]["ms_per_step"] / out[ours]["ms_per_step"]
    return {"workload": asdict(wl), "useful_flop_per_step": wl.useful_flop_per_step, "providers": out,
            "speedups": ratios}


def scaling(base, names, device, rounds, triton_steps, smoke, log) -> dict:
    """Throughput against K on the basic workload."""
    ks = (2, 5) if smoke else SCALING_K
    rows = {}
    for K in ks:
        wl = replace(base, K=K)
        # eager holds ~8 float32 (K, B, n) tensors; skip it where that exceeds a quarter of the GPU.
        use = [n for n in names if not (n in ("eager", "compile", "jax") and device.startswith("cuda")
                                        and 32 * K * wl.batch * (wl.n + wl.m) > torch.cuda.get_device_properties(0).total_memory / 4)]
        log(f"scaling K={K}")
        rows[str(K)] = measure(wl, use, device, rounds, triton_steps, log)["providers"]
    return {"workload": asdict(base), "K": list(ks), "providers": rows}


def end_to_end(smoke: bool, log, preset: str = "paper") -> dict:
    """Wall time of `supbench run phase-diagram --preset <preset>` (tiny options in smoke mode)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = ["--preset", preset, "--no-progress"]
        if smoke:
            args += ["--grid", "3", "--seeds", "2", "--steps", "20", "--batch-size", "16"]
        cmd = [sys.executable, "-m", "engine.cli", "run", "phase-diagram", *args, "--out", str(Path(tmp) / "run")]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    log(f"end-to-end phase diagram: {wall:.1f} s, agreement {summary['agreement']:.3f}")
    return {"command": "supbench run phase-diagram " + " ".join(args),  # without its temporary --out
            "wall_seconds": wall, "train_seconds": summary["train_seconds"], "agreement": summary["agreement"],
            "protocol": summary["protocol"], "agreement_by_protocol": summary["agreement_by_protocol"],
            "backend": summary["backend"], "n_instances": summary["n_instances"],
            "instance_steps_per_second": summary["instance_steps_per_second"]}


def main(argv=None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (CI); never reported")
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None,
                    help="cuda (default where there is one): the GPU suite; cpu: the CPU backends on CPU workloads")
    ap.add_argument("--workloads", default=None, help="comma-separated, from: " + ", ".join(WORKLOADS))
    ap.add_argument("--providers", default=None, help="comma-separated, from: " + ", ".join(providers.PROVIDERS))
    ap.add_argument("--cpu-peak-gflops", type=float, default=None, help="override the CPU FP32 peak estimate")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--triton-steps", type=int, default=None, help="fused steps per kernel launch timed")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU here")
    if device == "cpu" and not args.smoke and args.device != "cpu":
        ap.error("no CUDA GPU here: for the CPU backends' suite use --device cpu; --smoke exercises the code")
    table = CPU_WORKLOADS if device == "cpu" else WORKLOADS
    names = [n for n in (args.providers or ",".join(
        providers.CPU_PROVIDERS if device == "cpu" and not args.smoke else providers.GPU_PROVIDERS)).split(",") if n]
    workloads = [w for w in (args.workloads or ",".join(table)).split(",") if w]
    for bad in [n for n in names if n not in providers.PROVIDERS] + [w for w in workloads if w not in table]:
        kind = "--providers" if bad in names else "--workloads"
        allowed = providers.PROVIDERS if kind == "--providers" else tuple(table)
        ap.error(f"{kind}: {bad!r} is not one of {', '.join(allowed)}")
    rounds = args.rounds or (2 if args.smoke else 7)
    triton_steps = args.triton_steps or (1 if args.smoke else 100)
    cpu_steps = 1 if args.smoke else 5

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    record = {"provenance": provenance(device, args.smoke, argv), "workloads": {}}
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    gpu = record["provenance"].get("gpu") or "cpu-" + str(record["provenance"].get("cpu", "cpu"))
    gpu = "".join(c if c.isalnum() or c in "-." else "_" for c in gpu)
    out = args.out or (Path(tempfile.gettempdir()) / f"supbench-smoke-{stamp}.json" if args.smoke
                       else RESULTS / f"{stamp}-{gpu}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(complete: bool):
        # Rewritten after every section: a run cut short by a time limit keeps what it measured
        # (marked incomplete, which bench.report says beside its tables).
        record["provenance"]["complete"] = complete
        out.write_text(json.dumps(record, indent=2) + "\n")
    peak = None
    if device == "cpu":
        gflops = args.cpu_peak_gflops or record["provenance"].get("fp32_peak_gflops")
        peak = gflops / 1e3 if gflops else None
        if args.cpu_peak_gflops:
            record["provenance"].update(fp32_peak_gflops=args.cpu_peak_gflops, fp32_peak_note="--cpu-peak-gflops")
    for w in workloads:
        wl = table[w].smoke() if args.smoke else table[w]
        log(f"workload {w}: n={wl.n} m={wl.m} B={wl.batch} K={wl.K}")
        record["workloads"][w] = measure(wl, names, device, rounds, triton_steps, log, peak, cpu_steps)
        save(False)
    if device == "cpu" and not args.smoke:
        args.no_scaling = True  # the K-scaling sweep is a GPU question
    if not args.no_scaling:
        base = WORKLOADS["basic"].smoke() if args.smoke else WORKLOADS["basic"]
        record["scaling"] = scaling(base, [n for n in names if n in ("triton-fp32", "triton-tf32", "eager", "jax")],
                                    device, max(2, rounds // 2), triton_steps, args.smoke, log)
        save(False)
    if not args.no_e2e:
        # On a CPU the default command (quick preset) is the one users run; on a GPU the paper preset.
        record["end_to_end"] = end_to_end(args.smoke, log, "quick" if device == "cpu" and not args.smoke else "paper")
    save(True)
    log(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
