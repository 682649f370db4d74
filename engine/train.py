"""engine.train: train K toy models at once on the chosen backend, in memory-sized chunks."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import backends, memory
from .errors import BackendUnavailable, SpecError
from .spec import DataSpec, ModelSpec, TrainSpec, _check_int, check_dataset


@dataclass
class TrainResult:
    """Trained instances, rows in the order of the DataSpec.

    params {name: (K, *shape)} (ModelSpec.param_shapes; tied models: W (K, m, n) and b (K, n), also
    as ``res.W`` and ``res.b``), loss (K,) final loss (mean over the last ``loss_window`` steps),
    history (T, K): the loss of the one batch of steps 0, h, 2h, ... (h = ``history_every``, T = ceil(steps / h),
    the training loss before that step's update), or None; all float32 CPU tensors.
    """

    params: dict
    loss: torch.Tensor
    history: torch.Tensor | None
    backend: str
    device: str
    seconds: float
    steps: int
    compile_seconds: float = 0.0  # one-off kernel compilation (cpu backend), not in ``seconds``

    @property
    def W(self) -> torch.Tensor | None:
        return self.params.get("W")

    @property
    def b(self) -> torch.Tensor | None:
        return self.params.get("b")

    @property
    def instance_steps_per_second(self) -> float:
        return self.loss.shape[0] * self.steps / max(self.seconds, 1e-9)


def default_chunk_size(model: ModelSpec, train: TrainSpec, backend: str, device: str) -> int:
    """Instances per chunk so the torch backend's per-step tensors stay within memory.

    About 8 float32 tensors of (B, n) and (B, m) live per instance during a torch step; the
    fused backends (triton, cpu) never hold the batch, so only parameters and Adam state count.
    """
    if backend in ("triton", "cpu"):
        per_instance = 16 * model.param_count
        budget = 4 << 30
    else:
        per_instance = 4 * 8 * train.batch_size * (model.n_features + model.n_hidden)
        budget = (2 << 30) if str(device).startswith("cuda") else (256 << 20)
    return max(1, budget // per_instance)


def plan_chunks(n_instances: int, chunk_size: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] covering range(n_instances) in order."""
    return [(s, min(s + chunk_size, n_instances)) for s in range(0, n_instances, chunk_size)]


def train(model: ModelSpec, data: DataSpec, training: TrainSpec | None = None, *, backend: str = "auto",
          device: str | None = None, chunk_size: int | None = None, history_every: int = 0,
          progress: bool = True, first_instance: int = 0, threads: int | None = None) -> TrainResult:
    """Train ``data.n_instances`` independent toy models.

    backend: ``auto`` (triton when usable on a CUDA GPU, else cpu when numba is installed, else
        torch), ``torch``, ``triton`` or ``cpu``.
    threads: CPU threads of the cpu backend (default: all cores), and of the torch backend on a CPU
        (torch.set_num_threads for this call; default: torch's own setting).
    first_instance: global index of the first instance (keys the random streams; used by
        callers that train a large sweep piece by piece).
    Example::

        from engine import ModelSpec, DataSpec, TrainSpec, train
        res = train(ModelSpec(20, 5), DataSpec(np.full((8, 20), 0.1), 0.7 ** np.arange(20)),
                    TrainSpec(steps=2000))
        res.W.shape  # (8, 5, 20)
    """
    training = TrainSpec() if training is None else training
    for name_, value, cls in (("model", model, ModelSpec), ("data", data, DataSpec), ("training", training, TrainSpec)):
        if not isinstance(value, cls):
            raise SpecError(name_, f"an engine.{cls.__name__}", type(value).__name__)
    _check_int("history_every", history_every, 0)
    _check_int("first_instance", first_instance, 0, 2**32 - data.n_instances)  # the Philox counter is 32-bit
    if chunk_size is not None:
        _check_int("chunk_size", chunk_size, 1)
    if device is not None:
        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError, ValueError):
            kind = None
        if kind not in ("cpu", "cuda"):
            raise SpecError("device", "'cpu', 'cuda' or 'cuda:<index>'", device)
        if kind == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"device: {device!r} needs a CUDA GPU, and none is available here; use 'cpu'")
    if data.n_features != model.n_features:
        raise SpecError("feature_probability", f"of shape (K, {model.n_features}) to match n_features",
                        tuple(data.feature_probability.shape))
    check_dataset(data, training)
    name = backends.resolve(backend, model, training, log=(lambda m: tqdm.write(m)) if progress else None,
                            sets=data.sets, examples=data.examples)
    device = device or backends.default_device(name)
    if name == "cpu" and torch.device(device).type != "cpu":
        raise SpecError("device", "'cpu' (or None) with the cpu backend", device)
    backends.check_supported(name, model, training, data.sets, data.examples, device=device)
    chunk_size = chunk_size or default_chunk_size(model, training, name, device)
    memory.check_train_fits(model, data, training, name, chunk_size, history_every)
    fn = backends.train_chunk_fn(name)
    backends.check_threads(threads)
    compile_seconds = 0.0
    if name == "cpu":
        from . import cpu_backend
        cpu_backend.set_threads(threads or cpu_backend.max_threads())
        compile_seconds = cpu_backend.compile(cpu_backend.kernel_path(model, batch=training.batch_size),
                                              log=(lambda m: tqdm.write(m)) if progress else None)
    K = data.n_instances
    outs = []
    t0 = time.perf_counter()
    with backends.torch_threads(threads if name == "torch" else None, device), \
            tqdm(total=K * training.steps, unit="inst-step", unit_scale=True, disable=not progress,
                 desc=f"train[{name}]", leave=False) as bar:
        for start, stop in plan_chunks(K, chunk_size):
            k = stop - start
            outs.append(fn(model, data.feature_probability[start:stop], data.importance[start:stop], training,
                           first_instance + start, device=device, history_every=history_every,
                           on_step=lambda s, k=k: bar.update(s * k), sets=data.sets, examples=data.examples))
    seconds = time.perf_counter() - t0
    hist = torch.cat([o[2] for o in outs], dim=1) if history_every else None
    params = {k: torch.cat([o[0][k] for o in outs]) for k in outs[0][0]}
    return TrainResult(params, torch.cat([o[1] for o in outs]), hist, name, str(device), seconds, training.steps,
                       compile_seconds)
