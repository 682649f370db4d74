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
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

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


# philox_features16: 16 counters at once in LLVM vectors of 32-bit words (<16 x i32>, one AVX-512
# register). The scalar philox above, vectorised by LLVM over a loop, holds each word in a 64-bit lane
# (8 per register) and spends a shift and a mask per product on that; here one 32x32->64 multiply
# (vpmuludq) serves the even words and one the odd ones, and a shuffle each (vpermt2d) gathers the high
# and low halves. Same words, so the same batch: tests/test_cpu_backend.py checks it against philox.
_I32, _I64 = ir.IntType(32), ir.IntType(64)
_V16, _Q8, _F16 = ir.VectorType(_I32, 16), ir.VectorType(_I64, 8), ir.VectorType(ir.FloatType(), 16)
_LO_WORDS = ir.Constant(_V16, [j for i in range(8) for j in (2 * i, 16 + 2 * i)])
_HI_WORDS = ir.Constant(_V16, [j for i in range(8) for j in (2 * i + 1, 17 + 2 * i)])


def _splat(builder, value, vec):
    """A vector of type vec with every element ``value``."""
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), ir.Constant(_V16, [0] * 16))


def _mulhilo(builder, v, k: int):
    """(hi, lo): the high and low 32 bits of the 64-bit products v[i] * k, v <16 x i32>."""
    q = builder.bitcast(v, _Q8)
    kk = ir.Constant(_Q8, [k] * 8)
    even = builder.mul(builder.and_(q, ir.Constant(_Q8, [0xFFFFFFFF] * 8)), kk)
    odd = builder.mul(builder.lshr(q, ir.Constant(_Q8, [32] * 8)), kk)
    e, o = builder.bitcast(even, _V16), builder.bitcast(odd, _V16)
    return builder.shuffle_vector(e, o, _HI_WORDS), builder.shuffle_vector(e, o, _LO_WORDS)


@intrinsic
def philox_features16(typingctx, x, p, inv, f0, f1, f2, f3, l0, l1, l2, l3, base, stride, c1, c2, c3, k0, k1):
    """Sixteen Philox calls and the sampling rule, stored into a block: philox(c0_i, c1, c2, c3, k0, k1)
    for the counters c0_i = base + i * stride (i < 16, mod 2^32); output word w of call i goes through
    feature(word, p[f_w], inv[f_w]) into x[f_w, l_w + i]. x (rows, lanes) float32 C-contiguous, p and
    inv (>= rows,) float32; indices unchecked (callers index inside, and NUMBA_BOUNDSCHECK does not
    see them). The four destinations must not overlap: word 0's 16 lanes are all stored before word
    1's, where the scalar loop stores call by call. Bit for bit philox + feature."""
    if not (isinstance(x, types.Array) and x.ndim == 2 and x.dtype == types.float32 and x.layout == "C"
            and all(isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.float32 for a in (p, inv))
            and all(isinstance(a, types.Integer) for a in (f0, f1, f2, f3, l0, l1, l2, l3, base, stride, c1, c2,
                                                            c3, k0, k1))):
        return None
    sig = types.void(x, p, inv, f0, f1, f2, f3, l0, l1, l2, l3, base, stride, c1, c2, c3, k0, k1)

    def codegen(context, builder, sig, args):
        xa, pa, ia = (context.make_array(sig.args[k])(context, builder, args[k]) for k in range(3))

        def word(k):  # argument k's low 32 bits
            return builder.trunc(context.cast(builder, args[k], sig.args[k], types.uint64), _I32)

        def index(k):
            return context.cast(builder, args[k], sig.args[k], types.intp)

        c0 = builder.add(_splat(builder, word(11), _V16),
                         builder.mul(ir.Constant(_V16, list(range(16))), _splat(builder, word(12), _V16)))
        c1, c2, c3 = (_splat(builder, word(k), _V16) for k in (13, 14, 15))
        k0, k1 = word(16), word(17)
        for _ in range(N_ROUNDS):  # philox's round, on 16 counters
            hb, lb = _mulhilo(builder, c2, int(ROUND_B))
            ha, la = _mulhilo(builder, c0, int(ROUND_A))
            c0 = builder.xor(builder.xor(hb, c1), _splat(builder, k0, _V16))
            c2 = builder.xor(builder.xor(ha, c3), _splat(builder, k1, _V16))
            c1, c3 = lb, la
            k0 = builder.add(k0, ir.Constant(_I32, int(KEY_A)))
            k1 = builder.add(k1, ir.Constant(_I32, int(KEY_B)))
        u24 = ir.Constant(_F16, [float(U24)] * 16)
        for w, out in enumerate((c0, c1, c2, c3)):  # feature(): u = (word >> 8) 2^-24; u < p ? u inv : 0
            f, lane = index(3 + w), index(7 + w)
            pf, iv = (builder.load(cgutils.get_item_pointer(context, builder, sig.args[k], arr, [f], wraparound=False))
                      for k, arr in ((1, pa), (2, ia)))
            u = builder.fmul(builder.uitofp(builder.lshr(out, ir.Constant(_V16, [8] * 16)), _F16), u24)
            on = builder.fcmp_ordered("<", u, _splat(builder, pf, _F16))
            val = builder.select(on, builder.fmul(u, _splat(builder, iv, _F16)), ir.Constant(_F16, [0.0] * 16))
            ptr = cgutils.get_item_pointer(context, builder, sig.args[0], xa, [f, lane], wraparound=False)
            builder.store(val, builder.bitcast(ptr, _F16.as_pointer()), align=4)
        return context.get_dummy_value()
    return sig, codegen


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
