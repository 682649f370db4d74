"""Static cost of the training kernels' hot loop, read from their SASS, without a GPU:
``python -m bench.sass`` (default layouts) or ``python -m bench.sass --shapes "20,5" --set path=lanes``.

What it does: compiles a layout for sm_90 (bench/aot.py), disassembles it with triton's bundled
cuobjdump, finds the innermost loops (a backward branch to a label), counts each loop's
instructions by class and prices them with the per-SM throughputs of compute capability 9.0
(CUDA C++ Programming Guide, "Arithmetic Instructions"): the SM-cycles one iteration needs to
*issue*, over all of the program's warps. Divided by the work per iteration (rows x instances)
it gives SM-cycles per instance-row (the code around the loop included, see ``analyse``), and
against the useful work (5 n m FMA per instance-row, 128 FMA per SM-cycle) the FMA efficiency
ceiling. ``step_overhead``: what the once-per-step code around the batch loop (cross-lane gradient
reduction, Adam) adds, as a fraction of the loop's cost.

What it is not: a timing. It ignores latency, occupancy, memory and the code outside the
hottest loop, so a real kernel is slower than this bound. It ranks layouts and shows where the
instructions go (shuffles, integer RNG work, padding); GPU timings (bench/tune.py) decide.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from bench.aot import compile_layout  # first: it clears TRITON_INTERPRET before triton is imported
import triton  # noqa: E402
from kernels.layout import tile_config  # noqa: E402

# Warp-instructions one SM completes per cycle, by opcode (cc 9.0; 4 schedulers issue at most 4).
# Opcodes not listed cost as "other" (integer / logic pipe, 64 lanes per cycle = 2 warps).
_PER_SM_CYCLE = {
    "FFMA": 4, "FADD": 4, "FMUL": 4, "FSEL": 4, "HFMA2": 4,
    "FMNMX": 2, "FSETP": 2, "IMAD": 2, "IADD3": 2, "LOP3": 2, "SHF": 2, "ISETP": 2, "LEA": 2, "SEL": 2,
    "MOV": 4, "VIADD": 2, "PRMT": 2, "IMNMX": 2,
    "SHFL": 1, "LDS": 1, "STS": 1, "LDSM": 1, "STSM": 1, "LDG": 1, "STG": 1, "LDL": 1, "STL": 1,
    "MUFU": 0.5, "I2F": 0.5, "F2I": 0.5, "I2FP": 0.5, "F2F": 0.5,
    "BAR": 0.5,
}
_OTHER = 2.0
FMA_PER_SM_CYCLE = 128
H100_SMS, H100_BOOST_HZ = 132, 1.98e9  # H100 SXM5; the ceiling below scales with the real clock

_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?(([A-Z][A-Z0-9_]*)[\w.]*)\b(.*?);")
# Tensor-core shapes: HMMA.1688 is m16n8k8; HGMMA.64x32x8 is m64n32k8 (warpgroup).
_MMA_SHAPE = re.compile(r"^H[G]?MMA\.(?:(\d+)x(\d+)x(\d+)|(\d{2})(\d)(\d))")
TF32_FMA_PER_SM_CYCLE = 947  # H100 SXM: 495 dense TF32 TFLOP/s / 2 / 132 SMs / 1.98 GHz
_TARGET = re.compile(r"\b0x([0-9a-f]+)\s*$")


def disassemble(cubin: bytes) -> str:
    """The cubin's SASS as printed by triton's bundled cuobjdump (addresses, no labels)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        return subprocess.run([str(tool), "-sass", str(path)], capture_output=True, text=True, check=True).stdout


def parse(sass: str) -> tuple[list[str], list[tuple[int, int]], list[tuple[int, int]]]:
    """(mnemonics in order, all loops as (start, end) instruction indices, the innermost of them).

    A loop is a branch back to an earlier address (cuobjdump -sass prints absolute targets)."""
    ops, addr_index, branches = [], {}, []
    for line in sass.splitlines():
        ins = _INSTR.match(line)
        if not ins:
            continue
        addr_index[int(ins.group(1), 16)] = len(ops)
        if ins.group(3) == "BRA":
            target = _TARGET.search(ins.group(4).strip())
            if target:
                branches.append((len(ops), int(target.group(1), 16)))
        ops.append(ins.group(2))
    loops = [(addr_index[t], i) for i, t in branches if t in addr_index and addr_index[t] <= i]
    innermost = [(s, e) for s, e in loops if not any(s <= s2 and e2 <= e and (s2, e2) != (s, e) for s2, e2 in loops)]
    return ops, loops, innermost


