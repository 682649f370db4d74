"""The register tiles of the CPU kernels' products (kernels/cpu_tiles.py, kernels/cpu_products.py):
bit for bit the plain loop over odd shapes, close to float64, and the committed file is the generator's;
the wide tiles (8 x 32) the same numbers as the narrow ones on every host, whichever it uses."""
import numpy as np
import pytest

pytest.importorskip("numba")
from numba import njit  # noqa: E402

from kernels import cpu_products, cpu_train, tilegen  # noqa: E402


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
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 6, 7, 13, 15, 30])
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


def test_slp_vectorize_survives_numba_re_reading_its_environment(monkeypatch):
    """numba's compiler re-reads its config from the NUMBA_* environment whenever one of those variables
    changed since it last looked; kernels/__init__.py sets NUMBA_CACHE_DIR, so in a process that had
    imported numba first (pytest's collection does) the first kernel compiled inside slp_vectorize got SLP
    turned off again: scalar FMAs, ~10x slower tiles, kept in the disk cache for every later run."""
    import re

    from kernels import cpu_tiles

    monkeypatch.setenv("NUMBA_SUPBENCH_TEST_TOUCH", "1")  # any NUMBA_* change makes the next compile re-read
    tile = njit(fastmath={"contract"})(cpu_tiles.tile_4.py_func)  # a fresh, uncached copy of a tile
    A, X = np.ones((20, 5), np.float32), np.ones((20, 32), np.float32)
    out = np.empty((5, 32), np.float32)
    with cpu_train.slp_vectorize():
        tile(A, X, np.ones(20, np.bool_), np.zeros(5, np.float32), out, 0, 0, 32)
    assert np.all(out[:4] == 20.0)
    asm = tile.inspect_asm(tile.signatures[0])
    assert re.search(r"vfmadd\w*ps\s[^\n]*%[yz]mm", asm), "the tile's FMAs are not packed into vectors"


