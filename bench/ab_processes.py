"""A/B of the CPU kernels against a git revision in alternating processes:
``python -m bench.ab_processes [--rev HEAD] [--pairs 3] [--rounds 6] [--workloads ...]``.

bench.ab_cpu times both kernels in one process, which is the fairer comparison, but cannot compare
what is fixed per process: the CPU features numba compiles for (kernels/__init__.py asks for 512-bit
code on Intel's AVX-512 CPUs), its config, anything read from the environment at import. Here the
revision's whole tree (``git archive``) and the working tree each run in a process of their own,
``--pairs`` times, alternating, each warming up and then timing ``--rounds`` calls per workload
(medians of ms per step). Prints one line per workload and pair with the ratio (revision time /
working-tree time: > 1 means the working tree is faster) and whether both ended bit-identical (a
hash of every state array, which also checks that results do not depend on the vector width).
The revision's numba cache is its own (a directory named by its sources), so its first process compiles.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def worker(names: list[str], rounds: int) -> dict:
    """In this process (the tree on sys.path first): {workload: [median ms per step, state hash]}."""
    from engine import cpu_backend
    from kernels import cpu_train

    from .ab_cpu import WORKLOADS, Timed

    cpu_backend.set_threads(cpu_backend.max_threads())
    out = {}
    for name in names:
        t = Timed(cpu_train, WORKLOADS[name])
        t.run(0)  # compile or load, warm up
        times = [t.run(t.steps * (r + 1)) for r in range(rounds)]
        digest = hashlib.sha256(b"".join(t.state[k].tobytes() for k in sorted(t.state))).hexdigest()[:16]
        out[name] = [float(np.median(times)), digest]
    out["kernels_from"] = cpu_train.__file__
    return out


def extract_tree(rev: str, into: Path) -> Path:
    """The revision's engine/, kernels/ and bench/ (what a worker imports) under ``into``."""
    out = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "engine", "kernels", "bench"], capture_output=True)
    if out.returncode:
        raise SystemExit(f"--rev: git archive {rev} failed: {out.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as t:
        t.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return into


def run_worker(tree: Path, names: list[str], rounds: int) -> dict:
    """One worker process importing from ``tree``; its JSON result."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "SUPBENCH_"))}
    env["PYTHONPATH"] = str(tree)
    code = f"import json, bench.ab_processes as a; print(json.dumps(a.worker({names!r}, {rounds})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"worker in {tree} failed:\n{out.stderr.strip()[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not Path(result.pop("kernels_from")).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"worker in {tree} imported another tree's kernels")
    return result


def main(argv=None) -> None:
    from .ab_cpu import WORKLOADS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD", help="git revision to compare the working tree with")
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--pairs", type=int, default=3, help="alternations (revision process, then working tree's)")
    ap.add_argument("--rounds", type=int, default=6, help="timed calls per workload in each process")
    args = ap.parse_args(argv)
    from engine.machine import cpu_model

    with tempfile.TemporaryDirectory() as tmp:
        rev_tree = extract_tree(args.rev, Path(tmp))
        if not (rev_tree / "bench" / "ab_processes.py").exists():  # an older revision: this worker, its kernels
            (rev_tree / "bench" / "ab_processes.py").write_text(Path(__file__).read_text())
        print(f"CPU {cpu_model()}; {args.rev} against the working tree, {args.pairs} alternating pairs of "
              f"processes, {args.rounds} rounds each", flush=True)
        run_worker(rev_tree, args.workloads[:1], 1)  # compile the revision's kernels before timing anything
        for pair in range(args.pairs):
            rev, tree = run_worker(rev_tree, args.workloads, args.rounds), run_worker(ROOT, args.workloads, args.rounds)
            for name in args.workloads:
                (t_rev, h_rev), (t_tree, h_tree) = rev[name], tree[name]
                print(f"pair {pair + 1} {name}: {args.rev} {t_rev:.2f} ms/step, working tree {t_tree:.2f} ms/step, "
                      f"ratio {t_rev / t_tree:.3f}x (bit-identical: {h_rev == h_tree})", flush=True)


if __name__ == "__main__":
    main()
