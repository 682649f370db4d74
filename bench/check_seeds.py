"""Do an experiment's checks hold on other seeds? Run its preset under several ``--seed`` values and tabulate.
``python -m bench.check_seeds [--experiments intro basic ...] [--seeds 0 1 2] [--out runs/check-seeds]``

A check calibrated on one run can pass by luck: a preset whose fits find the best solution only
some of the time, or that stops training before a property settles, passes on seed 0 and fails on
seed 2. This runs ``supbench run <experiment> --seed S --out OUT/<label>-s<S> --no-progress`` for
every experiment and seed, one after another (each in its own process, as a user runs it), then
prints one row per check with what each seed measured (FAIL marks a miss) and writes the table to
OUT/checks.json. An experiment may carry options: ``--experiments "phase-diagram --features 3"``.
A finished run directory is re-analysed, not retrained, so an interrupted sweep resumes and a second
call after a code change re-checks the same trained models. Exit code 1 when any check failed.
Default: every experiment's default preset, seeds 0, 1, 2, plus the 3->2 phase diagram.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from engine.experiments import EXPERIMENTS

DEFAULT_EXTRA = ("phase-diagram --features 3",)


def run_one(entry: str, seed: int, out: Path, backend: str | None) -> dict:
    """Train (or re-analyse) one experiment at one seed; its summary.json as a dict, or an error record."""
    words = shlex.split(entry)
    if words[0] not in EXPERIMENTS:
        raise SystemExit(f"--experiments: one of {', '.join(EXPERIMENTS)} (with options), not {words[0]!r}")
    run_dir = out / f"{dir_name(entry)}-s{seed}"
    cmd = [sys.executable, "-m", "engine.cli", "run", *words, "--seed", str(seed), "--out", str(run_dir),
           "--no-progress"] + (["--backend", backend] if backend else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    summary = run_dir / "summary.json"
    if not summary.exists():
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"], "wall": wall}
    return {**json.loads(summary.read_text()), "process_wall": wall}


def dir_name(entry: str) -> str:
    """Run directory stem of an entry: the words joined by '_', dashes of options dropped."""
    return "_".join(w.lstrip("-") for w in shlex.split(entry))


def compact(value, width: int = 48) -> str:
    """A measured value on one short line."""
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= width else text[:width - 3] + "..."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.check_seeds", description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", nargs="+", default=[*EXPERIMENTS, *DEFAULT_EXTRA],
                    help="experiment names, each optionally with its options in one quoted word")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/check-seeds"))
    ap.add_argument("--backend", default=None, help="passed to every run (default: the runs' own auto)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    table, failed, total = {}, 0, 0
    for entry in args.experiments:
        for seed in args.seeds:
            rec = run_one(entry, seed, args.out, args.backend)
            if "error" in rec:
                print(f"{entry} seed {seed}: no summary ({' '.join(rec['error'])})", flush=True)
                table.setdefault(entry, {}).setdefault("(run)", {})[seed] = {"passed": False, "measured": rec["error"]}
                failed += 1
                total += 1
                continue
            ran = [c for c in rec["checks"] if c.get("passed") is not None]
            bad = [c["name"] for c in ran if not c["passed"]]
            print(f"{entry} seed {seed}: {len(ran) - len(bad)}/{len(ran)} checks passed"
                  f"{' (FAIL ' + ', '.join(bad) + ')' if bad else ''}, {rec['process_wall']:.0f} s", flush=True)
            for c in rec["checks"]:
                table.setdefault(entry, {}).setdefault(c["name"], {})[seed] = {
                    "passed": c.get("passed"), "measured": c.get("measured"), "expected": c.get("expected")}
            failed += len(bad)
            total += len(ran)
    print()
    for entry, checks in table.items():
        for name, by_seed in checks.items():
            want = next((v.get("expected") for v in by_seed.values() if v.get("expected")), "")
            print(f"{entry} / {name}  (want {want})")
            for seed, v in sorted(by_seed.items()):
                mark = "not run" if v["passed"] is None else ("" if v["passed"] else "FAIL ")
                print(f"    seed {seed}: {mark}{compact(v['measured'])}")
    print(f"\n{total - failed} of {total} checks passed over seeds {args.seeds}")
    (args.out / "checks.json").write_text(json.dumps(
        {"seeds": args.seeds, "experiments": args.experiments, "backend": args.backend,
         "passed": total - failed, "total": total, "checks": table}, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
