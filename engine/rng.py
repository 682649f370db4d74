"""Counter-based random numbers (Philox4x32-10), keyed by (seed, instance, step).

This is the torch twin of the RNG inside the Triton kernels (``kernels/sampling.py``): the same
counter layout and the same bit operations, so a test can check the kernel's stream bit for bit
on CPU, and weight initialisation is identical on every backend and independent of how the
instances are split into chunks.

Counter layout of one Philox call (4 x uint32 out):
    c0 = position inside one instance's batch (below)
    c1 = step                                (0-based training step)
    c2 = instance (global index, low 32 bits)
    c3 = stream (0 = training data, 1 = initialisation)
    key = seed (low and high 32 bits)
n >= 3: c0 = row * ceil(n/4) + f // 4 and word f % 4 serves feature f (a call per row);
n <= 2: c0 = (row * n + f) // 4 and word (row * n + f) % 4 (a call serves 4/n rows, no draw wasted).
No counter is shared across instances, so nothing overflows however many instances or steps.
"""
from __future__ import annotations

import math

import torch

_MASK = 0xFFFFFFFF
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
N_ROUNDS = 10

STREAM_DATA = 0
STREAM_INIT = 1
STREAM_EVAL = 2  # evaluation samples drawn by analyses (never by training)
STREAM_DATASET = 3  # finite datasets (DataSpec.examples): the rows of "step 0" of this stream


def dataset_uniforms(seed: int, instances: torch.Tensor, examples: int, n: int) -> torch.Tensor:
    """Uniforms (K, examples, n) of the finite training sets of the given instances: drawn once,
    and the same on every backend (the cpu kernel redraws them at every step from this counter)."""
    return uniforms(seed, instances, 0, examples, n, stream=STREAM_DATASET)


def _mulhilo(a: int, b: torch.Tensor):
    # b < 2^32 and a < 2^32 so the exact product is < 2^64; int64 wraps, and masking the
    # arithmetic shift still yields the correct high word (see test_rng).
    p = b * a
    return (p >> 32) & _MASK, p & _MASK


def philox4x32(c0, c1, c2, c3, seed: int, n_rounds: int = N_ROUNDS):
    """Philox4x32 on int64 tensors holding uint32 values; same round order as triton's ``tl.philox``.

    c0..c3: broadcastable int64 tensors with values in [0, 2^32). Returns four int64 tensors.
    """
    k0 = seed & _MASK
    k1 = (seed >> 32) & _MASK
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) for c in (c0, c1, c2, c3))
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    for _ in range(n_rounds):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _MASK
        k1 = (k1 + _KEY_B) & _MASK
    return c0, c1, c2, c3


def uint_to_uniform(x: torch.Tensor) -> torch.Tensor:
    """uint32 (in int64) -> float32 uniform in [0, 1): the top 24 bits, exactly representable."""
    return (x >> 8).to(torch.float32) * (1.0 / 16777216.0)


# Philox calls per piece of a big draw (uniforms): the int64 temporaries of one piece stay in cache. One
# call of 5M counters (the computation analysis' 100 x 2,000 x 100 uniforms) ran ~7x slower per uniform
# than pieces of this size (CPU Intel Xeon, stop 28).
PIECE = 1 << 16


def uniforms(seed: int, instances: torch.Tensor, step: int, rows: int, n: int, stream: int = STREAM_DATA):
    """Uniforms u of shape (K, rows, n) for the given global instance ids (K,) and one step,
    in the counter layout above (drawn PIECE Philox calls at a time; the same numbers either way)."""
    inst = torch.as_tensor(instances, dtype=torch.int64).reshape(-1, 1, 1)
    if n <= 2:
        calls = math.ceil(rows * n / 4)
        c0 = torch.arange(calls, dtype=torch.int64).reshape(1, -1, 1)
    else:
        n4 = math.ceil(n / 4)
        c0 = (torch.arange(rows, dtype=torch.int64).reshape(-1, 1) * n4 + torch.arange(n4)).reshape(1, -1, 1)
    width = max(1, PIECE // max(1, inst.shape[0]))  # counters per piece, for all K instances at once
    c1, c2, c3 = torch.tensor(step & _MASK), inst & _MASK, torch.tensor(stream)
    pieces = []
    for a in range(0, c0.shape[1], width):
        words = philox4x32(c0[:, a:a + width], c1, c2, c3, seed)
        pieces.append(torch.cat([uint_to_uniform(w) for w in words], dim=-1))  # (K, piece, 4): words in order
    u = torch.cat(pieces, dim=1)  # (K, calls, 4)
    K = u.shape[0]
    if n <= 2:
        return u.reshape(K, -1)[:, : rows * n].reshape(K, rows, n)
    return u.reshape(K, rows, -1)[:, :, :n]


def normals(seed: int, instances: torch.Tensor, rows: int, n: int, draw: int = 0) -> torch.Tensor:
    """Standard normals (K, rows, n) from the init stream (Box-Muller on two Philox draws: "steps"
    2 draw and 2 draw + 1, so each parameter tensor of a model has its own draw)."""
    u1 = uniforms(seed, instances, 2 * draw, rows, n, stream=STREAM_INIT)
    u2 = uniforms(seed, instances, 2 * draw + 1, rows, n, stream=STREAM_INIT)
    # 1 - u1 is in (0, 1], so the log is finite.
    return torch.sqrt(-2.0 * torch.log1p(-u1.double())) .mul(torch.cos(2 * math.pi * u2.double())).float()
