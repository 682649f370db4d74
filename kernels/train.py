"""The one entry point the engine calls: run a segment of training steps on the right kernel."""
from __future__ import annotations

import torch

from . import train_blocked, train_fused, train_gram, train_lanes
from .layout import tile_config


def train_steps(state: dict, p: torch.Tensor, imp: torch.Tensor, sched: torch.Tensor, loss_acc: torch.Tensor,
                hist: torch.Tensor | None, *, batch: int, first_instance: int, step0: int, n_steps: int,
                window_start: int, hist_every: int, seed: int, weight_decay: float, beta1: float, beta2: float,
                eps: float, relu: bool, decoupled: bool, precision: str = "fp32", **layout) -> None:
    """Advance ``state`` = dict(W, b, mW, vW, mb, vb) by steps [step0, step0 + n_steps), in place.

    W-like tensors (K, m, n), b-like and p, imp (K, n), float32, contiguous, one device.
    sched (total_steps, 3): see engine/triton_backend.schedule_table. loss_acc (K,) accumulates
    the loss of steps >= window_start; hist (T, K) gets the loss of every hist_every-th step.
    precision: "fp32" or "tf32" (tensor cores on the blocked path). ``layout`` overrides
    kernels.layout.tile_config fields (tests, tuning).
    """
    K, m, n = state["W"].shape
    cfg = tile_config(n, m, batch, precision, **layout)
    args = dict(batch=batch, first_instance=first_instance, step0=step0, n_steps=n_steps, window_start=window_start,
                hist_every=hist_every, seed=seed, weight_decay=weight_decay, beta1=beta1, beta2=beta2, eps=eps,
                relu=relu, decoupled=decoupled)
    hist = loss_acc if hist is None else hist  # never written when hist_every == 0
    if cfg.path == "lanes":
        train_lanes.launch(state, p, imp, sched, loss_acc, hist, cfg, **args)
    elif cfg.path == "gram":
        train_gram.launch(state, p, imp, sched, loss_acc, hist, cfg, precision=precision, **args)
    elif cfg.path == "fused":
        train_fused.launch(state, p, imp, sched, loss_acc, hist, cfg, **args)
    else:
        train_blocked.launch(state, p, imp, sched, loss_acc, hist, cfg, precision=precision, **args)
