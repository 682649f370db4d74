"""The CPU kernels' end of step (kernels/cpu_train.py): the vectorised optimizer update (adam_update,
adam_update_vector) rounds every element exactly as the scalar update does, whatever LLVM makes of
the loop, through the fma intrinsic (kernels/cpu_simd.py), which rounds once; and sum_lanes adds each
row's lanes in order."""
import numpy as np
import pytest

pytest.importorskip("numba")
from numba import njit  # noqa: E402

from kernels import cpu_train  # noqa: E402
from kernels.cpu_simd import fma  # noqa: E402

f32 = np.float32
FASTMATH = cpu_train.FASTMATH
SCALARS = dict(decay=f32(1 - 1e-2 * 1e-2), step_size=f32(1e-2 / (1 - 0.9 ** 3)),
               inv_sqrt_bias2=f32(1 / np.sqrt(1 - 0.999 ** 3)),
               wd=f32(1e-2), one_b1=f32(0.1), beta2=f32(0.999), one_b2=f32(1 - 0.999), eps=f32(1e-8))


@njit(fastmath=FASTMATH)
def _update_rows(P, M1, M2, G, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps, decoupled):
    """adam_update on instance 0 of P (1, rows, cols): long rows take the vector loop."""
    cpu_train.adam_update(P, M1, M2, G, 0, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps, decoupled)


@njit(fastmath=FASTMATH)
def _update_vector(P, M1, M2, G, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps, decoupled):
    cpu_train.adam_update_vector(P, M1, M2, G, 0, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps,
                                 decoupled)


@njit(fastmath=FASTMATH)
def _update_one_by_one(P, M1, M2, G, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps, decoupled):
    """The same update, one element per call of adam_update on a (1, 1, 1) array (a one-element loop:
    its scalar code)."""
    p, m1, m2 = np.empty((1, 1, 1), np.float32), np.empty((1, 1, 1), np.float32), np.empty((1, 1, 1), np.float32)
    g = np.empty((1, 1), np.float32)
    for i in range(P.shape[0]):
        p[0, 0, 0], m1[0, 0, 0], m2[0, 0, 0], g[0, 0] = P[i], M1[i], M2[i], G[i]
        cpu_train.adam_update(p, m1, m2, g, 0, decay, step_size, inv_sqrt_bias2, wd, one_b1, beta2, one_b2, eps,
                              decoupled)
        P[i], M1[i], M2[i] = p[0, 0, 0], m1[0, 0, 0], m2[0, 0, 0]


def test_fma_rounds_once():
    """(1 + 2^-12)^2 = 1 + 2^-11 + 2^-24 exactly: a float32 product rounds the 2^-24 away (a tie, to
    even), one rounding of the whole a b + c keeps it. float64 alike with 2^-27 and 2^-54."""
    call = njit(lambda a, b, c: fma(a, b, c))
    plain = njit(lambda a, b, c: a * b + c)  # no fastmath flags: two roundings
    for t, e in ((np.float32, 12), (np.float64, 27)):
        a, c = t(1 + 2.0 ** -e), t(-(1 + 2.0 ** (1 - e)))
        got = call(a, a, c)
        assert type(got) in (t, float) and got == 2.0 ** (-2 * e) and plain(a, a, c) == 0
    with pytest.raises(Exception):
        call(f32(1), 1.0, f32(1))  # mixed float types are refused, not silently promoted


def _fma(a, b, c):
    """float32 fma(a, b, c) through float64: a b is exact there; the float64 sum can round before the
    float32 rounding (double rounding, ~2^-28 per element), which these fixed inputs do not hit."""
    return (np.float64(a) * np.float64(b) + np.float64(c)).astype(f32)


def _state(size, seed):
    g = np.random.default_rng(seed)
    P = g.standard_normal(size).astype(f32)
    G = (g.standard_normal(size) * 10.0 ** g.uniform(-6, 0, size)).astype(f32)
    G[:3] = 0.0  # zero gradients (sparse features) and a zero moment
    M1 = (g.standard_normal(size) * 1e-2).astype(f32)
    M2 = (np.abs(g.standard_normal(size)) * 1e-4).astype(f32)
    M1[0] = M2[0] = 0.0
    return P, M1, M2, G


@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("size", [1, 3, 20, 400, 1003])
def test_vector_update_matches_one_element_at_a_time(decoupled, size):
    P, M1, M2, G = _state(size, size)
    rows = [a.copy().reshape(1, 1, size) for a in (P, M1, M2)] + [G.copy().reshape(1, size)]
    vec = [a.copy().reshape(1, size) for a in (P, M1, M2)] + [G.copy()]
    one = [a.copy() for a in (P, M1, M2, G)]
    _update_rows(*rows, *SCALARS.values(), decoupled)
    _update_vector(*vec, *SCALARS.values(), decoupled)
    _update_one_by_one(*one, *SCALARS.values(), decoupled)
    for r, v, o in zip(rows[:3], vec[:3], one[:3]):
        assert np.array_equal(r.ravel(), o) and np.array_equal(v.ravel(), o)


@pytest.mark.parametrize("decoupled", [True, False])
def test_update_rounds_as_documented(decoupled):
    """Each element, weights (3 rows) and bias alike: the moments and the step with the FMAs that
    _adam's docstring names."""
    P, M1, M2, G = _state(1005, 7)
    s = SCALARS
    rows = [a.copy().reshape(1, 3, -1) for a in (P, M1, M2)]
    _update_rows(*rows, G.reshape(3, -1).copy(), *s.values(), decoupled)
    vec = [a.copy().reshape(1, -1) for a in (P, M1, M2)]
    _update_vector(*vec, G.copy(), *s.values(), decoupled)
    g = G if decoupled else _fma(s["wd"], P, G)
    m1 = _fma(s["one_b1"], (g - M1).astype(f32), M1)
    m2 = _fma(s["beta2"], M2, (s["one_b2"] * g).astype(f32) * g)
    denom = _fma(np.sqrt(m2), s["inv_sqrt_bias2"], s["eps"])
    q = m1 / denom
    if decoupled:
        p = _fma(P, s["decay"], -(s["step_size"] * q).astype(f32))
    else:
        p = _fma(-s["step_size"], q, P)
    for got_rows, got_vec, want in zip(rows, vec, (p, m1, m2)):
        assert np.array_equal(got_rows.ravel(), want) and np.array_equal(got_vec.ravel(), want)


@pytest.mark.parametrize("rows, lanes", [(1, 1), (3, 5), (8, 128), (20, 16), (403, 128)])
def test_sum_lanes_adds_each_rows_lanes_in_order(rows, lanes):
    g = np.random.default_rng(rows)
    acc = (g.standard_normal((rows, lanes)) * 10.0 ** g.uniform(-3, 3, (rows, lanes))).astype(f32)
    want = np.zeros(rows, f32)
    for l in range(lanes):  # float32, in lane order
        want = want + acc[:, l]
    out = np.empty(rows, f32)
    njit(fastmath=FASTMATH)(lambda a, o: cpu_train.sum_lanes(a, o))(acc, out)
    assert np.array_equal(out, want)
    # A 3-D accumulator (m, n, lanes), as the per-lane weight gradient: three copies side by side.
    acc3 = np.stack([acc, 2 * acc, -acc])
    out3 = np.empty((3, rows), f32)
    njit(fastmath=FASTMATH)(lambda a, o: cpu_train.sum_lanes(a, o))(acc3, out3)
    assert np.array_equal(out3, np.stack([want, 2 * want, -want]))
