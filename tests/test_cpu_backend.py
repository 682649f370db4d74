"""The fused CPU backend (kernels/cpu_rng.py, kernels/cpu_train.py, engine/cpu_backend.py) against
the float64 reference on identical inputs: the batches it draws, one-step gradients and
parameters, multi-step trajectories, determinism, resume, and agreement with the triton kernels."""
import math

import numpy as np
import pytest
import torch

pytest.importorskip("numba")
from numba import njit  # noqa: E402

from engine import DataSpec, ModelSpec, TrainSpec, backends, cpu_backend, fused, reference, rng, train  # noqa: E402
from engine.checkpoint import Checkpoint  # noqa: E402
from kernels import cpu_rng, cpu_train  # noqa: E402


def rel(a, b):
    """Norm-wise relative error of a against the float64 b."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def tup(result):
    """A tied model's train_chunk result ({"W", "b"}, loss, history) as (W, b, loss, history)."""
    params, loss, hist = result
    return params["W"], params["b"], loss, hist


def exact_batch(p, batch, step, seed, first):
    """The batch (K, batch, n) float32 every backend draws at ``step``: engine/rng.py's twin."""
    K, n = p.shape
    u = rng.uniforms(seed, torch.arange(first, first + K), step, batch, n)
    return reference.features_from_uniform(u, torch.as_tensor(p, dtype=torch.float32))


def problem(n, m, K=3, seed=0):
    g = torch.Generator().manual_seed(1000 * n + m + seed)
    p = (torch.rand(K, n, generator=g) * 0.8 + 0.1).float()
    imp = (torch.rand(K, n, generator=g) + 0.2).float()
    return p, imp


@pytest.mark.parametrize("n, B", [(1, 37), (2, 37), (3, 37), (4, 16), (5, 37), (20, 19), (33, 5), (1, 150),
                                  (2, 150)])
def test_sampler_is_bit_exact_with_the_torch_philox_twin(n, B):
    seed, step, inst = 2**40 + 5, 11, 1003
    p, _ = problem(n, 1, K=1)
    x = cpu_rng.sample(p[0].numpy(), B, step, inst, *cpu_rng.seed_words(seed))
    assert np.array_equal(x, exact_batch(p, B, step, seed, inst)[0].numpy())


# _draw_block with its 16-lane draws on (PHILOX_16, on Intel AVX-512 hosts only in the build): their
# call sites checked on every host (LLVM lowers the intrinsic's vectors to whatever the host has).
_draw_block_16 = njit(cpu_train._specialise(cpu_train._draw_block.py_func, "_draw_block_16", PHILOX_16=True))


@njit
def _training_draws(draw, p, batch, step, inst, k0, k1, lanes):
    """The training loop's block draws (draw: _draw_block or a copy), written back in (batch, n) row
    order through lane_row."""
    n = p.shape[0]
    pk, inv = cpu_train.padded_rule(p)
    x = np.zeros((pk.shape[0], lanes), np.float32)
    act = np.zeros(n, np.bool_)
    out = np.full((batch, n), -1.0, np.float32)
    for r0 in range(0, batch, lanes):
        draw(x, act, pk, inv, r0, batch, n, np.uint64(step), np.uint64(inst), np.uint64(0), k0, k1)
        for l in range(lanes):
            row = cpu_train.lane_row(l, r0, lanes, n)
            for f in range(n):
                if row < batch:
                    out[row, f] = x[f, l]
                elif x[f, l] != 0.0:
                    out[0, 0] = np.nan  # a lane past the batch must hold zeros
            for f in range(n):
                if act[f] != np.any(x[f] != 0.0):
                    out[0, 0] = np.nan
    return out


@pytest.mark.parametrize("n, B, lanes", [(1, 37, 16), (1, 64, 16), (2, 37, 16), (2, 150, 64), (3, 37, 16),
                                         (5, 16, 16), (20, 19, 32), (33, 70, 64),
                                         # 16-lane draws (PHILOX_16) and the lanes past them: n = 1 draws a
                                         # quarter of the lanes per call, n = 2 a half
                                         (1, 300, 128), (1, 203, 80), (2, 300, 128), (2, 99, 48), (3, 70, 20),
                                         (7, 300, 128), (400, 130, 128)])
