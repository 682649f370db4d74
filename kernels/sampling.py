"""On-chip sparse feature sampling, and a kernel that writes the very batch the trainer draws.

Counter layout (the same as engine/rng.py, which is its bit-exact torch twin): for instance k,
0-based step t, batch row r and feature f, one Philox4x32-10 call with counters (c0, t, k, 0),
key = seed (low, high 32 bits), and one of its four output words:
    n >= 3:  c0 = r * ceil(n/4) + f // 4, word f % 4          (a call serves one row)
    n <= 2:  c0 = (r * n + f) // 4,        word (r * n + f) % 4 (a call serves 4/n rows)
so no draw is wasted for n = 1, 2 or any multiple of 4. The uniform is the word's top 24 bits /
2^24; the feature is active iff u < p_f, and its value is then u * (1 / p_f): the reciprocal is
an IEEE division once per feature, the product one multiply per draw, both correctly rounded,
so CPU (engine/reference.features_from_uniform) and GPU agree bit for bit.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _to_uniform(w):
    """uint32 -> float32 in [0, 1): top 24 bits, exactly representable."""
    return (w >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def uniform_tile(seed, inst, step, r0, n4, f0, P: tl.constexpr, BB: tl.constexpr, NP: tl.constexpr):
    """Uniforms (P, BB, NP) for instances ``inst`` (P,) uint32, batch rows r0 .. r0+BB-1 and
    features f0 .. f0+NP-1 (f0 a multiple of 4, 0 unless the caller works in feature blocks;
    NP a power of two; n <= 2 means f0 = 0 and NP = n exactly).

    NP >= 4: one Philox call per row and 4 features; NP in {1, 2}: one call per 4/NP rows.
    Either way the four words are interleaved back into order, no draw wasted (r0 and BB must
    be multiples of 4/NP in the second case).
    """
    if NP >= 4:
        C: tl.constexpr = BB * (NP // 4)  # calls per tile and instance
        rows = r0 + tl.arange(0, BB)
        j = f0 // 4 + tl.arange(0, NP // 4)
        c0 = tl.reshape(rows[:, None] * n4 + j[None, :], (C,))
    else:
        C: tl.constexpr = BB * NP // 4
        c0 = r0 * NP // 4 + tl.arange(0, C)
    c0 = tl.broadcast_to(c0.to(tl.uint32)[None, :], (P, C))
    c2 = tl.broadcast_to(inst[:, None], (P, C))
    c1 = (tl.zeros((P, C), tl.int32) + step).to(tl.uint32)
    c3 = tl.zeros((P, C), tl.uint32)
    o0, o1, o2, o3 = tl.philox(seed, c0, c1, c2, c3)
    # join(join(o0, o2), join(o1, o3))[..., i, c] is word 2 i + c, so the flat order is o0 o1 o2 o3.
    w = tl.reshape(tl.join(tl.join(o0, o2), tl.join(o1, o3)), (P, BB, NP))
    return _to_uniform(w)


@triton.jit
def feature_tile(seed, inst, step, r0, n4, f0, prob, inv_prob, valid, P: tl.constexpr, BB: tl.constexpr,
                 NP: tl.constexpr):
    """Sparse features x (P, BB, NP) of rows r0..r0+BB-1 and features f0..f0+NP-1: U[0,1) with
    probability ``prob`` (P, 1, NP), else 0; 0 where not ``valid``. inv_prob = reciprocal(prob)."""
    u = uniform_tile(seed, inst, step, r0, n4, f0, P, BB, NP)
    return tl.where((u < prob) & valid, u * inv_prob, 0.0)


@triton.jit
def reciprocal(prob):
    """1 / prob, correctly rounded (the sampling rule's reciprocal; inf where prob is 0)."""
    return tl.div_rn(tl.full(prob.shape, 1.0, tl.float32), prob)


@triton.jit
def scaled_rule(prob):
    """(prob * 2^24, reciprocal(prob) * 2^-24): the sampling rule's constants in the units of the
    24-bit integer k behind u = k 2^-24, for ``feature_tile_rows_last`` (computed once, outside loops)."""
    return prob * 16777216.0, reciprocal(prob) * (1.0 / 16777216.0)


@triton.jit
def feature_tile_rows_last(seed, inst, step, r0, n4, prob24, inv24, EVEN: tl.constexpr, batch, P: tl.constexpr,
                           BB: tl.constexpr, NP: tl.constexpr):
    """The draws of rows r0..r0+BB-1 and features 0..NP-1 as x (P, NP, BB), rows on the last axis,
    laid out so that each thread already holds the words of the Philox calls it made (no shuffle
    through shared memory). prob24, inv24 (P, NP, 1) = scaled_rule(prob), prob 0 for padded features.
    EVEN: batch % BB == 0.

    n >= 3: position q of the row axis is row r0 + q, and the feature axis is word-major
    (``rows_last_features``): position w G + g holds feature 4 g + w, G = NP / 4, so when the
    features are spread over T lanes (T divides G) each lane holds whole Philox calls. n <= 2,
    where a call serves R = 4/n rows: position q of the row axis is row r0 + (q % C) * R + q // C
    with C = BB / R calls, so the R rows of call c sit at positions c, c + C, ..., which triton's
    default layout gives to one thread. The training kernels sum over rows and features, so the
    order is free; the draws are those of ``feature_tile``.
    """
    if NP >= 4:
        G: tl.constexpr = NP // 4
        q = tl.arange(0, BB)
        c0 = (r0 + q)[None, None, :] * n4 + tl.arange(0, G)[None, :, None]             # (1, G, BB)
        c0 = tl.broadcast_to(c0.to(tl.uint32), (P, G, BB))
        c2 = tl.broadcast_to(inst[:, None, None], (P, G, BB))
        zero = tl.zeros((P, G, BB), tl.uint32)
        c1 = (tl.zeros((P, G, BB), tl.int32) + step).to(tl.uint32)
        o0, o1, o2, o3 = tl.philox(seed, c0, c1, c2, zero)
        # (P, G, BB, a, d) holds word 2a + d of feature group g (see uniform_tile's join order)
        # -> (P, a, d, G, BB) -> (P, 4G, BB): position (2a + d) G + g, feature 4g + 2a + d.
        w = tl.reshape(tl.permute(tl.join(tl.join(o0, o2), tl.join(o1, o3)), (0, 3, 4, 1, 2)), (P, NP, BB))
    else:
        R: tl.constexpr = 4 // NP
        C: tl.constexpr = BB // R
        c = tl.arange(0, C)
        c0 = tl.broadcast_to((r0 // R + c).to(tl.uint32)[None, :], (P, C))
        c2 = tl.broadcast_to(inst[:, None], (P, C))
        zero = tl.zeros((P, C), tl.uint32)
        c1 = (tl.zeros((P, C), tl.int32) + step).to(tl.uint32)
        o0, o1, o2, o3 = tl.philox(seed, c0, c1, c2, zero)
        # (P, C, a, d) holds word 2a + d = (row in call) * NP + feature.
        w4 = tl.join(tl.join(o0, o2), tl.join(o1, o3))
        if NP == 2:
            w = tl.reshape(tl.permute(w4, (0, 3, 2, 1)), (P, NP, BB))      # [p, d = feature, a * C + c]
        else:
            w = tl.reshape(tl.permute(w4, (0, 2, 3, 1)), (P, NP, BB))      # [p, 0, (2a + d) * C + c]
    # u = k 2^-24 with k the top 24 bits. Powers of two scale exactly, so u < p iff k < p 2^24 and
    # u * reciprocal(p) rounds exactly as k * (reciprocal(p) 2^-24): the same bits, a multiply fewer.
    k = (w >> 8).to(tl.float32)
    active = k < prob24
    if not EVEN:
        active = active & (rows_last_order(r0, BB, NP) < batch)[None, None, :]
    return tl.where(active, k * inv24, 0.0)


@triton.jit
def rows_last_features(NP: tl.constexpr):
    """(NP,) the feature at each position of ``feature_tile_rows_last``'s feature axis."""
    q = tl.arange(0, NP)
    if NP >= 4:
        G: tl.constexpr = NP // 4
        return 4 * (q % G) + q // G
    else:
        return q


@triton.jit
def rows_last_order(r0, BB: tl.constexpr, NP: tl.constexpr):
    """(BB,) the batch row at each position of ``feature_tile_rows_last``'s row axis."""
    q = tl.arange(0, BB)
    if NP >= 4:
        return r0 + q
    else:
        R: tl.constexpr = 4 // NP
        C: tl.constexpr = BB // R
        return r0 + (q % C) * R + q // C


@triton.jit
def _sample_kernel(x_ptr, p_ptr, K, n, batch, first_instance, step, seed,
                   P: tl.constexpr, BB: tl.constexpr, NP: tl.constexpr):
    """Write x (K, batch, n): exactly the batch the training kernel draws at ``step``.

    x_ptr: (K, batch, n) float32 out; p_ptr: (K, n) float32 feature probabilities.
    Grid: (cdiv(K, P), cdiv(batch, BB)).
    """
    pid = tl.program_id(0).to(tl.int64)
    r0 = tl.program_id(1) * BB
    rows = r0 + tl.arange(0, BB)
    ip = pid * P + tl.arange(0, P)
    f = tl.arange(0, NP)
    ok_i = ip < K
    pf_mask = ok_i[:, None] & (f[None, :] < n)
    prob = tl.load(p_ptr + ip[:, None] * n + f[None, :], mask=pf_mask, other=1.0)[:, None, :]
    valid = pf_mask[:, None, :] & (rows[None, :, None] < batch)
    inst = (first_instance + ip).to(tl.uint32)
    x = feature_tile(seed, inst, step, r0, (n + 3) // 4, 0, prob, reciprocal(prob), valid, P, BB, NP)
    offs = ip[:, None, None] * batch * n + rows[None, :, None].to(tl.int64) * n + f[None, None, :]
    tl.store(x_ptr + offs, x, mask=valid)


def sample_batch(p: torch.Tensor, batch: int, step: int, seed: int, first_instance: int = 0) -> torch.Tensor:
    """The batch x (K, batch, n) float32 that the training kernel sees at 0-based ``step``.

    p: (K, n) feature probabilities on the kernel's device; instance k has global id first_instance + k.
    """
    p = p.to(torch.float32).contiguous()
    K, n = p.shape
    x = torch.empty(K, batch, n, device=p.device, dtype=torch.float32)
    NP = triton.next_power_of_2(n)
    BB = max(4, min(64, triton.next_power_of_2(batch)))  # >= 4: n <= 2 draws 4/n rows per call
    P = max(1, min(16, 1024 // (BB * NP)))
    _sample_kernel[(triton.cdiv(K, P), triton.cdiv(batch, BB))](x, p, K, n, batch, first_instance, step, seed,
                                                                 P=P, BB=BB, NP=NP)
    return x
