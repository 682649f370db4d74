"""Philox4x32-10 and the sampling rule for the CPU kernels (numba): a bit-exact mirror of
engine/rng.py and engine/reference.features_from_uniform, and of the GPU sampler
(kernels/sampling.py).

Every value here is a uint64 holding a 32-bit word, so numba never mixes signed and unsigned
types (which it would promote to float64) and LLVM sees 32x32->64 products it can vectorise.
Counter layout (engine/rng.py): (c0 = position in the instance's batch, c1 = step,
c2 = instance, c3 = stream 0), key = seed.
"""
from __future__ import annotations

import numpy as np
from numba import njit

N_ROUNDS = 10
M32 = np.uint64(0xFFFFFFFF)
ROUND_A = np.uint64(0xD2511F53)
ROUND_B = np.uint64(0xCD9E8D57)
KEY_A = np.uint64(0x9E3779B9)
KEY_B = np.uint64(0xBB67AE85)
U24 = np.float32(1.0 / 16777216.0)  # 2^-24
SHIFT8 = np.uint64(8)
SHIFT32 = np.uint64(32)


def seed_words(seed: int) -> tuple[np.uint64, np.uint64]:
    """The Philox key (k0, k1): the low and high 32 bits of the 64-bit seed, as uint64."""
    return np.uint64(seed & 0xFFFFFFFF), np.uint64((seed >> 32) & 0xFFFFFFFF)


@njit(inline="always", cache=True)
def philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint64 words < 2^32, the round order of triton's tl.philox; (k0, k1) = seed_words(seed).

    The round keys are computed here, not read from an array: a load inside the caller's loop
    that LLVM cannot prove independent of the caller's stores keeps the loop from vectorising."""
    for r in range(N_ROUNDS):
        # The masks are no-ops on the values but tell LLVM the operands fit 32 bits, so the
        # products compile to 32x32->64 multiplies (vpmuludq) instead of 64-bit ones.
        pb = ROUND_B * (c2 & M32)
        pa = ROUND_A * (c0 & M32)
        c0, c1, c2, c3 = (pb >> SHIFT32) ^ c1 ^ k0, pb & M32, (pa >> SHIFT32) ^ c3 ^ k1, pa & M32
        k0 = (k0 + KEY_A) & M32
        k1 = (k1 + KEY_B) & M32
    return c0, c1, c2, c3


@njit(inline="always", cache=True)
def feature(word, p, inv_p):
    """The sampling rule on one Philox word: u = top 24 bits / 2^24 (float32, exact); active iff
    u < p, then value u * inv_p with inv_p = float32(1) / p (correctly rounded, float32)."""
    u = np.float32(word >> SHIFT8) * U24
    return u * inv_p if u < p else np.float32(0.0)


@njit(inline="always", cache=True)
def uniform_at(row, f, n, c1, c2, c3, k0, k1):
    """The float32 uniform of feature f of batch row ``row`` (engine/rng.py's counter layout; c1 =
    step, c2 = instance, c3 = stream, as uint64 words). Used where a rule needs a raw uniform again (sets)."""
    if n >= 3:
        c0 = np.uint64(row * ((n + 3) // 4) + f // 4)
        w = f % 4
    else:
        pos = row * n + f
        c0 = np.uint64(pos // 4)
        w = pos % 4
    o0, o1, o2, o3 = philox(c0, c1, c2, c3, k0, k1)
    word = o0 if w == 0 else (o1 if w == 1 else (o2 if w == 2 else o3))
    return np.float32(word >> SHIFT8) * U24


@njit(cache=True)
def sample(p, rows, step, instance, k0, k1):
    """x (rows, n) float32: the batch of one instance at one step (tests compare it with engine/rng.py).

    p: (n,) float32 feature probabilities; instance: global instance id; (k0, k1) = seed_words(seed).
    """
    n = p.shape[0]
    inv = np.float32(1.0) / p
    x = np.zeros((rows, n), np.float32)
    c1 = np.uint64(step) & M32
    c2 = np.uint64(instance) & M32
    zero = np.uint64(0)
    if n <= 2:
        total = rows * n
        for c in range((total + 3) // 4):
            o = philox(np.uint64(c), c1, c2, zero, k0, k1)
            for w in range(4):
                pos = 4 * c + w
                if pos < total:
                    f = pos % n
                    x[pos // n, f] = feature(o[w], p[f], inv[f])
    else:
        n4 = (n + 3) // 4
        for r in range(rows):
            for q in range(n4):
                o = philox(np.uint64(r * n4 + q), c1, c2, zero, k0, k1)
                for w in range(4):
                    f = 4 * q + w
                    if f < n:
                        x[r, f] = feature(o[w], p[f], inv[f])
    return x