@pytest.mark.parametrize("sixteen", [False, True])
def test_training_loop_draws_the_samplers_batch_bit_for_bit(n, B, lanes, sixteen):
    seed, step, inst = 2**33 + 7, 5, 11
    p, _ = problem(n, 1, K=1)
    draw = _draw_block_16 if sixteen else cpu_train._draw_block
    got = _training_draws(draw, p[0].numpy(), B, step, inst, *cpu_rng.seed_words(seed), lanes)
    assert np.array_equal(got, exact_batch(p, B, step, seed, inst)[0].numpy())


@njit
def _sixteen_calls(x, p, inv, rows, cols, base, stride, c1, c2, c3, k0, k1):
    cpu_rng.philox_features16(x, p, inv, rows[0], rows[1], rows[2], rows[3], cols[0], cols[1], cols[2], cols[3],
                              base, stride, c1, c2, c3, k0, k1)


@njit
def _sixteen_scalar(x, p, inv, rows, cols, base, stride, c1, c2, c3, k0, k1):
    for i in range(16):
        o = cpu_rng.philox((base + np.uint64(i * stride)) & cpu_rng.M32, c1, c2, c3, k0, k1)
        for w in range(4):
            x[rows[w], cols[w] + i] = cpu_rng.feature(o[w], p[rows[w]], inv[rows[w]])


@pytest.mark.parametrize("base, stride", [(0, 1), (12345, 7), (2**32 - 20, 3), (2**32 - 1, 101), (2**31, 2**20 + 1),
                                          (2**32 - 1, 2**31 + 3)])
@pytest.mark.parametrize("extreme", [False, True])  # True: every counter and key word 2^32 - 1
def test_sixteen_philox_calls_at_once_are_the_scalar_calls_bit_for_bit(base, stride, extreme):
    """kernels.cpu_rng.philox_features16 (the 16-lane sampler of AVX-512 hosts; LLVM lowers its vectors on
    any x86 host, so this runs everywhere) against philox + feature, counters wrapping past 2^32 included,
    into rows and lanes that differ per output word, p from 0 (never active) to 1."""
    g = np.random.default_rng(base % 1000 + stride)
    p = np.array([0.0, 1.0, 0.03, 0.5, 0.9, 0.25], np.float32)
    inv = np.where(p > 0, np.float32(1.0) / np.maximum(p, np.float32(1e-30)), 0).astype(np.float32)
    rows, cols = np.array([1, 0, 4, 2]), np.array([0, 16, 5, 40])
    k0, k1 = cpu_rng.seed_words(int(g.integers(2**63)))
    c1, c2, c3 = np.uint64(g.integers(2**32)), np.uint64(g.integers(2**32)), np.uint64(3)
    if extreme:
        k0 = k1 = c1 = c2 = c3 = np.uint64(2**32 - 1)
    got, want = np.full((6, 64), -1.0, np.float32), np.full((6, 64), -1.0, np.float32)
    _sixteen_calls(got, p, inv, rows, cols, np.uint64(base), stride, c1, c2, c3, k0, k1)
    _sixteen_scalar(want, p, inv, rows, cols, np.uint64(base), stride, c1, c2, c3, k0, k1)
    assert np.array_equal(got, want)
    assert (got[1, :16] > 0).all() and (got[0, 16:32] == 0).all()  # p = 1: every word active; p = 0: none


def one_step(model, train, p, imp, first=5, lanes=None):
    """(state before, state after, loss) of one fused CPU step on K instances."""
    K = p.shape[0]
    state = fused.new_state(model, train, first, K)
    before = {k: v.clone() for k, v in state.items()}
    loss = torch.zeros(K)
    hist = torch.zeros(1, K)
    cpu_backend.run_steps(model, train, state, p, imp, first, 0, 1, loss, hist, history_every=1, lanes=lanes)
    return before, state, hist[0]