@pytest.mark.parametrize("tile_rows", [8, 4])  # TILE_ROWS: 8 with AVX-512, 4 without; both checked on any host
@pytest.mark.parametrize("C, rows", [(4, 1), (20, 5), (33, 7), (400, 30), (30, 400), (37, 13)])
def test_both_tile_heights_give_the_plain_loops_sums_bit_for_bit(tile_rows, C, rows):
    g = np.random.default_rng(C * 7 + rows + tile_rows)
    R = 128
    A = g.standard_normal((C, rows)).astype(np.float32)
    X = g.standard_normal((C, R)).astype(np.float32)
    active = g.random(C) < 0.8
    init = g.standard_normal(rows).astype(np.float32)
    want = np.empty((rows, R), np.float32)
    plain(A, X, active, init, want)
    with cpu_train.slp_vectorize():
        out = np.full((rows, R), np.nan, np.float32)
        cpu_products._rows_times_tiled(A, X, active, init, out, tile_rows, 0, rows, 0)
        assert np.array_equal(out, want)
        # The weight gradient's accumulation: acc (n_pad, mp) += X (n_pad, R) @ YT (R, mp), n_pad a multiple of 4.
        n_pad, mp = 4 * ((rows + 3) // 4), 32
        Xg = np.zeros((n_pad, R), np.float32)
        Xg[:rows] = g.standard_normal((rows, R)).astype(np.float32)
        YT = g.standard_normal((R, mp)).astype(np.float32)
        acc0 = g.standard_normal((n_pad, mp)).astype(np.float32)
        got, ref = acc0.copy(), acc0.copy()
        cpu_products._accumulate_tiles(got, Xg, YT, tile_rows, 0, 0)
        cpu_products._accumulate_tiles(ref, Xg, YT, 12 - tile_rows, 0, 0)  # the other height
    assert np.array_equal(got, ref)
    exact = acc0.astype(np.float64) + Xg.astype(np.float64) @ YT.astype(np.float64)
    assert np.allclose(got, exact, rtol=1e-5, atol=1e-4)


@njit
def _aligned(sizes, out):
    for i in range(sizes.shape[0]):
        a = cpu_train.zeros_aligned((sizes[i],))
        out[i, 0] = a.ctypes.data % cpu_train.CACHE_LINE
        out[i, 1] = a.shape[0]
        out[i, 2] = (a != 0.0).sum()


def test_work_arrays_start_on_a_cache_line():
    """numba's own arrays start 32 bytes past a cache line, so every 512-bit row access straddled two."""
    sizes = np.array([0, 1, 3, 16, 20, 128, 400 * 128, 1001], np.int64)
    out = np.empty((sizes.shape[0], 3), np.int64)
    _aligned(sizes, out)
    assert out[:, 0].tolist() == [0] * len(sizes)
    assert out[:, 1].tolist() == sizes.tolist()
    assert not out[:, 2].any()


@pytest.mark.parametrize("name, avx512, expected", [("sapphirerapids", True, True), ("skylake-avx512", True, True),
                                                    ("rocketlake", True, True), ("znver4", True, False),
                                                    ("znver3", False, False), ("haswell", False, False),
                                                    ("nocona", True, False), ("knl", True, False)])
def test_512_bit_code_is_asked_for_only_where_llvm_would_keep_an_avx512_cpu_to_256(monkeypatch, name, avx512,
                                                                                 expected):
    import kernels
    from llvmlite import binding

    monkeypatch.delenv("NUMBA_ENABLE_AVX", raising=False)

    class Features(dict):
        def flatten(self):
            return ",".join(("+" if v else "-") + k for k, v in self.items())

    monkeypatch.setattr(binding, "get_host_cpu_name", lambda: name)
    monkeypatch.setattr(binding, "get_host_cpu_features", lambda: Features(avx512f=avx512, fma=True))
    got = kernels._wide_vector_features()
    assert (got is not None) == expected
    if expected:
        assert got.startswith("+avx512f,+fma") and got.endswith(",-prefer-256-bit")
    monkeypatch.setenv("NUMBA_ENABLE_AVX", "0")  # the user's switch (numba's own for AVX-less VMs) wins
    assert kernels._wide_vector_features() is None


def test_tiles_run_on_512_bit_registers_where_512_bit_code_was_asked_for():
    """Where kernels.cpu_products.WIDE_VECTORS holds (an Intel AVX-512 host), the kernels were compiled for
    512-bit vectors: a tile's FMAs use zmm registers, where LLVM's own tuning gave ymm (256-bit) ones."""
    import re

    from kernels import cpu_tiles

    if not cpu_products.WIDE_VECTORS:
        pytest.skip("the kernels have numba's own vector width here (no AVX-512, a CPU LLVM already gives 512 "
                    "bits, or numba compiled code before kernels was imported)")
    tile = njit(fastmath={"contract"})(cpu_tiles.tile_8.py_func)  # a fresh, uncached copy (its asm is readable)
    A, X = np.ones((20, 8), np.float32), np.ones((20, 64), np.float32)
    out = np.empty((8, 64), np.float32)
    with cpu_train.slp_vectorize():
        tile(A, X, np.ones(20, np.bool_), np.zeros(8, np.float32), out, 0, 0, 64)
    assert np.all(out == 20.0)
    asm = tile.inspect_asm(tile.signatures[0])
    assert re.search(r"vfmadd\w*ps\s[^\n]*%zmm", asm) and not re.search(r"vfmadd\w*ps\s[^\n]*%ymm", asm)


@pytest.mark.parametrize("C", [1, 3, 4, 20, 33, 400])
@pytest.mark.parametrize("rows", [1, 7, 8, 13, 30, 128])
@pytest.mark.parametrize("R", [4, 20, 32, 36, 48, 100, 128])
def test_wide_products_equal_the_plain_loop_bit_for_bit(C, rows, R):
    """rows_times_wide (the row-by-row path's products where WIDE_TILES holds) over shapes that leave
    rows past the last 8 and lanes past the last 32 to the narrow tiles. A has padding rows past the C
    terms (active's length), as hT = x^T W^T reads the sampler's padded x."""
    g = np.random.default_rng(C * 1000 + rows * 10 + R)
    A = g.standard_normal((C + 3, rows)).astype(np.float32)
    X = g.standard_normal((C + 3, R)).astype(np.float32)
    X[:, g.random(R) < 0.3] = 0.0
    active = g.random(C) < 0.7
    init = g.standard_normal(rows).astype(np.float32)
    want = np.empty((rows, R), np.float32)
    plain(np.ascontiguousarray(A[:C]), X, active, init, want)
    with cpu_train.slp_vectorize():
        out = np.full((rows + 2, R), np.nan, np.float32)  # rows past A's are left alone (dz's padding)
        cpu_products.rows_times_wide(A, X, active, init, out)
    assert np.array_equal(out[:rows], want)
    assert np.isnan(out[rows:]).all()


@pytest.mark.parametrize("n_pad", [4, 8, 12, 20, 36, 400])
@pytest.mark.parametrize("mp", [16, 32, 48, 64])
@pytest.mark.parametrize("R", [4, 20, 128])
def test_wide_accumulation_equals_the_narrow_tiles_bit_for_bit(n_pad, mp, R):
    g = np.random.default_rng(n_pad * 100 + mp + R)
    X = g.standard_normal((n_pad, R)).astype(np.float32)
    YT = g.standard_normal((R, mp)).astype(np.float32)
    acc0 = g.standard_normal((n_pad, mp)).astype(np.float32)
    got, ref = acc0.copy(), acc0.copy()
    with cpu_train.slp_vectorize():
        cpu_products._accumulate_wide(got, X, YT)
        cpu_products._accumulate_tiles(ref, X, YT, 8, 0, 0)
    assert np.array_equal(got, ref)
    exact = acc0.astype(np.float64) + X.astype(np.float64) @ YT.astype(np.float64)
    assert np.allclose(got, exact, rtol=1e-5, atol=1e-4)