def _cycles(mnemonic: str) -> float:
    """SM-cycles one warp's instruction occupies its pipe (tensor-core ops: by their shape, as TF32)."""
    mma = _MMA_SHAPE.match(mnemonic)
    if mma:
        m, n, k = (int(g) for g in (mma.groups()[:3] if mma.group(1) else mma.groups()[3:]))
        fma = m * n * k / (4 if mnemonic.startswith("HGMMA") else 1)  # a warpgroup op, counted per warp
        return max(0.25, fma / TF32_FMA_PER_SM_CYCLE)
    return max(0.25, 1.0 / _PER_SM_CYCLE.get(mnemonic.split(".")[0], _OTHER))


def loop_cost(ops: list[str]) -> dict:
    """Instruction counts (by opcode) and SM-cycles (per warp) needed to issue one pass over ``ops``."""
    cycles = sum(_cycles(op) for op in ops)
    count = Counter(op.split(".")[0] for op in ops)
    return {"instructions": len(ops), "cycles_per_warp": cycles, "opcodes": dict(count.most_common())}


def analyse(n: int, m: int, precision: str = "fp32", batch: int = 1024, **override) -> dict:
    """The issue cost per instance-row of (n, m)'s layout, with its hottest loop's instruction mix.

    Register paths (lanes, gram, fused): the batch loop times batch / BB plus the once-per-step
    code around it (cross-lane reduction, Adam). Blocked: per row tile, the three feature-block
    passes times ceil(n / NB) plus the code between them (its per-step Adam is not counted).
    """
    cfg = tile_config(n, m, batch, precision, **override)
    kernel = compile_layout(cfg, precision, shape=(n, m))
    ops, all_loops, loops = parse(disassemble(kernel.asm["cubin"]))
    if not loops:
        raise ValueError(f"no loop found in the SASS of {cfg}")
    fp = ("FFMA", "FADD", "FMUL", "HMMA", "HGMMA")
    start, end = max(loops, key=lambda se: sum(ops[i].split(".")[0] in fp for i in range(se[0], se[1] + 1)))
    hot = loop_cost(ops[start:end + 1])

    def enclosing(inner):
        """Cost of the smallest loop holding all of ``inner``: its own code once, each inner loop x iters."""
        s0, e0 = min(((s, e) for s, e in all_loops if all(s <= a and b <= e and (s, e) != (a, b) for a, b in inner)),
                     key=lambda se: se[1] - se[0])
        own = [ops[i] for i in range(s0, e0 + 1) if not any(a <= i <= b for a, b in inner)]
        return loop_cost(own)["cycles_per_warp"], sum(loop_cost(ops[a:b + 1])["cycles_per_warp"] for a, b in inner)

    step_overhead = None
    if cfg.path == "blocked":
        tile_loop = min((se for se in all_loops if sum(se[0] <= a and b <= se[1] for a, b in loops) >= 3),
                        key=lambda se: se[1] - se[0])
        passes = [(a, b) for a, b in loops if tile_loop[0] <= a and b <= tile_loop[1]]
        own, inner = enclosing(passes)
        per_row = (own + -(-n // cfg.NB) * inner) * cfg.num_warps / cfg.BB
    else:
        own, inner = enclosing([(start, end)])
        per_step = own + -(-batch // cfg.BB) * inner
        per_row = per_step * cfg.num_warps / (cfg.P * batch)
        step_overhead = round(own / (per_step - own), 3)
    useful = 5 * n * m / FMA_PER_SM_CYCLE
    return {"n": n, "m": m, "precision": precision, **asdict(cfg), "loop_instructions": hot["instructions"],
            "sm_cycles_per_instance_row": round(per_row, 2),
            "fma_efficiency_bound": round(useful / per_row, 4),
            "issue_bound_inst_steps_per_s_h100": round(H100_SMS * H100_BOOST_HZ / (per_row * batch)),
            "step_overhead": step_overhead,
            "hot_loop_opcodes": hot["opcodes"]}


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