def reference_step(model, train, before, x, imp, steps_done=0):
    """The float64 reference's step from ``before`` on batch x: (loss, dW, db, W, b after)."""
    d = {k: v.double().clone() for k, v in before.items()}
    loss, dW, db = reference.loss_and_grads(d["W"], d["b"], x.double(), imp.double(), model.variant)
    states = [reference.AdamState(d["mW"], d["vW"]), reference.AdamState(d["mb"], d["vb"])]
    reference.train_step(d["W"], d["b"], x.double(), imp.double(), model.variant, states, steps_done + 1,
                         train.lr_at(steps_done), train)
    return loss, dW, db, d["W"], d["b"]


SHAPES = [(n, m) for n in (1, 2, 3, 5, 20, 33, 400) for m in (1, 2, 5, 7, 30)]


@pytest.mark.parametrize("n, m", [(2, 1), (20, 5), (400, 30)])  # per-lane and row-by-row paths
def test_second_moment_after_one_step_is_one_minus_beta2_times_the_squared_gradient(n, m):
    """v = (1 - beta2) g^2 to float32 rounding: 1 - beta2 must be rounded once from float64. Computed in
    float32 from float32(0.999) it is 1.3e-5 off 0.001 (compiled Triton kernels did that; the cpu
    kernels mirrored them)."""
    model = ModelSpec(n, m)
    p, imp = problem(n, m)
    train = TrainSpec(steps=3, batch_size=37, lr=1e-2, seed=3)
    before, after, _ = one_step(model, train, p, imp)
    _, dW, db, _, _ = reference_step(model, train, before, exact_batch(p, 37, 0, train.seed, 5), imp)
    assert rel(after["vW"], (1 - train.beta2) * dW ** 2) < 2e-6
    assert rel(after["vb"], (1 - train.beta2) * db ** 2) < 2e-6


@pytest.mark.parametrize("n, m", SHAPES)
@pytest.mark.parametrize("variant", ["relu-output", "linear", "relu-hidden"])
def test_one_step_matches_float64_on_the_exact_batch(n, m, variant):
    """Gradients, loss and updated parameters of one step, for both optimizers and every schedule."""
    model = ModelSpec(n, m, variant)
    p, imp = problem(n, m)
    B = 37 if n < 100 else 21
    for optimizer, schedule in (("adamw", "constant"), ("adam", "linear"), ("adamw", "cosine")):
        train = TrainSpec(steps=3, batch_size=B, lr=1e-2, optimizer=optimizer, schedule=schedule, weight_decay=0.05,
                          seed=3)
        before, after, loss = one_step(model, train, p, imp)
        x = exact_batch(p, B, 0, train.seed, 5)
        ref_loss, dW, db, W1, b1 = reference_step(model, train, before, x, imp)
        grad_W = after["mW"].double() / (1 - train.beta1)
        grad_b = after["mb"].double() / (1 - train.beta1)
        if optimizer == "adam":  # Adam's moment holds the gradient plus wd * param
            dW, db = dW + train.weight_decay * before["W"].double(), db + train.weight_decay * before["b"].double()
        assert rel(grad_W, dW) < 1e-5, (optimizer, rel(grad_W, dW))
        assert rel(grad_b, db) < 1e-5
        assert rel(loss, ref_loss) < 1e-5
        assert rel(after["W"], W1) < 1e-5 and rel(after["b"], b1) < 1e-5


@pytest.mark.parametrize("variant", ["relu-output", "relu-hidden"])
def test_big_models_sum_their_gradient_row_by_row_and_match_float64(variant):
    """n=403, m=7 with 128 lanes is past ROWWISE_BYTES: _backward_rows sums the weight gradient over
    several blocks (the last one partial) of a sparse batch; gradients and parameters equal float64."""
    n, m = 403, 7
    assert cpu_train.uses_rowwise(n, m, cpu_train.lanes_for(n, m))
    model = ModelSpec(n, m, variant)
    p, imp = problem(n, m)
    train = TrainSpec(steps=3, batch_size=300, lr=1e-2, optimizer="adamw", weight_decay=0.05, seed=4)
    before, after, loss = one_step(model, train, p, imp)
    x = exact_batch(p, 300, 0, train.seed, 5)
    ref_loss, dW, db, W1, b1 = reference_step(model, train, before, x, imp)
    assert rel(after["mW"].double() / (1 - train.beta1), dW) < 1e-5
    assert rel(after["mb"].double() / (1 - train.beta1), db) < 1e-5
    assert rel(loss, ref_loss) < 1e-5 and rel(after["W"], W1) < 1e-5 and rel(after["b"], b1) < 1e-5


