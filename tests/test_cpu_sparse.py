"""The CPU kernels' sparse products (kernels/cpu_sparse.py, kernels/cpu_simd.py): bit for bit the dense
register tiles' sums on the same inputs, and whole steps through them equal to float64."""
import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from engine import ModelSpec, TrainSpec, cpu_backend, fused, reference, rng  # noqa: E402
from kernels import cpu_sparse, cpu_train  # noqa: E402
from kernels.cpu_simd import cttz, nonzero_bits64, popcount  # noqa: E402
from numba import njit  # noqa: E402


@njit
def _bit_ops(words, out):
    for i in range(words.shape[0]):
        out[i, 0] = cttz(words[i]) if words[i] else -1
        out[i, 1] = popcount(words[i])


@njit
def _bits64(X, out):
    for c in range(X.shape[0]):
        for w in range(X.shape[1] // 64):
            out[c, w] = nonzero_bits64(X, c, 64 * w)


def test_bit_intrinsics_match_python():
    words = np.random.default_rng(0).integers(0, 2**63, 500, dtype=np.uint64) >> np.arange(500, dtype=np.uint64) % 64
    words[:3] = (0, 1, 2**63)
    out = np.zeros((500, 2), np.int64)
    _bit_ops(words, out)
    for w, (tz, pc) in zip(words.tolist(), out.tolist()):
        assert pc == bin(w).count("1")
        assert tz == ((w & -w).bit_length() - 1 if w else -1)


def test_nonzero_bits64_marks_exactly_the_nonzero_lanes():
    g = np.random.default_rng(1)
    X = (g.random((5, 128)) < 0.3) * g.standard_normal((5, 128))
    X[0, 7] = -0.0  # a negative zero is zero
    X = X.astype(np.float32)
    out = np.zeros((5, 2), np.uint64)
    _bits64(X, out)
    for c in range(5):
        bits = [(int(out[c, l // 64]) >> (l % 64)) & 1 for l in range(128)]
        assert bits == [int(v != 0) for v in X[c]]


def sparse_inputs(n, m, R, density, seed):
    g = np.random.default_rng(seed)
    n_pad = 4 * ((n + 3) // 4)
    X = np.zeros((n_pad, R), np.float32)
    X[:n] = (g.random((n, R)) < density) * g.uniform(-1, 1, (n, R))
    mp = 16 * ((m + 15) // 16)
    A = np.zeros((n, mp), np.float32)
    A[:, :m] = g.standard_normal((n, m))
    return X, A, mp, g


CASES = [(n, m, R, d) for n, m in ((8, 1), (33, 7), (400, 30), (101, 40)) for R in (64, 128)
         for d in (0.0, 0.01, 0.2, 1.0)]


@pytest.mark.parametrize("n, m, R, density", CASES)
def test_scatter_product_is_the_dense_tiles_sum_bit_for_bit(n, m, R, density):
    X, A, mp, g = sparse_inputs(n, m, R, density, n + m + R)
    init = np.zeros(mp, np.float32)
    init[:m] = g.standard_normal(m)
    dense = np.empty((m, R), np.float32)
    cpu_train.rows_times(np.ascontiguousarray(A[:, :m]), X, (X[:n] != 0).any(1), init[:m].copy(), dense)
    masks = np.zeros((n, R // 64), np.uint64)
    assert cpu_sparse.nonzero_masks(X, n, masks) == np.count_nonzero(X[:n])
    outT = np.full((R, mp), np.nan, np.float32)
    lists, counts = np.full((R, n), -1, np.int32), np.zeros(R, np.int32)
    cpu_sparse.scatter_product(A, X, n, masks, init, outT, lists, counts)
    assert np.array_equal(outT[:, :m].T, dense)
    assert not outT[:, m:].any()  # the padding neurons stay zero
    for lane in range(R):
        assert lists[lane, :counts[lane]].tolist() == np.flatnonzero(X[:n, lane]).tolist()
    # and both are the float64 product to float32 rounding
    ref = init[:m, None].astype(np.float64) + A[:, :m].T.astype(np.float64) @ X[:n].astype(np.float64)
    assert np.allclose(dense, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, m, R, density", CASES)
def test_scatter_accumulate_is_the_dense_tiles_sum_bit_for_bit(n, m, R, density):
    X, _, mp, g = sparse_inputs(n, m, R, density, 7 * n + m + R)
    YT = np.zeros((R, mp), np.float32)
    YT[:, :m] = g.standard_normal((R, m))
    start = np.zeros((X.shape[0], mp), np.float32)
    start[:n, :m] = g.standard_normal((n, m))
    dense, sparse = start.copy(), start.copy()
    cpu_train._accumulate_dense(dense, X, YT)
    masks = np.zeros((n, R // 64), np.uint64)
    cpu_sparse.nonzero_masks(X, n, masks)
    lists, counts = np.zeros((R, n), np.int32), np.zeros(R, np.int32)
    cpu_sparse.scatter_product(np.zeros((n, mp), np.float32), X, n, masks, np.zeros(mp, np.float32),
                               np.zeros((R, mp), np.float32), lists, counts)
    cpu_sparse.scatter_accumulate(sparse, X, lists, counts, YT)
    assert np.array_equal(sparse, dense)
    ref = start.astype(np.float64) + X.astype(np.float64) @ YT.astype(np.float64)
    assert np.allclose(dense, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("relu_hidden", [False, True])
def test_backward_rows_is_the_same_dense_or_sparse(relu_hidden):
    """The tied block backward with x and dz each dense or sparse: the same dh and gradient, bit for bit."""
    n, m, R = 37, 20, 128
    X, WTp, mp, g = sparse_inputs(n, m, R, 0.05, 3)
    dz, _, _, _ = sparse_inputs(n, m, R, 0.08, 4)
    WT = np.ascontiguousarray(WTp[:, :m])
    h = g.standard_normal((m, R)).astype(np.float32)
    if relu_hidden:
        h = np.maximum(h, 0)
    hT0 = np.zeros((R, mp), np.float32)
    hT0[:, :m] = h.T
    acc0 = g.standard_normal((X.shape[0], mp)).astype(np.float32)
    acc0[:, m:] = 0
    results = []
    for sx in (False, True):
        for sdz in (False, True):
            # hT comes from the forward pass where it is sparse or WIDE_TILES holds (else _backward_rows makes it)
            acc, hT, dh, dhT = acc0.copy(), hT0.copy() if sx or cpu_train.WIDE_TILES else np.zeros((R, mp), np.float32), \
                np.zeros((m, R), np.float32), np.zeros((R, mp), np.float32)
            masks = np.zeros((n, R // 64), np.uint64)
            x_terms, dz_terms = np.zeros((R, n), np.int32), np.zeros((R, n), np.int32)
            x_count, dz_count = np.zeros(R, np.int32), np.zeros(R, np.int32)
            if sx:  # the forward's sparse h product lists x's terms
                cpu_sparse.nonzero_masks(X, n, masks)
                cpu_sparse.scatter_product(WTp, X, n, masks, np.zeros(mp, np.float32), np.zeros((R, mp), np.float32),
                                           x_terms, x_count)
            if sdz:
                cpu_sparse.nonzero_masks(dz, n, masks)
            cpu_train._backward_rows(acc, WT, WTp, X, h, hT, dz, (dz[:n] != 0).any(1), dh, dhT,
                                     np.zeros(m, np.float32), np.zeros(mp, np.float32), np.zeros(R, np.float32),
                                     relu_hidden, sx, sdz, masks, x_terms, x_count, dz_terms, dz_count)
            results.append((acc, dhT))
    for acc, dhT in results[1:]:
        assert np.array_equal(acc, results[0][0]) and np.array_equal(dhT, results[0][1])
    dh64 = WT.T.astype(np.float64) @ dz[:n].astype(np.float64)
    if relu_hidden:
        dh64 = dh64 * (h > 0)
    ref = acc0.astype(np.float64)
    ref[:n, :m] += dz[:n].astype(np.float64) @ h.T.astype(np.float64) + X[:n].astype(np.float64) @ dh64.T
    assert np.allclose(results[0][0], ref, rtol=1e-5, atol=1e-5)


def block_densities(x, R=128):
    """The nonzero share of each block of R batch rows of x (batch, n)."""
    return [float((x[r0:r0 + R] != 0).float().mean()) for r0 in range(0, x.shape[0], R)]


@pytest.mark.parametrize("n, m", [(400, 30), (403, 7)])
@pytest.mark.parametrize("variant", ["relu-output", "relu-hidden"])
@pytest.mark.parametrize("bias", [0.0, -0.05])
def test_sparse_steps_of_big_models_match_float64(n, m, variant, bias):
    """Density 0.01 puts every block's x under the sparse threshold; a negative bias puts dz there too
    (ReLU: dz = 0 wherever z <= 0). One step's gradients and parameters against float64 (both asserted
    preconditions, so the sparse products are what ran)."""
    model = ModelSpec(n, m, variant)
    assert cpu_train.uses_rowwise(n, m, cpu_train.lanes_for(n, m))
    K, B = 2, 300
    p = torch.full((K, n), 0.01)
    imp = (torch.rand(K, n, generator=torch.Generator().manual_seed(n)) + 0.2).float()
    train = TrainSpec(steps=3, batch_size=B, lr=1e-2, optimizer="adamw", weight_decay=0.05, seed=5)
    state = fused.new_state(model, train, 0, K)
    state["b"][:] = bias
    before = {k: v.clone() for k, v in state.items()}
    hist = torch.zeros(1, K)
    cpu_backend.run_steps(model, train, state, p, imp, 0, 0, 1, torch.zeros(K), hist, history_every=1)
    u = rng.uniforms(train.seed, torch.arange(K), 0, B, n)
    x = reference.features_from_uniform(u, p)
    d = {k: v.double() for k, v in before.items()}
    loss, dW, db = reference.loss_and_grads(d["W"], d["b"], x.double(), imp.double(), model.variant)
    for k in range(K):
        assert max(block_densities(x[k])) <= cpu_sparse.SPARSE_MAX_DENSITY
    if bias < 0:
        h = torch.einsum("kmn,kbn->kbm", d["W"], x.double())
        if variant == "relu-hidden":
            h = h.clamp_min(0)
        z = torch.einsum("kmn,kbm->kbn", d["W"], h) + d["b"][:, None]
        assert (z > 0).any()  # some gradient flows
        for k in range(K):
            assert max(block_densities((z[k] > 0).float())) <= cpu_sparse.SPARSE_MAX_DENSITY
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(hist[0], loss) < 1e-5
    assert rel(state["mW"] / (1 - train.beta1), dW) < 1e-5
    assert rel(state["mb"] / (1 - train.beta1), db) < 1e-5


@pytest.mark.parametrize("density", [0.01, 0.3])
def test_sparse_steps_of_the_untied_model_match_float64(density):
    """abs-computation, n=101, m=23 (row by row), the output bias set so that ~3% of z is positive: dz
    sparse, x sparse (density 0.01) or dense (0.3); one step's gradients of W1, b1, W2, b2 against
    float64 autograd."""
    n, m, K, B = 101, 23, 2, 300
    model = ModelSpec(n, m, "abs-computation")
    tr = TrainSpec(steps=3, batch_size=B, lr=1e-2, optimizer="adamw", weight_decay=0.05, seed=6)
    p = torch.full((K, n), density)
    imp = torch.ones(K, n)
    state = fused.new_state(model, tr, 0, K)
    state["W2"] /= reference.W2_INIT_SCALE
    u = rng.uniforms(tr.seed, torch.arange(K), 0, B, n)
    x = reference.features_from_uniform(u, p, signed=True).double()
    h = (torch.einsum("kmn,kbn->kbm", state["W1"].double(), x) + state["b1"].double()[:, None]).clamp_min(0)
    z = torch.einsum("knm,kbm->kbn", state["W2"].double(), h)
    state["b2"][:] = -float(z.quantile(0.97))
    z = z + state["b2"].double()[:, None]
    assert (z > 0).any()
    for k in range(K):
        assert (max(block_densities(x[k])) <= cpu_sparse.SPARSE_MAX_DENSITY) == (density < 0.1)
        assert max(block_densities((z[k] > 0).float())) <= cpu_sparse.SPARSE_MAX_DENSITY
    before = {k: v.double().clone() for k, v in state.items()}
    hist = torch.zeros(1, K)
    cpu_backend.run_steps(model, tr, state, p, imp, 0, 0, 1, torch.zeros(K), hist, 1)
    loss, grads = reference.params_loss_and_grads({k: before[k] for k in ("W1", "b1", "W2", "b2")}, x,
                                                  imp.double(), model)
    assert torch.allclose(hist[0].double(), loss, rtol=1e-5)
    for k, dk in grads.items():
        got = state["m" + k].double() / (1 - tr.beta1)
        assert torch.allclose(got, dk, rtol=1e-4, atol=1e-7), k
