"""Static cost of the training kernels' hot loop, read from their SASS, without a GPU:
``python -m bench.sass`` (default layouts) or ``python -m bench.sass --shapes "20,5" --path lanes``.

What it does: compiles a layout for sm_90 (bench/aot.py), disassembles it with triton's bundled
cuobjdump, finds the innermost loops (a backward branch to a label), counts each loop's
instructions by class and prices them with the per-SM throughputs of compute capability 9.0
(CUDA C++ Programming Guide, "Arithmetic Instructions"): the SM-cycles one iteration needs to
*issue*, over all of the program's warps. Divided by the work per iteration (rows x instances)
it gives SM-cycles per instance-row, and against the useful work (5 n m FMA per instance-row,
128 FMA per SM-cycle) the FMA efficiency ceiling. ``step_overhead``: what the once-per-step code
around the loop (cross-lane gradient reduction, Adam) adds, as a fraction of the loop's cost.

What it is not: a timing. It ignores latency, occupancy, memory and the code outside the
hottest loop, so a real kernel is slower than this bound. It ranks layouts and shows where the
instructions go (shuffles, integer RNG work, padding); GPU timings (bench/tune.py) decide.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from dataclasses import asdict

from bench import aot  # noqa: F401  (clears TRITON_INTERPRET before triton is imported)
from bench.aot import compile_layout
from kernels.layout import tile_config

# Warp-instructions one SM completes per cycle, by opcode (cc 9.0; 4 schedulers issue at most 4).
# Opcodes not listed cost as "other" (integer / logic pipe, 64 lanes per cycle = 2 warps).
_PER_SM_CYCLE = {
    "FFMA": 4, "FADD": 4, "FMUL": 4, "FSEL": 4, "HFMA2": 4,
    "FMNMX": 2, "FSETP": 2, "IMAD": 2, "IADD3": 2, "LOP3": 2, "SHF": 2, "ISETP": 2, "LEA": 2, "SEL": 2,
    "MOV": 4, "VIADD": 2, "PRMT": 2, "IMNMX": 2,
    "SHFL": 1, "LDS": 1, "STS": 1, "LDSM": 1, "STSM": 1, "LDG": 1, "STG": 1, "LDL": 1, "STL": 1,
    "MUFU": 0.5, "I2F": 0.5, "F2I": 0.5, "I2FP": 0.5, "F2F": 0.5,
    "HMMA": 1, "BAR": 0.5,
}
_OTHER = 2.0
FMA_PER_SM_CYCLE = 128
H100_SMS, H100_BOOST_HZ = 132, 1.98e9  # H100 SXM5; the ceiling below scales with the real clock

_INSTR = re.compile(r"^\S*\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(?:\.[\w.]+)?\b")
_LABEL = re.compile(r"^\s*(\.?L\w+):")
_BRANCH = re.compile(r"\bBRA\b.*?(\.?L\w+);")


def parse(sass: str) -> tuple[list[str], list[tuple[int, int]], list[tuple[int, int]]]:
    """(opcodes in order, all loops as (start, end) instruction indices, the innermost of them)."""
    ops, labels, branches = [], {}, []
    for line in sass.splitlines():
        lab = _LABEL.match(line)
        if lab:
            labels[lab.group(1)] = len(ops)
            continue
        ins = _INSTR.match(line)
        if not ins or ins.group(1) in ("Function",):
            continue
        br = _BRANCH.search(line)
        if ins.group(1) == "BRA" and br:
            branches.append((len(ops), br.group(1)))
        ops.append(ins.group(1))
    loops = [(labels[t], i) for i, t in branches if t in labels and labels[t] <= i]
    innermost = [(s, e) for s, e in loops if not any(s <= s2 and e2 <= e and (s2, e2) != (s, e) for s2, e2 in loops)]
    return ops, loops, innermost


def loop_cost(ops: list[str]) -> dict:
    """Instruction counts and SM-cycles (per warp) needed to issue one pass over ``ops``."""
    count = Counter(ops)
    cycles = sum(max(0.25, 1.0 / _PER_SM_CYCLE.get(op, _OTHER)) * c for op, c in count.items())
    return {"instructions": len(ops), "cycles_per_warp": cycles, "opcodes": dict(count.most_common())}


def analyse(n: int, m: int, precision: str = "fp32", batch: int = 1024, **override) -> dict:
    """The hottest innermost loop of (n, m)'s layout and the throughput bound it implies."""
    cfg = tile_config(n, m, batch, precision, **override)
    kernel = compile_layout(cfg, precision)
    ops, all_loops, loops = parse(kernel.asm["sass"])
    # The hot loop is the innermost loop with the most floating-point work.
    fp = ("FFMA", "FADD", "FMUL", "HMMA")
    if not loops:
        raise ValueError(f"no loop found in the SASS of {cfg}")
    start, end = max(loops, key=lambda se: sum(ops[i] in fp for i in range(se[0], se[1] + 1)))
    cost = loop_cost(ops[start:end + 1])
    # The step loop around it (register paths): the once-per-step code (gradient reduction across
    # lanes, Adam update) beside batch / BB passes of the hot loop.
    outer = [(s, e) for s, e in all_loops if s <= start and end <= e and (s, e) != (start, end)]
    per_step = None
    if outer and cfg.path != "blocked":
        s0, e0 = min(outer, key=lambda se: se[1] - se[0])
        once = loop_cost(ops[s0:start] + ops[end + 1:e0 + 1])["cycles_per_warp"]
        iters = -(-batch // cfg.BB)
        per_step = (once + iters * cost["cycles_per_warp"]) * cfg.num_warps / cfg.P  # SM-cycles per instance-step
    # Work per iteration: fused/lanes loop over rows (BB rows x P instances); blocked loops over
    # feature blocks (BB rows x NB of n features, 1 instance).
    rows = cfg.BB * cfg.P * (cfg.NB / n if cfg.path == "blocked" else 1)
    sm_cycles_per_row = cost["cycles_per_warp"] * cfg.num_warps / rows
    useful = 5 * n * m / FMA_PER_SM_CYCLE
    if cfg.path == "blocked":
        useful /= 3  # that loop is one of three passes; price it as a third of the work (rough)
    return {"n": n, "m": m, "precision": precision, **asdict(cfg), "loop_instructions": cost["instructions"],
            "sm_cycles_per_instance_row": round(sm_cycles_per_row, 2),
            "fma_efficiency_bound": round(useful / sm_cycles_per_row, 4),
            "issue_bound_inst_steps_per_s_h100": round(H100_SMS * H100_BOOST_HZ / (sm_cycles_per_row * batch)),
            "step_overhead": None if per_step is None else round(per_step / (sm_cycles_per_row * batch) - 1, 3),
            "hot_loop_opcodes": cost["opcodes"]}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.sass")
    ap.add_argument("--shapes", default="2,1;3,2;5,2;20,5;33,7;400,30", help="n,m;n,m;...")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "tf32"))
    ap.add_argument("--set", default="", help="layout overrides, e.g. path=lanes,BB=256,num_warps=2")
    args = ap.parse_args(argv)
    over = {}
    for kv in filter(None, args.set.split(",")):
        key, val = kv.split("=")
        over[key] = val if key in ("path", "fp32_dot") else int(val)
    for shape in args.shapes.split(";"):
        n, m = map(int, shape.split(","))
        print(json.dumps(analyse(n, m, args.precision, **over)), flush=True)


if __name__ == "__main__":
    main()
