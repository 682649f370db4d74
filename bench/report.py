"""Generate BENCHMARKS.md (and the scaling plot) from bench/results/*.json: ``python -m bench.report``.

Never edit BENCHMARKS.md by hand. Smoke records (CI) are ignored: they are not results. Records
of ``python -m bench.suite --device cpu`` get their own section, labelled CPU with the CPU model.
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
GOALS = {  # issue #3's throughput goals, for the reader's reference
    "phase": ">= 10x JAX, >= 50x eager PyTorch",
    "basic": "tf32 >= 10x JAX; fp32 >= 10x eager PyTorch; >= 20 TFLOP/s useful",
    "uniform": ">= 5x JAX",
}
CPU_GOALS = {  # issue #8's
    "phase": "cpu >= 15x the torch backend (eager) and >= 5x JAX; beyond: 100x eager",
    "basic": "cpu >= 15x the torch backend (eager) and >= 5x JAX; beyond: 30x eager",
    "uniform": "cpu >= 15x the torch backend (eager) and >= 5x JAX; beyond: 20x eager, >= 60% of FP32 peak",
}


def _short_commit(commit: str | None) -> str:
    """12 hex digits of a recorded commit, keeping its "+dirty" mark (engine.machine.git_commit)."""
    if not commit:
        return "?"
    return commit.split("+")[0][:12] + ("+dirty" if commit.endswith("+dirty") else "")


def load(results_dir: Path, allow_smoke: bool = False) -> list[tuple[Path, dict]]:
    recs = []
    for path in sorted(results_dir.glob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("provenance", {}).get("smoke") and not allow_smoke:
            continue
        recs.append((path, rec))
    return recs


def _pct(share):
    return "-" if share is None else f"{100 * share:.1f}%"


def workload_table(name: str, w: dict, cpu: bool = False) -> list[str]:
    wl = w["workload"]
    lines = [f"### {name}: n={wl['n']}, m={wl['m']}, B={wl['batch']}, K={wl['K']:,}" + (" (CPU)" if cpu else ""), ""]
    goals = CPU_GOALS if cpu else GOALS
    if name in goals:
        lines += [f"Goal: {goals[name]}.", ""]
    if cpu:
        lines += ["| provider | precision | ms / step | instance-steps / s | useful GFLOP/s | share of FP32 peak |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
    else:
        lines += ["| provider | matmul precision | ms / step | instance-steps / s | useful TFLOP/s | share of FP32 peak | peak GPU memory |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for prov, r in w["providers"].items():
        label = "eager (torch backend)" if prov == "eager" and cpu else prov
        if "skipped" in r:
            lines.append(f"| {label} | - | skipped: {r['skipped']} | | | |" + ("" if cpu else " |"))
            continue
        mem = r.get("peak_memory_bytes")
        if cpu:
            precision = "fp32 (JAX's default on a CPU)" if prov == "jax" else r["precision"]
            lines.append(f"| {label} | {precision} | {r['ms_per_step']:.2f} | {r['instance_steps_per_s']:.3g} | "
                         f"{r['useful_tflops'] * 1e3:.2f} | {_pct(r.get('fp32_peak_share'))} |")
            continue
        lines.append(f"| {prov} | {r['precision']} | {r['ms_per_step']:.3f} | {r['instance_steps_per_s']:.3g} | "
                     f"{r['useful_tflops']:.2f} | {_pct(r.get('fp32_peak_share'))} | "
                     f"{'-' if mem is None else f'{mem / 2**20:.0f} MiB'} |")
    if w.get("speedups"):
        lines += ["", "Speed-ups (peer time / supbench time): " +
                  ", ".join(f"{k} **{v:.2f}x**" for k, v in w["speedups"].items())]
    return lines + [""]


def scaling_plot(rec: dict, path: Path) -> None:
    sc = rec["scaling"]
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    provs = sorted({p for row in sc["providers"].values() for p, r in row.items() if "instance_steps_per_s" in r})
    for p in provs:
        ks = [int(k) for k, row in sc["providers"].items() if "instance_steps_per_s" in row.get(p, {})]
        ys = [sc["providers"][str(k)][p]["instance_steps_per_s"] for k in ks]
        ax.plot(ks, ys, marker="o", label=p)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("instances K (basic workload: n=20, m=5, B=1024)")
    ax.set_ylabel("instance-steps per second")
    ax.set_title(f"Throughput against K on {rec['provenance'].get('gpu', 'CPU')}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _without_out(command: str) -> str:
    """A recorded command without its ``--out PATH`` (the recording machine's path): the default
    output path is where a reproduction belongs."""
    words, kept = shlex.split(command), []
    while words:
        word = words.pop(0)
        if word == "--out":
            if words and not words[0].startswith("--"):
                words.pop(0)
            continue
        if not word.startswith("--out="):
            kept.append(word)
    return shlex.join(kept)


def _is_cpu(rec: dict) -> bool:
    return rec["provenance"].get("device") == "cpu"


def render(records: list[tuple[Path, dict]], out_dir: Path) -> str:
    lines = ["# supbench benchmarks", "",
             "Generated by `python -m bench.report` from the JSON records in `bench/results/`; do not edit by hand.",
             "Each record is one run of `python -m bench.suite` on one machine: every provider of a workload measured",
             "in the same process, interleaved, after warm-up, synchronised, median of several rounds.",
             "Useful FLOP = 10 B n m per instance-step. Smoke runs (CI) are never reported.", ""]
    gpu_records = [(p, r) for p, r in records if not _is_cpu(r)]
    cpu_records = [(p, r) for p, r in records if _is_cpu(r)]
    if not gpu_records:
        lines += ["**No GPU results recorded yet.** The GPU suite has not run on a GPU.",
                  "To record results on a CUDA machine (H100/H200):", "",
                  "```bash", "pip install --no-deps -e . && python -m bench.suite && python -m bench.report", "```", ""]
    # Newest record per machine; a complete one wins over a newer one cut short (bench.suite saves
    # after every section, so an interrupted run leaves an incomplete record behind).
    latest = {}
    for path, rec in sorted(gpu_records + cpu_records, key=lambda pr: pr[1]["provenance"].get("complete", True)):
        prov = rec["provenance"]
        # CPUs sold under one name differ in vector width (this project's machines came with and without
        # AVX-512, which moves the cpu backend's dense-model times ~1.6x): one section per kind.
        isa = {True: ", AVX-512", False: ", no AVX-512"}.get(prov.get("avx512"), "")
        key = (prov.get("gpu", "?") if not _is_cpu(rec)
               else f"CPU: {prov.get('cpu', '?')} ({prov.get('cores', '?')} cores{isa})")
        latest[key] = (path, rec)
    for gpu, (path, rec) in sorted(latest.items(), key=lambda kv: (kv[0].startswith("CPU"), kv[0])):
        prov = rec["provenance"]
        cpu = _is_cpu(rec)
        versions = (f"torch {prov['torch']}, numba {prov.get('numba')}, JAX {prov.get('jax')}" if cpu else
                    f"driver {prov.get('driver')}, torch {prov['torch']}, triton {prov.get('triton')}, JAX {prov.get('jax')}")
        lines += [f"## {gpu}", "",
                  f"Recorded {prov['date']} from commit `{_short_commit(prov.get('git_commit'))}`; {versions}. "
                  f"File: `{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}`.", ""]
        if cpu:
            lines += [f"FP32 peak estimate: {prov.get('fp32_peak_gflops') or 0:.0f} GFLOP/s "
                      f"({prov.get('fp32_peak_note')}; see bench/suite.py). Every figure in this section is a CPU figure.", ""]
        if not prov.get("complete", True):
            lines += ["**Incomplete record**: the run was cut short; only the sections below were measured.", ""]
        for note in rec.get("notes", []):
            lines += [f"Note: {note}", ""]
        lines += ["Reproduce:", "", "```bash", _without_out(prov["command"]), "python -m bench.report", "```", ""]
        for name, w in rec["workloads"].items():
            lines += workload_table(name, w, cpu)
        if "scaling" in rec:
            png = out_dir / "bench" / "results" / (path.stem + "-scaling.png")
            png.parent.mkdir(parents=True, exist_ok=True)
            scaling_plot(rec, png)
            lines += ["### Scaling with the number of instances", "",
                      f"![throughput against K]({png.relative_to(out_dir)})", ""]
        if "end_to_end" in rec:
            e = rec["end_to_end"]
            if "error" in e:
                lines += [f"End to end: `{_without_out(e.get('command', 'supbench run phase-diagram'))}` failed: {e['error']}", ""]
            else:
                lines += ["### End to end", "",
                          f"`{_without_out(e['command'])}`: {e['wall_seconds']:.1f} s wall ({e['train_seconds']:.1f} s training) for "
                          f"{e['n_instances']:,} models on {e['backend']}, "
                          f"{e['instance_steps_per_second']:.3g} instance-steps/s, agreement with theory {e['agreement']:.3f}"
                          f"{_protocols(e)}.", ""]
    return "\n".join(lines)


# The protocol of end-to-end records from before they named it (2026-12-07), by the preset in their command
# and the backend: the quick preset on a fused backend classified by the best seed from the start
# (f919c46); the paper preset, and the torch backend's quick one, by drop-worst until 2026-12-07.
OLD_RECORD_PROTOCOLS = {("--preset quick", "cpu"): "best", ("--preset quick", "triton"): "best",
                        ("--preset quick", "torch"): "drop-worst", ("--preset paper", None): "drop-worst"}


def _protocols(e: dict) -> str:
    """' (best; drop-worst 0.920)': the protocol the end-to-end agreement was classified by and the agreement
    under the other; for older records, which named neither, the protocol their preset had then."""
    if "protocol" not in e:
        command = e.get("command") or ""
        old = [p for (flag, backend), p in OLD_RECORD_PROTOCOLS.items()
               if flag in command and backend in (None, e.get("backend"))]
        return f" ({old[0]})" if len(old) == 1 else ""
    others = "; ".join(f"{p} {a:.3f}" for p, a in e.get("agreement_by_protocol", {}).items()
                       if p != e["protocol"] and a is not None)
    return f" ({e['protocol']}{'; ' + others if others else ''})"


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--allow-smoke", action="store_true", help="include smoke records (tests only)")
    args = ap.parse_args(argv)
    text = render(load(args.results, args.allow_smoke), args.out.parent)
    args.out.write_text(text)
    return args.out


if __name__ == "__main__":
    main()
