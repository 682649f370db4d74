"""Do an experiment's checks hold on other seeds? Run its preset under several ``--seed`` values and tabulate.
``python -m bench.check_seeds [--experiments intro basic ...] [--seeds 0 1 2] [--preset quick] [--out runs/check-seeds]``

A check calibrated on one run can pass by luck: a preset whose fits find the best solution only
some of the time, or that stops training before a property settles, passes on seed 0 and fails on
seed 2. This runs ``supbench run <experiment> --preset P --seed S --out OUT/<label>-<P>-<backend>-s<S>
--no-progress`` for every experiment and seed, one after another (each in its own process, as a user
runs it), then prints one row per check with what each seed measured (FAIL marks a miss) and writes
the table to OUT/checks.json, with each run's own backend and resolved preset. An experiment may carry
options: ``--experiments "phase-diagram --features 3"`` (not --seed, --out, --preset or --backend:
the tool sets those). Exit code 1 when any check failed or any run did not finish.

Resuming: a finished run directory is re-analysed, not retrained, so an interrupted sweep resumes and
a second call re-checks the same trained models under the current analysis code. Where the preset or
code changed what would be trained, the CLI refuses the old directory and that run is reported as
failed with the CLI's one-line reason (never the old directory's results): remove it, or use another --out.
Default: every experiment's quick preset at seeds 0, 1, 2, plus the 3->2 phase diagram.
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
# Options the tool sets for every run; in an entry they would be silently overridden (the last value wins).
RESERVED = ("--seed", "--out", "--preset", "--backend")


def dir_name(entry: str) -> str:
    """Run directory stem of an entry: its words joined by '_', dashes of options dropped
    ('phase-diagram --features 3' -> 'phase-diagram_features_3')."""
    return "_".join(w.lstrip("-") for w in shlex.split(entry))


def entry_words(entry: str) -> list[str]:
    """The entry's words, after checking its experiment name and that it sets none of RESERVED."""
    words = shlex.split(entry)
    if not words or words[0] not in EXPERIMENTS:
        raise SystemExit(f"--experiments: one of {', '.join(EXPERIMENTS)} (with options), not {entry!r}")
    for w in words[1:]:
        if w.split("=", 1)[0] in RESERVED:
            raise SystemExit(f"--experiments: {entry!r} sets {w.split('=', 1)[0]}, which check_seeds sets itself "
                             f"(use the tool's own --seeds / --out / --preset / --backend)")
    return words


def run_one(entry: str, seed: int, out: Path, preset: str, backend: str | None) -> dict:
    """Train (or re-analyse) one experiment at one seed. Its summary.json as a dict, plus ``process_wall``;
    or {"error": one line, "process_wall": s} where the run did not finish with checks (a refusal, a
    crash, every instance diverged): a summary.json left in the directory by an earlier run is not used."""
    words = entry_words(entry)
    run_dir = out / f"{dir_name(entry)}-{preset}-{backend or 'auto'}-s{seed}"
    cmd = [sys.executable, "-m", "engine.cli", "run", *words, "--preset", preset, "--seed", str(seed),
           "--out", str(run_dir), "--no-progress"] + (["--backend", backend] if backend else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": f"exit code {proc.returncode}: {lines[-1] if lines else 'no output'}", "process_wall": wall}
    summary = json.loads((run_dir / "summary.json").read_text())
    if "checks" not in summary:
        return {"error": summary.get("error", "summary.json has no checks"), "process_wall": wall}
    return {**summary, "process_wall": wall}


def compact(value, width: int = 48) -> str:
    """A measured value on one short line."""
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= width else text[:width - 3] + "..."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.check_seeds", description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", nargs="+", default=[*EXPERIMENTS, *DEFAULT_EXTRA],
                    help="experiment names, each optionally with its options in one quoted word")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--preset", default="quick", help="passed to every run (default quick: on a fused backend "
                                                       "it resolves to quick-fused where an experiment has one)")
    ap.add_argument("--out", type=Path, default=Path("runs/check-seeds"))
    ap.add_argument("--backend", default=None, help="passed to every run (default: the runs' own auto)")
    args = ap.parse_args(argv)
    for entry in args.experiments:
        entry_words(entry)  # refuse a bad entry before training anything
    args.out.mkdir(parents=True, exist_ok=True)
    table, runs = {}, []
    failed = total = not_run = 0
    for entry in args.experiments:
        for seed in args.seeds:
            rec = run_one(entry, seed, args.out, args.preset, args.backend)
            if "error" in rec:
                print(f"{entry} seed {seed}: FAIL, the run did not finish ({rec['error']})", flush=True)
                table.setdefault(entry, {}).setdefault("(run)", {})[seed] = {"passed": False, "measured": rec["error"]}
                runs.append({"experiment": entry, "seed": seed, "error": rec["error"]})
                failed += 1
                total += 1
                continue
            ran = [c for c in rec["checks"] if c.get("passed") is not None]
            bad = [c["name"] for c in ran if not c["passed"]]
            skipped = len(rec["checks"]) - len(ran)
            print(f"{entry} seed {seed}: {len(ran) - len(bad)}/{len(ran)} checks passed"
                  f"{f' ({skipped} not run)' if skipped else ''}{' (FAIL ' + ', '.join(bad) + ')' if bad else ''}"
                  f", {rec['process_wall']:.0f} s ({rec.get('backend')}, preset {rec.get('preset')})", flush=True)
            for c in rec["checks"]:
                table.setdefault(entry, {}).setdefault(c["name"], {})[seed] = {
                    "passed": c.get("passed"), "measured": c.get("measured"), "expected": c.get("expected")}
            runs.append({"experiment": entry, "seed": seed, "backend": rec.get("backend"), "preset": rec.get("preset"),
                         "chunks_trained": rec.get("chunks_trained"), "wall_seconds": rec.get("wall_seconds")})
            failed += len(bad)
            total += len(ran)
            not_run += skipped
    print()
    for entry, checks in table.items():
        for name, by_seed in checks.items():
            want = next((v.get("expected") for v in by_seed.values() if v.get("expected")), "")
            print(f"{entry} / {name}  (want {want})")
            for seed, v in sorted(by_seed.items()):
                mark = "not run " if v["passed"] is None else ("" if v["passed"] else "FAIL ")
                print(f"    seed {seed}: {mark}{compact(v['measured'])}")
    print(f"\n{total - failed} of {total} checks passed over seeds {args.seeds}"
          f"{f' ({not_run} not run)' if not_run else ''}")
    (args.out / "checks.json").write_text(json.dumps(
        {"seeds": args.seeds, "experiments": args.experiments, "preset": args.preset, "backend": args.backend,
         "passed": total - failed, "total": total, "not_run": not_run, "runs": runs, "checks": table},
        indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
