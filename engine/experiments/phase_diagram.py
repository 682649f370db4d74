"""Phase change 2->1 and 3->2 (Elhage et al. 2022, "Phase Change").

n = 2, m = 1 (or n = 3, m = 2) relu-output models; every feature has density s, the last one
(the "extra" feature) has importance r, the others 1. The sweep is a grid of s (log) x r (log)
with several seeds per point. Protocol (the paper's): per grid point, drop the seed with the
highest final loss, average the extra feature's norm and superposition over the rest, and
classify that average (engine.metrics.classify). The analytic map is engine.theory.phase;
``agreement`` is the fraction of grid cells where the two phases match.

Instance order: row-major over (density index, importance index, seed index).
"""
from __future__ import annotations

import dataclasses
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import backends, metrics, plots, theory
from ..checkpoint import Checkpoint, next_step
from ..errors import SpecError
from ..spec import DataSpec, ModelSpec, TrainSpec, _check_float, _check_int
from ..store import RunDir, write_json, write_parquet, write_tensors
from ..train import default_chunk_size, plan_chunks

NAME = "phase-diagram"
# Written into spec.json. Bump it with any change that alters what a given spec trains (RNG
# layout, initialisation, optimiser), so a run directory made by older code is not silently
# resumed with newer chunks mixed in.
RESULTS_FORMAT = 2  # 2: feature values u * (1 / p) instead of u / p

PRESETS = {
    # The torch backend's quick run: about a minute on 2 CPU cores (n=2), already shows the phase change.
    "quick": dict(grid=20, seeds=5, steps=2500, batch_size=256, lr=1e-2),
    # The quick run on a fused backend (cpu, triton), closer to the paper's protocol (10 seeds, batch
    # 1024) in about the same wall time on 2 CPU cores (n=2: ~35 s; n=3: ~80 s), classified by the
    # lowest-loss seed (see kept_seeds). Measured agreement on the cpu backend: 0.978 (n=2), 0.94 (n=3);
    # the same runs score 0.93 and 0.83 under drop-worst averaging.
    "quick-fused": dict(grid=20, seeds=10, steps=5000, batch_size=1024, lr=1e-2, protocol="best"),
    # The paper's protocol: 10 fits per point, notebook optimiser settings, finer than the figure.
    "paper": dict(grid=50, seeds=10, steps=10_000, batch_size=1024, lr=1e-3),
}


def preset_fields(preset: str, backend: str) -> dict:
    """The spec fields of ``preset`` (quick or paper) for the backend that will train it."""
    if preset == "quick" and backend in ("cpu", "triton"):
        return dict(PRESETS["quick-fused"])
    return dict(PRESETS[preset])


