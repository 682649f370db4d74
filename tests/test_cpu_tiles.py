"""The register tiles of the CPU kernels' products (kernels/cpu_tiles.py, kernels.cpu_train.rows_times):
bit for bit the plain loop over odd shapes, close to float64, and the committed file is the generator's."""
import numpy as np
import pytest

pytest.importorskip("numba")
from numba import njit  # noqa: E402

from kernels import cpu_train, tilegen  # noqa: E402


def test_committed_tiles_are_the_generators_output():
    assert tilegen.TARGET.read_text() == tilegen.source(), "run python -m kernels.tilegen and commit the result"


@njit(fastmath={"contract"})
def plain(A, X, active, init, out):
    """The product every kernel used before the tiles: one FMA per term, c in order."""
    C, rows = A.shape
    for r in range(rows):
        for l in range(out.shape[1]):
            out[r, l] = init[r]
        for c in range(C):
            if active[c]:
                for l in range(out.shape[1]):
                    out[r, l] += A[c, r] * X[c, l]


@pytest.mark.parametrize("C", [1, 3, 7, 8, 20, 33, 400])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 13, 30])
@pytest.mark.parametrize("R", [4, 12, 16, 20, 128])
def test_rows_times_equals_the_plain_loop_bit_for_bit(C, rows, R):
    g = np.random.default_rng(C * 1000 + rows * 10 + R)
    A = g.standard_normal((C, rows)).astype(np.float32)
    X = g.standard_normal((C + 3, R)).astype(np.float32)  # padding rows past C, as the sampler's x has
    X[:, g.random(R) < 0.3] = 0.0
    active = g.random(C) < 0.7
    init = g.standard_normal(rows).astype(np.float32)
    with cpu_train.slp_vectorize():
        out = np.full((rows, R), np.nan, np.float32)
        cpu_train.rows_times(A, X, active, init, out)
    want = np.empty_like(out)
    plain(A, X, active, init, want)
    assert np.array_equal(out, want)
    exact = init[:, None].astype(np.float64) + (A[active].T.astype(np.float64) @ X[:C][active].astype(np.float64))
    assert np.allclose(out, exact, rtol=1e-5, atol=1e-5 * np.sqrt(C))


def test_slp_vectorize_restores_numba_setting():
    import numba

    before = numba.config.SLP_VECTORIZE
    with cpu_train.slp_vectorize():
        assert numba.config.SLP_VECTORIZE == 1
    assert numba.config.SLP_VECTORIZE == before
