"""The triton backend: the only engine module that imports kernels/ (loaded lazily by backends.py).

Host-side work lives here (initialisation, the lr/bias-correction table, launch segments,
history, checkpoints); the kernels do every training step on chip. Same signature as
engine.torch_backend.train_chunk.
"""
from __future__ import annotations

import torch

from kernels import layout
from kernels.train import train_steps
from . import fused, reference
from .checkpoint import Checkpoint
from .errors import UnsupportedShape
from .spec import ModelSpec, TrainSpec

# Steps per kernel launch: state is written back between launches (progress, checkpoints).
STEPS_PER_LAUNCH = 500


# Model variants the GPU kernels implement (kernels/train*.py: a RELU flag on the output only).
VARIANTS = ("relu-output", "linear")


SETS_UNSUPPORTED = ("backend: triton draws fresh independent features only (no correlated or anticorrelated "
                    "sets, no finite dataset); choose cpu or torch")


def check_supported(model: ModelSpec, train: TrainSpec, sets=(), examples: int = 0) -> None:
    """Raise UnsupportedShape, naming what is missing, unless the kernels train this model on data
    with these feature sets (DataSpec.sets)."""
    if sets or examples:
        raise UnsupportedShape(SETS_UNSUPPORTED)
    if model.variant not in VARIANTS:
        raise UnsupportedShape(f"backend: triton does not train {model.variant!r} models (its kernels implement "
                               f"{' and '.join(VARIANTS)}); choose cpu or torch")
    reason = layout.supported(model.n_features, model.n_hidden)
    if reason:
        raise UnsupportedShape(reason)


# The state and schedule every fused backend shares (re-exported: tests and bench use them from here).
new_state = fused.new_state
schedule_table = fused.schedule_table


def run_steps(model: ModelSpec, train: TrainSpec, state: dict, p, imp, first_instance: int, step0: int,
              n_steps: int, loss_acc, hist=None, history_every: int = 0, sched=None, **tile) -> None:
    """Advance ``state`` by steps [step0, step0 + n_steps) in one launch (used by tests and bench)."""
    sched = schedule_table(train, p.device) if sched is None else sched
    train_steps(
        state, p, imp, sched, loss_acc, hist, batch=train.batch_size, first_instance=first_instance,
        step0=step0, n_steps=n_steps, window_start=train.steps - train.loss_window, hist_every=history_every,
        seed=train.seed, weight_decay=train.weight_decay, beta1=train.beta1, beta2=train.beta2, eps=train.eps,
        relu=model.variant == "relu-output", decoupled=train.optimizer == "adamw", precision=train.precision,
        **tile)


def train_chunk(model: ModelSpec, p, importance, train: TrainSpec, first_instance: int, device="cuda",
                history_every: int = 0, on_step=None, checkpoint: Checkpoint | None = None,
                snapshot_steps=(), on_snapshot=None, sets=(), examples: int = 0, **tile):
    """Train K instances with the fused kernels; same contract as engine.torch_backend.train_chunk.

    State is written back after every launch of STEPS_PER_LAUNCH steps; that is where progress is
    reported and, when due, a checkpoint saved (engine/fused.py). ``tile`` overrides the kernel
    layout (tests). ``sets`` must be empty: the GPU sampler draws independent features only.
    """
    if sets or examples:
        raise UnsupportedShape(SETS_UNSUPPORTED)
    check_supported(model, train)
    device = torch.device(device)

    def run_segment(state, p, imp, sched, loss_acc, hist, step0, n_steps):
        run_steps(model, train, state, p, imp, first_instance, step0, n_steps, loss_acc, hist, history_every, sched,
                  **tile)

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    return fused.train_chunk(run_segment, model, p, importance, train, first_instance, device, STEPS_PER_LAUNCH,
                             history_every=history_every, on_step=on_step, checkpoint=checkpoint, sync=sync,
                             snapshot_steps=snapshot_steps, on_snapshot=on_snapshot)


def one_step_gradient_error(model: ModelSpec, train: TrainSpec, p, imp, **tile) -> float:
    """Norm-wise relative error of the W gradient of one fused step against float64 autograd's
    formula (engine.reference) on the very batch the kernel drew. p, imp: (K, n) on the kernel's
    device. After one step Adam's first moment is exactly (1 - beta1) * gradient."""
    from kernels.sampling import sample_batch

    K = p.shape[0]
    state = new_state(model, train, 0, K, p.device)
    W0, b0 = state["W"].double().cpu(), state["b"].double().cpu()
    run_steps(model, train, state, p, imp, 0, 0, 1, torch.zeros(K, device=p.device), **tile)
    x = sample_batch(p, train.batch_size, 0, train.seed).double().cpu()
    _, dW, _ = reference.loss_and_grads(W0, b0, x, imp.double().cpu(), model.variant)
    got = state["mW"].double().cpu() / (1 - train.beta1)
    return ((got - dW).norm() / dW.norm().clamp_min(1e-300)).item()


def self_test(model: ModelSpec, train: TrainSpec | None = None, device="cuda") -> str | None:
    """One training step of three instances against the float64 reference on identical inputs.

    Returns None when the kernels train this shape correctly here (gradient error below 1e-4 at
    fp32, 2e-2 at tf32), else a one-line reason. Used by ``--backend auto``.
    """
    train = train or TrainSpec()
    try:
        check_supported(model, train)
        small = TrainSpec(steps=2, batch_size=min(train.batch_size, 64), precision=train.precision,
                          optimizer=train.optimizer, weight_decay=train.weight_decay)
        p = torch.full((3, model.n_features), 0.5, device=device)
        err = one_step_gradient_error(model, small, p, torch.ones_like(p))
    except Exception as e:  # any failure to compile or launch means: do not use this backend
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    limit = 2e-2 if train.precision == "tf32" else 1e-4
    if not err < limit:
        return f"self-test gradient error {err:.1e} exceeds {limit:.0e}"
    return None