@dataclass(frozen=True)
class PhaseDiagramSpec:
    """Everything needed to re-run the sweep; the CLI options map one-to-one onto these fields."""

    features: int = 2
    grid: int = 20
    seeds: int = 5
    steps: int = 2500
    batch_size: int = 256
    lr: float = 1e-2
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    seed: int = 0
    density_min: float = 0.01
    density_max: float = 1.0
    importance_min: float = 0.1
    importance_max: float = 10.0
    backend: str = "torch"
    precision: str = "fp32"
    chunk_size: int = 0  # 0: chosen from the instance count and memory
    protocol: str = "drop-worst"  # how a grid point's seeds make its phase; see kept_seeds

    def __post_init__(self):
        if self.features not in theory.SUPPORTED_FEATURES:
            raise SpecError("features", "2 (n=2, m=1) or 3 (n=3, m=2)", self.features)
        _check_int("grid", self.grid, 1, 1024)
        _check_int("seeds", self.seeds, 1, 1000)
        _check_float("density_min", self.density_min, 0.0, 1.0, lo_open=True)
        _check_float("density_max", self.density_max, 0.0, 1.0, lo_open=True)
        if self.density_max < self.density_min:
            raise SpecError("density_max", f"a number >= density_min ({self.density_min})", self.density_max)
        _check_float("importance_min", self.importance_min, 0.0, 1e6, lo_open=True)
        _check_float("importance_max", self.importance_max, 0.0, 1e6, lo_open=True)
        if self.importance_max < self.importance_min:
            raise SpecError("importance_max", f"a number >= importance_min ({self.importance_min})", self.importance_max)
        _check_int("chunk_size", self.chunk_size, 0)
        if self.protocol not in PROTOCOLS:
            raise SpecError("protocol", "one of " + ", ".join(PROTOCOLS), self.protocol)
        if self.backend not in ("torch", "triton", "cpu"):
            raise SpecError("backend", "torch, triton or cpu (auto is resolved before the spec is made)", self.backend)
        self.train_spec()  # validates steps, batch size, lr, optimizer, precision, seed

    @property
    def model(self) -> ModelSpec:
        return ModelSpec(self.features, self.features - 1, "relu-output")

    def train_spec(self) -> TrainSpec:
        return TrainSpec(steps=self.steps, batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
                         weight_decay=self.weight_decay, seed=self.seed, precision=self.precision)

    @property
    def n_instances(self) -> int:
        return self.grid * self.grid * self.seeds

    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Grid values: density (grid,) and relative importance (grid,), both log-spaced."""
        d = np.logspace(math.log10(self.density_min), math.log10(self.density_max), self.grid)
        r = np.logspace(math.log10(self.importance_min), math.log10(self.importance_max), self.grid)
        return d, r

    def to_dict(self) -> dict:
        return {"experiment": NAME, "results_format": RESULTS_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "PhaseDiagramSpec":
        return cls(**{k: v for k, v in d.items() if k not in ("experiment", "results_format")})


PROTOCOLS = ("drop-worst", "best")


def kept_seeds(loss: np.ndarray, protocol: str) -> np.ndarray:
    """Which seeds of each grid point its phase is made from: bool (cells, seeds) from loss (cells, seeds).

    drop-worst: every seed but the one with the highest final loss (the paper's phase-diagram
        protocol: average the rest); all of them when there is one seed.
    best: the seed with the lowest final loss alone, the best estimate of the global minimum the
        analytic theory describes (the paper keeps the best of many fits for other figures). Seeds
        that fall into a worse local minimum (3->2 near r = 1..3, where the competing solutions'
        losses differ by (r - 1) s^2 / 6) then do not outvote the one that found the optimum.
    """
    cells, S = loss.shape
    if protocol == "best":
        kept = np.zeros((cells, S), bool)
        kept[np.arange(cells), np.argmin(loss, axis=1)] = True
        return kept
    kept = np.ones((cells, S), bool)
    if S > 1:
        kept[np.arange(cells), np.argmax(loss, axis=1)] = False
    return kept


def instance_table(spec: PhaseDiagramSpec) -> dict:
    """Per-instance grid coordinates (numpy arrays of length grid*grid*seeds, row-major)."""
    d, r = spec.axes()
    di, ri, si = np.meshgrid(np.arange(spec.grid), np.arange(spec.grid), np.arange(spec.seeds), indexing="ij")
    di, ri, si = di.ravel(), ri.ravel(), si.ravel()
    return {"instance": np.arange(di.size), "density_index": di, "importance_index": ri, "seed_index": si,
            "density": d[di], "rel_importance": r[ri]}


def data_spec(spec: PhaseDiagramSpec, table: dict) -> DataSpec:
    n = spec.features
    p = np.repeat(table["density"][:, None], n, axis=1)
    imp = np.ones_like(p)
    imp[:, -1] = table["rel_importance"]
    return DataSpec(p, imp)


def resolve_chunk_size(spec: PhaseDiagramSpec, device: str) -> int:
    """Instances per chunk, within memory. The torch backend's cost per instance-step barely
    depends on the chunk size, so it uses at least 8 chunks (finished results appear early);
    the fused backends want every instance at once (to fill a GPU, or every core with whole
    instances) and checkpoint inside a chunk."""
    if spec.chunk_size:
        return spec.chunk_size
    mem = default_chunk_size(spec.model, spec.train_spec(), spec.backend, device)
    if spec.backend in ("triton", "cpu"):
        return max(1, mem)
    return max(1, min(mem, math.ceil(spec.n_instances / 8)))


def train_all(spec: PhaseDiagramSpec, run: RunDir, progress: bool = True, log=print,
              checkpoint_every_s: float = 30.0, threads: int | None = None) -> dict:
    """Train every chunk not already in the run directory (resuming a chunk from its mid-chunk
    checkpoint when there is one); returns the timing of this invocation. threads: CPU threads of
    the cpu backend (default all; results do not depend on it)."""
    table = instance_table(spec)
    data = data_spec(spec, table)
    train = spec.train_spec()
    device = backends.default_device(spec.backend)
    fn = backends.train_chunk_fn(spec.backend)
    chunks = plan_chunks(spec.n_instances, resolve_chunk_size(spec, device))
    todo = [i for i in range(len(chunks)) if not run.has_chunk(i)]
    if len(todo) < len(chunks):
        log(f"resuming: {len(chunks) - len(todo)} of {len(chunks)} chunks already trained in {run.root}")
    for i in range(len(chunks)):
        if i not in todo:
            run.partial_path(i).unlink(missing_ok=True)  # stale: its chunk was saved
    compile_seconds = 0.0
    if spec.backend == "cpu" and todo:
        from .. import cpu_backend
        cpu_backend.set_threads(threads or cpu_backend.max_threads())
        compile_seconds = cpu_backend.compile()
        if compile_seconds > 2:
            log(f"cpu backend: compiled the training loop in {compile_seconds:.0f} s (cached on disk from now on)")
    trained_instances = sum(chunks[i][1] - chunks[i][0] for i in todo)
    instance_steps = trained_instances * train.steps
    seconds = 0.0
    with tqdm(total=trained_instances * train.steps, unit="inst-step", unit_scale=True, disable=not progress,
              desc=f"{NAME} [{spec.backend}]") as bar:
        for i in todo:
            start, stop = chunks[i]
            t0 = time.perf_counter()
            ckpt = Checkpoint(run.partial_path(i), checkpoint_every_s)
            instance_steps -= next_step(ckpt.load()) * (stop - start)  # restored, not trained now
            W, b, loss, _ = fn(spec.model, data.feature_probability[start:stop], data.importance[start:stop], train,
                               start, device=device, on_step=lambda s, k=stop - start: bar.update(s * k),
                               checkpoint=ckpt)
            seconds += time.perf_counter() - t0
            run.save_chunk(i, {"W": W, "b": b, "loss": loss})
            ckpt.remove()  # after the chunk is safe: a kill in between leaves a stale partial, ignored
    return {"n_chunks": len(chunks), "chunks_trained": len(todo), "chunks_resumed": len(chunks) - len(todo),
            "train_seconds": seconds, "compile_seconds": compile_seconds, "instance_steps_trained": instance_steps,
            "instance_steps_per_second": instance_steps / seconds if seconds else None}


def analyse(spec: PhaseDiagramSpec, W: torch.Tensor, loss: np.ndarray) -> tuple[dict, dict, float, dict]:
    """Per-instance and per-cell tables, the agreement with theory under the spec's protocol, and
    the agreement under every protocol (so a run answers both questions).

    W: (K, m, n) trained weights, loss: (K,) final losses, in instance order.
    """
    G, S = spec.grid, spec.seeds
    table = instance_table(spec)
    norm = metrics.feature_norms(W)[:, -1].numpy()
    sup = metrics.superposition(W)[:, -1].numpy()
    dim = metrics.dimensionality(W)[:, -1].numpy()
    phase = metrics.classify(norm, sup)
    d, r = spec.axes()
    di, ri = np.meshgrid(np.arange(G), np.arange(G), indexing="ij")
    th = theory.phase(spec.features, d[di.ravel()], r[ri.ravel()])

    def cell_phases(kept):
        """Per cell: the phase of the kept seeds' mean norm and superposition, and the mean itself."""
        def cell_mean(v):
            return (np.where(kept, v, 0.0).reshape(G * G, S).sum(1) / kept.reshape(G * G, S).sum(1))
        return metrics.classify(cell_mean(norm), cell_mean(sup)), cell_mean

    by_protocol = {}
    for protocol in PROTOCOLS:
        emp, _ = cell_phases(kept_seeds(loss.reshape(G * G, S), protocol).ravel())
        by_protocol[protocol] = float(np.mean(emp == th))
    kept = kept_seeds(loss.reshape(G * G, S), spec.protocol).ravel()
    empirical, cell_mean = cell_phases(kept)
    mean_norm, mean_sup = cell_mean(norm), cell_mean(sup)
    agreement = by_protocol[spec.protocol]
    instances = {**table, "final_loss": loss, "extra_norm": norm,
                 "extra_superposition": sup, "extra_dimensionality": dim, "phase": [metrics.PHASES[k] for k in phase],
                 "kept": kept}
    cells = {"density_index": di.ravel(), "importance_index": ri.ravel(), "density": d[di.ravel()],
             "rel_importance": r[ri.ravel()], "empirical_phase": [metrics.PHASES[k] for k in empirical],
             "theory_phase": [metrics.PHASES[k] for k in th], "match": empirical == th,
             "mean_extra_norm": mean_norm, "mean_extra_superposition": mean_sup,
             "mean_extra_dimensionality": cell_mean(dim), "mean_final_loss": cell_mean(loss),
             "seeds_kept": kept.reshape(G * G, S).sum(1)}
    return instances, cells, agreement, by_protocol