@pytest.mark.parametrize("n, m, optimizer, schedule", [(2, 1, "adamw", "constant"), (3, 2, "adam", "cosine"),
                                                       (20, 5, "adamw", "linear"), (33, 7, "adam", "constant"),
                                                       (1, 1, "adamw", "cosine")])
@pytest.mark.parametrize("variant", ["relu-output", "relu-hidden"])
def test_trajectory_tracks_the_float64_reference_fed_the_same_batches(n, m, optimizer, schedule, variant):
    steps, B, first = 40, 33, 2
    model = ModelSpec(n, m, variant)
    train = TrainSpec(steps=steps, batch_size=B, lr=1e-2, optimizer=optimizer, schedule=schedule, seed=9)
    p, imp = problem(n, m)
    state = fused.new_state(model, train, first, p.shape[0])
    ref = {k: v.double().clone() for k, v in state.items()}
    hist = torch.zeros(steps, p.shape[0])
    cpu_backend.run_steps(model, train, state, p, imp, first, 0, steps, torch.zeros(p.shape[0]), hist, 1)
    states = [reference.AdamState(ref["mW"], ref["vW"]), reference.AdamState(ref["mb"], ref["vb"])]
    ref_hist = []
    for t in range(steps):
        x = exact_batch(p, B, t, train.seed, first).double()
        ref_hist.append(reference.train_step(ref["W"], ref["b"], x, imp.double(), model.variant, states, t + 1,
                                             train.lr_at(t), train))
    assert rel(state["W"], ref["W"]) < 1e-4 and rel(state["b"], ref["b"]) < 1e-4
    assert rel(hist, torch.stack(ref_hist)) < 1e-4


@pytest.mark.parametrize("n, m, widths", [(5, 2, (16, 32, 128)), (100, 50, (64, 128))])
def test_partial_last_block_and_every_lane_width_agree(n, m, widths):
    """Lanes (rows per block) change only the order of float32 sums: 16, 32 and 128 lanes per lane, 64
    and 128 row by row (what lanes_for gives a batch of at most 64 there), and a batch that leaves a
    partial last block, all give the float64 gradient."""
    assert all(cpu_train.uses_rowwise(n, m, lanes) == (n == 100) for lanes in widths)
    model = ModelSpec(n, m)
    p, imp = problem(n, m)
    train = TrainSpec(steps=2, batch_size=147)
    x = exact_batch(p, 147, 0, train.seed, 5)
    for lanes in widths:
        before, after, _ = one_step(model, train, p, imp, lanes=lanes)
        _, dW, _, _, _ = reference_step(model, train, before, x, imp)
        assert rel(after["mW"].double() / (1 - train.beta1), dW) < 1e-5


def test_results_do_not_depend_on_threads_chunks_or_segments():
    model = ModelSpec(3, 2)
    data = DataSpec(np.tile(np.linspace(0.05, 0.9, 7)[:, None], (1, 3)), np.array([1.0, 0.8, 0.5]))
    tr = TrainSpec(steps=60, batch_size=40, lr=1e-2)
    runs = [train(model, data, tr, backend="cpu", progress=False, threads=th, chunk_size=cs, history_every=10)
            for th, cs in ((1, None), (2, None), (2, 3), (1, 1))]
    for r in runs[1:]:
        assert torch.equal(r.W, runs[0].W) and torch.equal(r.b, runs[0].b) and torch.equal(r.loss, runs[0].loss)
        assert torch.equal(r.history, runs[0].history)
    p, imp = data.feature_probability, data.importance
    seg = [tup(cpu_backend.train_chunk(model, p, imp, tr, 0, steps_per_launch=s, history_every=10)) for s in (7, 60)]
    assert all(torch.equal(a, b) for a, b in zip(seg[0], seg[1]))
    assert torch.equal(seg[0][0], runs[0].W)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("history_every", [0, 7])
