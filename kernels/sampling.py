"""On-chip sparse feature sampling, and a kernel that writes the very batch the trainer draws.

Counter layout (the same as engine/rng.py, which is its bit-exact torch twin): for instance k,
0-based step t, batch row r and feature f, one Philox4x32-10 call with
    counters (r * ceil(n/4) + f // 4, t, k, 0), key = seed (low, high 32 bits)
and output word f % 4. The uniform is the word's top 24 bits / 2^24; the feature is active iff
u < p_f, and its value is then u / p_f (IEEE division, so CPU and GPU agree bit for bit).
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _to_uniform(w):
    """uint32 -> float32 in [0, 1): top 24 bits, exactly representable."""
    return (w >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def uniform_tile(seed, inst, step, rows, n4, P: tl.constexpr, BB: tl.constexpr, NP: tl.constexpr):
    """Uniforms (P, BB, NP) for instances ``inst`` (P,) uint32, batch ``rows`` (BB,) and features 0..NP-1.

    NP >= 4: one Philox call per 4 features, the four words interleaved back into feature order
    (no draw wasted). NP < 4 (n = 1, 2, 3): one call per row, word f picked for feature f.
    """
    if NP >= 4:
        j = tl.arange(0, NP // 4)
        c0 = (rows[None, :, None] * n4 + j[None, None, :]).to(tl.uint32)
        c0 = tl.broadcast_to(c0, (P, BB, NP // 4))
        c2 = tl.broadcast_to(inst[:, None, None], (P, BB, NP // 4))
        c1 = (tl.zeros((P, BB, NP // 4), tl.int32) + step).to(tl.uint32)
        c3 = tl.zeros((P, BB, NP // 4), tl.uint32)
        o0, o1, o2, o3 = tl.philox(seed, c0, c1, c2, c3)
        # join(join(o0, o2), join(o1, o3))[..., i, c] is word 2 i + c, so the flat order is o0 o1 o2 o3.
        w = tl.join(tl.join(o0, o2), tl.join(o1, o3))
        w = tl.reshape(w, (P, BB, NP))
    else:
        c0 = tl.broadcast_to((rows[None, :, None] * n4).to(tl.uint32), (P, BB, 1))
        c2 = tl.broadcast_to(inst[:, None, None], (P, BB, 1))
        c1 = (tl.zeros((P, BB, 1), tl.int32) + step).to(tl.uint32)
        c3 = tl.zeros((P, BB, 1), tl.uint32)
        o0, o1, o2, o3 = tl.philox(seed, c0, c1, c2, c3)
        f = tl.arange(0, NP)[None, None, :]
        w = tl.where(f == 0, o0, tl.where(f == 1, o1, tl.where(f == 2, o2, o3)))
    return _to_uniform(w)


@triton.jit
def feature_tile(seed, inst, step, rows, n4, prob, valid, P: tl.constexpr, BB: tl.constexpr, NP: tl.constexpr):
    """Sparse features x (P, BB, NP): U[0,1) with probability ``prob`` (P, 1, NP), else 0; 0 where not ``valid``."""
    u = uniform_tile(seed, inst, step, rows, n4, P, BB, NP)
    return tl.where((u < prob) & valid, tl.div_rn(u, prob), 0.0)


@triton.jit
def _sample_kernel(x_ptr, p_ptr, K, n, batch, first_instance, step, seed,
                   P: tl.constexpr, BB: tl.constexpr, NP: tl.constexpr):
    """Write x (K, batch, n): exactly the batch the training kernel draws at ``step``.

    x_ptr: (K, batch, n) float32 out; p_ptr: (K, n) float32 feature probabilities.
    Grid: (cdiv(K, P), cdiv(batch, BB)).
    """
    pid = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BB + tl.arange(0, BB)
    ip = pid * P + tl.arange(0, P)
    f = tl.arange(0, NP)
    ok_i = ip < K
    pf_mask = ok_i[:, None] & (f[None, :] < n)
    prob = tl.load(p_ptr + ip[:, None] * n + f[None, :], mask=pf_mask, other=1.0)[:, None, :]
    valid = pf_mask[:, None, :] & (rows[None, :, None] < batch)
    inst = (first_instance + ip).to(tl.uint32)
    x = feature_tile(seed, inst, step, rows, (n + 3) // 4, prob, valid, P, BB, NP)
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
    BB = min(64, triton.next_power_of_2(batch))
    P = max(1, min(16, 1024 // (BB * NP)))
    _sample_kernel[(triton.cdiv(K, P), triton.cdiv(batch, BB))](x, p, K, n, batch, first_instance, step, seed,
                                                                 P=P, BB=BB, NP=NP)
    return x