def environment(device: str) -> dict:
    import numpy
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "numpy": numpy.__version__, "device": device}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def run(spec: PhaseDiagramSpec, out: Path, progress: bool = True, log=print, checkpoint_every_s: float = 30.0,
        threads: int | None = None) -> dict:
    """Train (or resume) the sweep, analyse it, write every output. Returns the summary dict.

    The run directory is locked for the duration, so two processes never train into it at once."""
    t0 = time.perf_counter()
    run_dir = RunDir.open(out, spec.to_dict())
    try:
        return _train_and_write(spec, run_dir, t0, progress, log, checkpoint_every_s, threads)
    finally:
        run_dir.close()


def _train_and_write(spec: PhaseDiagramSpec, run_dir: RunDir, t0: float, progress, log, checkpoint_every_s,
                     threads) -> dict:
    timing = train_all(spec, run_dir, progress=progress, log=log, checkpoint_every_s=checkpoint_every_s,
                       threads=threads)
    parts = [run_dir.load_chunk(i) for i in range(timing["n_chunks"])]
    W = torch.cat([p["W"] for p in parts])
    b = torch.cat([p["b"] for p in parts])
    loss = torch.cat([p["loss"] for p in parts]).numpy()
    instances, cells, agreement, by_protocol = analyse(spec, W, loss)
    write_parquet(run_dir.root / "instances.parquet", instances)
    write_parquet(run_dir.root / "cells.parquet", cells)
    write_tensors(run_dir.root / "weights.safetensors", {"W": W, "b": b},
                  metadata={"layout": "W (instances, n_hidden, n_features); rows as instances.parquet"})
    d, r = spec.axes()
    G = spec.grid
    codes = {p: k for k, p in enumerate(metrics.PHASES)}
    emp = np.array([codes[p] for p in cells["empirical_phase"]]).reshape(G, G)
    th = np.array([codes[p] for p in cells["theory_phase"]]).reshape(G, G)
    title = f"Phase change {spec.features}->{spec.features - 1} (n={spec.features}, m={spec.features - 1})"
    plots.phase_diagram(run_dir.figures / "phase_diagram.png", d, r, emp, th, title, agreement)
    device = backends.default_device(spec.backend)
    summary = {"experiment": NAME, "agreement": agreement, "protocol": spec.protocol,
               "agreement_by_protocol": by_protocol, "n_instances": spec.n_instances,
               "grid_cells": G * G, "wall_seconds": time.perf_counter() - t0, **timing,
               "backend": spec.backend, "environment": environment(device),
               "phase_counts": {p: int((emp == k).sum()) for k, p in enumerate(metrics.PHASES)},
               "theory_phase_counts": {p: int((th == k).sum()) for k, p in enumerate(metrics.PHASES)}}
    write_json(run_dir.root / "summary.json", summary)
    return summary