def test_resume_from_a_mid_chunk_checkpoint_gives_the_uninterrupted_result(tmp_path, history_every):
    model = ModelSpec(3, 2)
    p, imp = np.full((4, 3), 0.3), np.ones((4, 3))
    tr = TrainSpec(steps=50, batch_size=16, lr=1e-2)
    whole = tup(cpu_backend.train_chunk(model, p, imp, tr, 5, history_every=history_every, steps_per_launch=4))
    ckpt = Checkpoint(tmp_path / "c.safetensors", every_s=0)
    calls = []

    def stop_at_5th_segment(k):
        calls.append(k)
        if len(calls) == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        cpu_backend.train_chunk(model, p, imp, tr, 5, history_every=history_every, on_step=stop_at_5th_segment,
                                checkpoint=ckpt, steps_per_launch=4)
    assert int(ckpt.load()["next_step"]) == 20
    done = []
    resumed = tup(cpu_backend.train_chunk(model, p, imp, tr, 5, history_every=history_every, on_step=done.append,
                                          checkpoint=Checkpoint(tmp_path / "c.safetensors", every_s=1e9),
                                          steps_per_launch=9))
    assert sum(done) == tr.steps
    for a, b in zip(whole, resumed):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("n, m", [(1, 1), (2, 1), (3, 2), (20, 5), (33, 7)])
@pytest.mark.parametrize("variant", ["relu-output", "linear"])
def test_cpu_and_interpreted_triton_train_the_same_batches(n, m, variant):
    """Same init, same Philox batches: after a few steps the cpu and triton backends agree to
    float32 rounding (the triton kernels run under TRITON_INTERPRET=1 here)."""
    pytest.importorskip("triton")
    from engine import triton_backend as tb

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ModelSpec(n, m, variant)
    tr = TrainSpec(steps=4, batch_size=24, lr=1e-2, seed=4)
    p, imp = problem(n, m, K=2)
    st_cpu = fused.new_state(model, tr, 3, 2)
    st_gpu = {k: v.to(device) for k, v in fused.new_state(model, tr, 3, 2).items()}
    cpu_backend.run_steps(model, tr, st_cpu, p, imp, 3, 0, 4, torch.zeros(2))
    tb.run_steps(model, tr, st_gpu, p.to(device), imp.to(device), 3, 0, 4, torch.zeros(2, device=device))
    for k in st_cpu:
        assert rel(st_cpu[k], st_gpu[k].cpu()) < 2e-5, k


