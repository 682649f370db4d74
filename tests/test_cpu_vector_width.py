"""The CPU kernels with and without their 512-bit code paths give the same training, bit for bit.

Where kernels/__init__.py gets numba 512-bit code (WIDE_VECTORS: Intel AVX-512 hosts), the row-by-row
path takes the wide tiles with h and dh computed transposed (kernels/cpu_products.WIDE_TILES) and the
sampler draws 16 lanes at a time (kernels/cpu_train.PHILOX_16). Numba prunes the other branches from
that build, so the rest of the suite never runs them on such a host; every other host runs only them.
Here a child process compiles the kernels as a user's own NUMBA_CPU_FEATURES would (the host's
features as LLVM tunes them: no 512-bit request, so none of those paths) and trains the same models;
both must end in the same states and loss histories. Skipped where this process has no 512-bit code
(there the rest of the suite already runs the paths the child would). One cold compile of each
kernel path in the child, about three minutes, once per source change (numba caches it by CPU features,
in its own cache directory: see _plain_env).

When the whole suite runs, the plain child starts as soon as collection ends (tests/early_children.py), so its
compilation runs on the core the suite leaves idle; the 512-bit child runs in the test's turn, when the
suite has compiled (and cached) every path it takes.
"""
import json
import os
import sys

import early_children
import pytest

pytest.importorskip("numba")

from kernels import cpu_products, cpu_train  # noqa: E402

# (variant, n, m, lanes or None, batch, density, sets, finite examples): row-by-row models (wide tiles:
# 32-lane chunks and their tails, 8-row groups and their tails, dense and sparse blocks, the hidden
# ReLU, feature sets, finite data, a partial last block) and per-lane ones (the sampler's n = 1, 2, 3+
# paths; n=2, m=1 and n=3, m=2 in their tiny copies, n=10, m=5 and n=20, m=5 in their flat tiny
# copies, n=2, m=2 in the generic one), one untied model.
CASES = [
    ("relu-output", 400, 30, None, 300, 1.0, (), 0),
    ("relu-output", 400, 30, None, 300, 0.01, (), 0),
    ("relu-hidden", 400, 30, None, 200, 0.3, (), 0),
    ("relu-output", 64, 48, 100, 250, 0.5, (), 0),
    ("relu-output", 9, 260, None, 131, 1.0, (), 0),
    ("linear", 12, 620, 36, 77, 1.0, (), 0),
    ("relu-output", 400, 30, None, 300, 0.05, (("correlated", 0, 5), ("anticorrelated", 10, 7)), 0),
    ("relu-output", 400, 30, None, 150, 0.02, (), 150),
    ("relu-output", 1, 1, None, 300, 0.5, (), 0),
    ("relu-output", 2, 1, None, 333, 0.3, (), 0),
    ("relu-output", 2, 2, None, 333, 0.3, (), 0),
    ("relu-hidden", 3, 2, None, 200, 0.2, (), 0),
    ("relu-output", 20, 5, None, 200, 0.1, (), 0),
    ("relu-hidden", 10, 5, None, 300, 0.3, (), 0),
    ("abs-computation", 100, 40, None, 200, 0.1, (), 0),
]

CHILD = """
import hashlib, json, sys
import torch
from engine import ModelSpec, TrainSpec, cpu_backend, fused
from kernels import cpu_products, cpu_train

def train(case):
    variant, n, m, lanes, batch, density, sets, examples = case
    model = ModelSpec(n, m, variant)
    train = TrainSpec(steps=3, batch_size=batch, lr=3e-2, optimizer="adamw", weight_decay=0.05, seed=7)
    K = 2
    g = torch.Generator().manual_seed(n * 1000 + m)
    p = torch.full((K, n), density)
    imp = (torch.rand(K, n, generator=g) + 0.2).float()
    state = fused.new_state(model, train, 0, K)
    if "b" in state:
        state["b"][:] = -0.02  # some outputs off from the start: sparse output gradients
    hist = torch.zeros(3, K)
    cpu_backend.run_steps(model, train, state, p, imp, 0, 0, 3, torch.zeros(K), hist, 1, lanes=lanes,
                          sets=tuple(tuple(s) for s in sets), examples=examples)
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(state[k].numpy().tobytes())
    h.update(hist.numpy().tobytes())
    return h.hexdigest()

cases = json.loads(sys.argv[1])
print(json.dumps({"wide": [cpu_products.WIDE_VECTORS, cpu_products.WIDE_TILES, cpu_train.PHILOX_16],
                  "hashes": [train(c) for c in cases]}))
"""


def _has_wide_paths() -> bool:
    return bool(cpu_products.WIDE_VECTORS and cpu_products.WIDE_TILES and cpu_train.PHILOX_16)


def _base_env() -> dict:
    mine = ("NUMBA_CPU_FEATURES", "SUPBENCH_NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME", "NUMBA_ENABLE_AVX")
    return early_children.child_env({k: v for k, v in os.environ.items() if k not in mine})


def _plain_env() -> dict:
    """The plain child's environment: the host's CPU features as a user would name them, and a numba
    cache directory of its own, since it compiles beside the suite (tests/early_children.py says why)."""
    from llvmlite import binding

    env = _base_env()
    env["NUMBA_CPU_FEATURES"] = binding.get_host_cpu_features().flatten()
    return early_children.own_cache_env("plain", env)


ARGV = [sys.executable, "-c", CHILD, json.dumps(CASES)]
TEST = "test_512_bit_paths_train_bit_for_bit_like_the_plain_ones"
# The plain child's compilation is the suite's longest (about three minutes cold): conftest.py starts it
# when collection ends (tests/early_children.py).
EARLY_CHILDREN = {TEST: lambda: (ARGV, _plain_env()) if _has_wide_paths() else None}


def _hashes(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_512_bit_paths_train_bit_for_bit_like_the_plain_ones():
    if not _has_wide_paths():
        pytest.skip("no 512-bit code paths in this process (not an Intel AVX-512 host, or NUMBA_CPU_FEATURES set)")
    paths = {cpu_train.uses_rowwise(n, m, lanes or cpu_train.lanes_for(n, m)) for _, n, m, lanes, *_ in CASES}
    assert paths == {True, False}  # row-by-row and per-lane models both
    plain = _hashes(early_children.answer(__name__, TEST, EARLY_CHILDREN[TEST]))
    wide = _hashes(early_children.run_now(ARGV, _base_env()))
    assert wide["wide"] == [True, True, True] and plain["wide"] == [False, False, False]
    for case, a, b in zip(CASES, wide["hashes"], plain["hashes"]):
        assert a == b, f"{case}: 512-bit paths {a[:12]}, plain {b[:12]}"
    assert len(set(wide["hashes"])) == len(CASES)  # every case trained something of its own
