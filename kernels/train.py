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
    sched (total_steps, 3): see engine/fused.schedule_table. loss_acc (K,) accumulates
    the loss of steps >= window_start; hist (T, K) gets the loss of every hist_every-th step.
    precision: "fp32" or "tf32" (tensor cores on the tl.dot paths, gram and blocked). ``layout`` overrides
    kernels.layout.tile_config fields (tests, tuning).
    """
    K, m, n = state["W"].shape
    cfg = tile_config(n, m, batch, precision, **layout)
    hist = loss_acc if hist is None else hist  # never written when hist_every == 0
    # Every kernel takes (W, b, mW, vW, mb, vb, [its scratch], p, imp, sched, loss, hist, sizes, scalars).
    head = [state[k] for k in ("W", "b", "mW", "vW", "mb", "vb")]
    tail = [p, imp, sched, loss_acc, hist, K, n, m, batch, first_instance, step0, n_steps, window_start, hist_every,
            seed, weight_decay, 1.0 - float(beta1), beta2, 1.0 - float(beta2), eps, 1.0 / (batch * n)]
    module = {"lanes": train_lanes, "gram": train_gram, "fused": train_fused, "blocked": train_blocked}[cfg.path]
    module.launch(head, tail, cfg, batch=batch, relu=relu, decoupled=decoupled, precision=precision)