def test_auto_picks_cpu_without_a_gpu_and_torch_without_numba(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("GPU present: auto picks triton")
    assert backends.resolve("auto") == "cpu"
    assert backends.resolve("cpu") == "cpu"
    monkeypatch.setattr(backends, "cpu_usable", lambda: False)
    assert backends.resolve("auto") == "torch"
    with pytest.raises(backends.BackendUnavailable, match="numba"):
        backends.resolve("cpu")


def test_cpu_backend_learns_like_the_torch_backend():
    """Different batches (torch's generator vs Philox), the same optimum: 5->2 models at density 1
    keep the two most important features, and the final losses agree within a few percent."""
    model = ModelSpec(5, 2)
    data = DataSpec(np.ones((4, 5)), 0.8 ** np.arange(5))
    tr = TrainSpec(steps=1500, batch_size=256, lr=1e-2)
    cpu = train(model, data, tr, backend="cpu", progress=False)
    ref = train(model, data, tr, backend="torch", progress=False)
    norms = torch.linalg.vector_norm(cpu.W, dim=1)
    assert (norms[:, :2] > 0.8).all() and (norms[:, 3:] < 0.3).all()
    assert math.isclose(cpu.loss.mean().item(), ref.loss.mean().item(), rel_tol=0.05)


def test_big_models_keep_128_lanes_and_only_few_feature_models_keep_per_lane_accumulators():
    from kernels import cpu_train_untied
    assert cpu_train.lanes_for(1000, 100) == 128 and cpu_train.uses_rowwise(1000, 100, 128)  # row by row
    assert cpu_train_untied.lanes_for(400, 30) == 128
    assert not cpu_train.uses_rowwise(2, 1100, 128)  # n < 8: per lane, even past ROWWISE_BYTES
    assert cpu_train.lanes_for(2, 20_000) < 128  # per-lane accumulators within LANE_BUDGET_BYTES
    assert 4 * 2 * 20_000 * cpu_train.lanes_for(2, 20_000) <= cpu_train.LANE_BUDGET_BYTES



def test_a_batch_smaller_than_a_block_trains_in_fewer_lanes(monkeypatch):
    """lanes_for(n, m, batch) (cpu_train.batch_fit): per lane, the whole groups of 16 lanes that hold a smaller
    batch (batch_lanes); row by row, 64 lanes for a batch of at most 64 where the model stays row by row;
    never more than without the batch. train_chunk trains at those lanes, with the numbers of 128 lanes (one
    block either way: the lanes past the batch add zeros to the lane sums)."""
    from kernels import cpu_train_untied
    assert [cpu_train.batch_lanes(B) for B in (1, 3, 16, 17, 65, 127, 128)] == [16, 16, 16, 32, 80, 128, 128]
    for kernel in (cpu_train, cpu_train_untied):
        for n, m in [(100, 2), (20, 5), (2, 20_000)]:  # per lane
            for B in (1, 3, 65, 127, 128, 1000):
                assert kernel.lanes_for(n, m, B) == min(kernel.lanes_for(n, m), cpu_train.batch_lanes(B))
        for n, m in [(1000, 100), (400, 30)]:  # row by row
            assert [kernel.lanes_for(n, m, B) for B in (1, 64, 65, 1000)] == [64, 64, 128, 128]
        # per lane at 64 lanes (accumulators under ROWWISE_BYTES), row by row at 128: stays at 128
        assert kernel.lanes_for(64, 40, 64) == kernel.lanes_for(64, 40, 100) == 128
    assert cpu_backend.kernel_path(ModelSpec(20, 5), batch=50) == "lanes"  # the flat tiny copy: 128 lanes only
    assert cpu_backend.kernel_path(ModelSpec(20, 5), batch=1024) == "tiny-20x5"
    assert cpu_backend.block_lanes(ModelSpec(7, 3, "abs-computation"), 40) == 48
    model, tr = ModelSpec(7, 3), TrainSpec(steps=6, batch_size=20, lr=1e-2)
    p, imp = torch.full((3, 7), 0.3), torch.ones(3, 7)
    at128 = tup(cpu_backend.train_chunk(model, p, imp, tr, 0, lanes=128))
    used, run_steps = [], cpu_backend.run_steps
    monkeypatch.setattr(cpu_backend, "run_steps",
                        lambda *a, lanes, **kw: used.append(lanes) or run_steps(*a, lanes=lanes, **kw))
    auto = tup(cpu_backend.train_chunk(model, p, imp, tr, 0))
    assert set(used) == {32} and all(torch.equal(a, b) for a, b in zip(auto[:3], at128[:3]))


def test_the_numba_cache_follows_every_cpu_kernel_source(tmp_path):
    """numba's own cache key ignores the files a kernel inlines from: kernels/__init__.py names the
    cache directory by a hash of every cpu_*.py, so editing a shared helper means a fresh cache."""
    import shutil
    from pathlib import Path

    import kernels
    src = Path(kernels.__file__).parent
    for f in src.glob("cpu_*.py"):
        shutil.copy(f, tmp_path / f.name)
    before = kernels._numba_cache_dir(tmp_path)
    assert before == kernels._numba_cache_dir(tmp_path)
    with open(tmp_path / "cpu_train.py", "a") as fh:
        fh.write("\n# an edit to the helpers cpu_train_untied.py inlines\n")
    assert kernels._numba_cache_dir(tmp_path) != before


def test_a_child_process_recomputes_an_inherited_cache_dir_but_keeps_the_users():
    """A child inherits the NUMBA_CACHE_DIR its parent's ``import kernels`` set; it must not treat it as
    the user's choice (its sources may have changed since: stale machine code). A user's own stays."""
    import os
    import subprocess
    import sys

    import kernels
    probe = "import os, kernels; print(os.environ['NUMBA_CACHE_DIR'])"
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "SUPBENCH_NUMBA_CACHE_DIR")}
    old_dir = "/tmp/numba-0000000000000000"
    stale = {**env, "NUMBA_CACHE_DIR": old_dir, "SUPBENCH_NUMBA_CACHE_DIR": old_dir}
    out = subprocess.run([sys.executable, "-c", probe], env=stale, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == kernels._numba_cache_dir()
    users = {**env, "NUMBA_CACHE_DIR": "/tmp/my-numba-cache"}
    out = subprocess.run([sys.executable, "-c", probe], env=users, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "/tmp/my-numba-cache"


def _globals_after_pruning(fn) -> set:
    """The global names a function's code still uses after numba's dead-branch pruning (its frontend IR)."""
    from numba.core import analysis, compiler, ir, ir_utils

    fir = compiler.run_frontend(fn)
    analysis.dead_branch_prune(fir, ())
    fir.blocks = ir_utils.simplify_CFG(fir.blocks)
    ir_utils.dead_code_elimination(fir)
    return {st.value.name for blk in fir.blocks.values() for st in blk.body
            if isinstance(st, ir.Assign) and isinstance(st.value, (ir.Global, ir.FreeVar))}


def test_each_path_has_its_own_compiled_copy_with_the_other_path_pruned():
    """kernels/cpu_train.py compiles _train_instance and train_segment once per path (ROWWISE), with their
    own names (numba's disk cache keys on them), and numba prunes the other path from each copy."""
    for path, rowwise in (("lanes", False), ("rows", True)):
        inst, seg = getattr(cpu_train, f"_train_instance_{path}"), getattr(cpu_train, f"train_segment_{path}")
        assert inst.py_func.__globals__["ROWWISE"] is rowwise
        assert seg.py_func.__globals__["_train_instance"] is inst
        assert (inst.py_func.__qualname__, seg.py_func.__qualname__) == (f"_train_instance_{path}",
                                                                          f"train_segment_{path}")
    lanes = _globals_after_pruning(cpu_train._train_instance_lanes.py_func)
    rows = _globals_after_pruning(cpu_train._train_instance_rows.py_func)
    row_by_row = {"_backward_rows", "scatter_product", "look_sparse", "adam_update"}
    assert row_by_row <= rows and not row_by_row & lanes
    assert "_adam" in lanes and "_adam" not in rows  # the small models' fused optimizer pass


def test_a_run_compiles_and_loads_only_its_own_path_before_training():
    """engine.cpu_backend.compile(kernel_path(model, batch=...)) readies the copy the model trains on, so that
    its compilation is timed apart from training, and the other copies are never loaded (the point of the
    split). n=20, m=5 at a batch of 64 trains in the per-lane copy (fewer lanes), not its flat tiny copy."""
    import subprocess
    import sys

    probe = ("import sys; from engine import DataSpec, ModelSpec, TrainSpec, cpu_backend, train; "
             "from kernels import cpu_train as c; n, m = int(sys.argv[1]), int(sys.argv[2]); "
             "model = ModelSpec(n, m); path = cpu_backend.kernel_path(model, batch=64); cpu_backend.compile(path); "
             "segs = [c.train_segment_lanes, c.train_segment_rows, c.TINY_SEGMENTS[(2, 1)], c.TINY_SEGMENTS[(20, 5)]]; "
             "before = [len(s.signatures) for s in segs]; "
             "train(model, DataSpec([[0.5] * n], [[1.0] * n]), TrainSpec(steps=3, batch_size=64), backend='cpu', "
             "progress=False); "
             "print(path, *before, *[len(s.signatures) for s in segs])")
    for (n, m), want in (((4, 2), "lanes 1 0 0 0 1 0 0 0"), ((64, 40), "rows 0 1 0 0 0 1 0 0"),
                         ((2, 1), "tiny-2x1 0 0 1 0 0 0 1 0"), ((20, 5), "lanes 1 0 0 0 1 0 0 0")):
        out = subprocess.run([sys.executable, "-c", probe, str(n), str(m)], capture_output=True, text=True, check=True)
        assert out.stdout.strip().splitlines()[-1] == want


def test_compile_refuses_an_unknown_path():
    with pytest.raises(ValueError, match="path: one of lanes, rows, tiny-2x1, tiny-3x2, tiny-5x2, tiny-10x5, "
                                         "tiny-20x5, untied"):
        cpu_backend.compile("dense")


def test_512_bit_code_is_asked_for_by_import_kernels_and_a_users_choice_wins(tmp_path):
    """kernels/__init__.py sets NUMBA_CPU_FEATURES on hosts where LLVM would keep AVX-512 to 256 bits (and
    the kernels then get 512-bit code); an inherited value of its own is dropped, never combined with a CPU
    the child names; a user's own value (even empty), a named CPU and NUMBA_ENABLE_AVX are left alone."""
    import json
    import os
    import subprocess
    import sys

    probe = ("import json, os, kernels; from kernels import cpu_products; print(json.dumps([os.environ.get("
             "'NUMBA_CPU_FEATURES'), cpu_products.WIDE_VECTORS, kernels._wide_vector_features() is not None]))")
    import early_children

    mine = ("NUMBA_CPU_FEATURES", "SUPBENCH_NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME", "NUMBA_ENABLE_AVX")
    # child_env: this checkout first on PYTHONPATH (the child runs in tmp_path, where an installed copy of
    # another checkout, or none, would otherwise be imported)
    env = early_children.child_env({k: v for k, v in os.environ.items() if k not in mine})

    def child(**extra):
        out = subprocess.run([sys.executable, "-c", probe], env={**env, **extra}, cwd=tmp_path, capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    features, wide, wanted = child()
    assert wide == wanted == (features is not None)  # asked for where wanted, and numba took it
    if wanted:
        assert features.endswith(",-prefer-256-bit")
    stale = "+avx512f,+avx2,-prefer-256-bit"  # a parent's, perhaps from another machine
    assert child(NUMBA_CPU_FEATURES=stale, SUPBENCH_NUMBA_CPU_FEATURES=stale)[0] == features
    assert child(NUMBA_CPU_FEATURES=stale, SUPBENCH_NUMBA_CPU_FEATURES=stale, NUMBA_CPU_NAME="generic")[:2] == [None,
                                                                                                          False]
    assert child(NUMBA_CPU_FEATURES="")[:2] == ["", False]
    assert child(NUMBA_CPU_FEATURES="+avx2")[:2] == ["+avx2", False]
    assert child(NUMBA_ENABLE_AVX="0")[:2] == [None, False]


@pytest.mark.parametrize("K", [1, 2, 3, 7, 10, 64, 257, 1000, 10_000])
@pytest.mark.parametrize("T", [1, 2, 3, 16])
def test_instance_groups_deal_every_instance_once_round_robin(K, T):
    """train_segment's dealing: groups of consecutive instances, group g to thread g % T; every instance
    exactly once, each thread's share within one group of the others', and dense-last sweeps spread."""
    T = min(T, K)
    size, count = cpu_train.instance_groups(K, T)
    shares = [[k for g in range(t, count, T) for k in range(g * size, min(K, (g + 1) * size))] for t in range(T)]
    assert sorted(k for s in shares for k in s) == list(range(K))
    assert max(map(len, shares)) - min(map(len, shares)) <= size
    assert 1 <= size <= 64 and (K < 4 * T or count >= 4 * T)


def test_a_slow_compilation_says_so_while_it_runs_and_a_fast_one_stays_quiet(monkeypatch):
    """A cold compilation takes 10-75 s with nothing on screen before the training bar: compile's log
    hears one line once it has run ANNOUNCE_AFTER_S; a load from the disk cache (0.3 s) says nothing."""
    import time

    lines = []
    monkeypatch.setattr(cpu_backend, "_COMPILED", {})
    monkeypatch.setattr(cpu_backend, "ANNOUNCE_AFTER_S", 0.05)
    monkeypatch.setattr(cpu_backend, "_compile", lambda path: time.sleep(0.5) or 0.5)
    assert cpu_backend.compile("rows", log=lines.append) == 0.5
    assert len(lines) == 1 and "readying the rows training loop" in lines[0]
    monkeypatch.setattr(cpu_backend, "_compile", lambda path: 0.01)
    cpu_backend.compile("lanes", log=lines.append)
    time.sleep(0.2)  # (a timer left running would have fired by now)
    assert len(lines) == 1
