"""The torch backend: the training loop around engine/reference.py (CPU or CUDA).

Same signature as engine.triton_backend.train_chunk. Data come from torch's generator, seeded
per chunk (torch's generator is not counter-based, so results depend on the chunking; runs
record their chunk size so a resumed run replays exactly).
"""
from __future__ import annotations

import contextlib
import zlib

import torch

from . import reference, rng
from .checkpoint import Checkpoint, next_step, step_tensor
from .spec import ModelSpec, TrainSpec


def data_generator(seed: int, first_instance: int, device) -> torch.Generator:
    """The data stream of a chunk starting at global instance ``first_instance``."""
    g = torch.Generator(device=device)
    g.manual_seed(zlib.crc32(f"{seed}:{first_instance}".encode()))
    return g


@contextlib.contextmanager
def matmul_precision(precision: str):
    """fp32: exact float32 matmuls on CUDA; tf32: tensor-core TF32 (no effect on CPU)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def train_chunk(model: ModelSpec, p, importance, train: TrainSpec, first_instance: int, device="cpu",
                history_every: int = 0, on_step=None, checkpoint: Checkpoint | None = None,
                snapshot_steps=(), on_snapshot=None, sets=(), examples: int = 0):
    """Train K instances; p, importance (K, n). Returns (params, final_loss, history): params
    {name: (K, *shape)} as ModelSpec.param_shapes (tied: W (K, m, n), b (K, n)), final_loss (K,)
    (mean over the last ``train.loss_window`` steps) and history (T, K) of the loss every
    ``history_every`` steps (None if 0), all float32 on CPU. ``on_step(k)`` is called after
    every k steps (progress bars); ``checkpoint`` saves and restores mid-chunk state.
    ``on_snapshot(t, W, b)`` is called with CPU copies of the parameters after t steps, for every t
    in ``snapshot_steps`` (0 = the initialisation) that this call trains through; a resumed call
    repeats none before its checkpoint, so callers store snapshots as they come (tied models only).
    ``sets``: DataSpec.sets (correlated / anticorrelated features; reference.features_from_uniform).
    ``examples``: DataSpec.examples; > 0 trains every step on that finite dataset (drawn once from
    Philox, engine.rng.dataset_uniforms: the same data as the cpu backend).
    """
    device = torch.device(device)
    checkpoint = checkpoint or Checkpoint()
    p = torch.as_tensor(p, dtype=torch.float32, device=device)
    imp = torch.as_tensor(importance, dtype=torch.float32, device=device)
    K = p.shape[0]
    signed = not model.tied  # abs-computation's inputs are U[-1, 1] when active
    P = {k: v.to(device) for k, v in reference.init_params(model, train.seed,
                                                           torch.arange(first_instance, first_instance + K)).items()}
    states = {k: reference.AdamState(torch.zeros_like(v), torch.zeros_like(v)) for k, v in P.items()}
    gen = data_generator(train.seed, first_instance, device)
    dataset = None
    if examples:
        u = rng.dataset_uniforms(train.seed, torch.arange(first_instance, first_instance + K), examples, p.shape[1])
        dataset = reference.features_from_uniform(u.to(device), p, sets, signed)
    loss_sum = torch.zeros(K, device=device)
    history = []
    saved = checkpoint.load()
    if saved:
        for k in P:  # checkpoint keys: the parameter, "m" + it and "v" + it (Adam's moments)
            P[k].copy_(saved[k])
            states[k].m.copy_(saved["m" + k])
            states[k].v.copy_(saved["v" + k])
        loss_sum.copy_(saved["loss_sum"])
        gen.set_state(saved["generator"])
        history = list(saved["history"].to(device)) if "history" in saved else []
        if on_step is not None:
            on_step(next_step(saved))
    snaps = set(snapshot_steps) if on_snapshot is not None and model.tied else set()
    if 0 in snaps and next_step(saved) == 0:
        on_snapshot(0, P["W"].cpu().clone(), P["b"].cpu().clone())
    window_start = train.steps - train.loss_window
    report_every = max(1, min(100, train.steps // 100))
    with matmul_precision(train.precision):
        for t in range(next_step(saved), train.steps):
            x = dataset if dataset is not None else reference.sample_batch(p, train.batch_size, gen, sets, signed)
            loss = reference.params_train_step(P, x, imp, model, states, t + 1, train.lr_at(t), train)
            if t >= window_start:
                loss_sum += loss
            if history_every and t % history_every == 0:
                history.append(loss)
            if t + 1 in snaps:
                on_snapshot(t + 1, P["W"].cpu().clone(), P["b"].cpu().clone())
            if (t + 1) % report_every == 0 or t + 1 == train.steps:
                if checkpoint.due() and t + 1 < train.steps:
                    state = {**P, **{"m" + k: s.m for k, s in states.items()}, **{"v" + k: s.v for k, s in states.items()},
                             "loss_sum": loss_sum, "generator": gen.get_state(), "next_step": step_tensor(t + 1)}
                    if history:
                        state["history"] = torch.stack(history)
                    checkpoint.save(state)
                if on_step is not None:
                    on_step((t + 1) % report_every or report_every)
    hist = torch.stack(history).cpu() if history else None
    return {k: v.cpu() for k, v in P.items()}, (loss_sum / train.loss_window).cpu(), hist
