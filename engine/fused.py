"""Host side shared by the fused backends (triton on a GPU, cpu with numba): the initial state,
the per-step schedule table the kernels read, and the loop of launch segments around a kernel
(progress, loss history, mid-chunk checkpoints).

A fused backend supplies one function, ``run_segment(state, loss_acc, hist, step0, n_steps)``,
that advances every instance by n_steps steps in place; everything else is here, once.
"""
from __future__ import annotations

import math
import time

import torch

from . import reference
from .checkpoint import Checkpoint, next_step, step_tensor
from .spec import ModelSpec, TrainSpec



def schedule_table(train: TrainSpec, device="cpu") -> torch.Tensor:
    """(steps, 3) float32 per 0-based step t: 1 - lr_t*wd (AdamW decay; 1 for Adam),
    lr_t / (1 - beta1^(t+1)), 1 / sqrt(1 - beta2^(t+1)). Computed in float64 on the host."""
    rows = []
    for t in range(train.steps):
        lr = train.lr_at(t)
        decay = 1.0 - lr * train.weight_decay if train.optimizer == "adamw" else 1.0
        rows.append((decay, lr / (1.0 - train.beta1 ** (t + 1)), 1.0 / math.sqrt(1.0 - train.beta2 ** (t + 1))))
    return torch.tensor(rows, dtype=torch.float64).to(device=device, dtype=torch.float32)


def new_state(model: ModelSpec, train: TrainSpec, first_instance: int, K: int, device="cpu") -> dict:
    """Initial W (per-instance Xavier, the same Philox init as every backend), b = 0, Adam moments 0.
    W, mW, vW (K, m, n); b, mb, vb (K, n); float32, contiguous. Untied models: every parameter of
    ModelSpec.param_shapes (reference.init_params) and "m" / "v" + its name."""
    if not model.tied:
        P = reference.init_params(model, train.seed, torch.arange(first_instance, first_instance + K))
        state = {}
        for k, v in P.items():
            v = v.to(device).contiguous()
            state.update({k: v, "m" + k: torch.zeros_like(v), "v" + k: torch.zeros_like(v)})
        return state
    W = reference.init_weights(model, train.seed, torch.arange(first_instance, first_instance + K)).to(device)
    b = torch.zeros(K, model.n_features, device=device)
    return {"W": W.contiguous(), "b": b, "mW": torch.zeros_like(W), "vW": torch.zeros_like(W),
            "mb": torch.zeros_like(b), "vb": torch.zeros_like(b)}


def train_chunk(run_segment, model: ModelSpec, p, importance, train: TrainSpec, first_instance: int, device,
                steps_per_launch, history_every: int = 0, on_step=None, checkpoint: Checkpoint | None = None,
                sync=None, snapshot_steps=(), on_snapshot=None):
    """Train K instances segment by segment; the contract of engine.torch_backend.train_chunk.

    run_segment(state, p, imp, sched, loss_acc, hist, step0, n_steps): the backend's kernel launch.
    steps_per_launch: int, or a callable (steps done so far, seconds the last segment took) -> int
    that sizes the next segment (results never depend on the segment sizes). State is complete
    between segments: that is where progress is reported and, when due, a checkpoint saved.
    sync(): waits for the device before progress is reported (GPU).
    snapshot_steps, on_snapshot: see engine.torch_backend.train_chunk (a segment ends at each).
    """
    device = torch.device(device)
    checkpoint = checkpoint or Checkpoint()
    p = torch.as_tensor(p, dtype=torch.float32).to(device).contiguous()
    imp = torch.as_tensor(importance, dtype=torch.float32).to(device).contiguous()
    K = p.shape[0]
    state = new_state(model, train, first_instance, K, device)
    sched = schedule_table(train, device)
    loss_acc = torch.zeros(K, device=device)
    hist = torch.zeros(math.ceil(train.steps / history_every), K, device=device) if history_every else None
    saved = checkpoint.load()
    if saved:
        for key in state:
            state[key].copy_(saved[key])
        loss_acc.copy_(saved["loss_sum"])
        if hist is not None:
            hist.copy_(saved["history"])
        if on_step is not None:
            on_step(next_step(saved))
    step0, last_seconds = next_step(saved), None
    snaps = sorted(set(snapshot_steps))
    if not model.tied:
        snaps = []  # snapshots are of W and b (Job refuses them for untied models)
    if on_snapshot is not None and step0 == 0 and 0 in snaps:
        on_snapshot(0, state["W"].cpu().clone(), state["b"].cpu().clone())
    while step0 < train.steps:
        size = steps_per_launch(step0, last_seconds) if callable(steps_per_launch) else steps_per_launch
        stop = next((s for s in snaps if s > step0), train.steps)  # segments end at snapshot steps
        n = max(1, min(size, stop - step0, train.steps - step0))
        t0 = time.perf_counter()
        run_segment(state, p, imp, sched, loss_acc, hist, step0, n)
        if sync is not None:
            sync()
        last_seconds = time.perf_counter() - t0
        step0 += n
        if on_snapshot is not None and step0 in snaps:
            on_snapshot(step0, state["W"].cpu().clone(), state["b"].cpu().clone())
        if step0 < train.steps and checkpoint.due():
            extra = {"history": hist} if hist is not None else {}
            checkpoint.save({**state, "loss_sum": loss_acc, "next_step": step_tensor(step0), **extra})
        if on_step is not None:
            on_step(n)
    return ({k: state[k].cpu() for k in model.param_shapes()}, (loss_acc / train.loss_window).cpu(),
            hist.cpu() if hist is not None else None)
