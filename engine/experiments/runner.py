"""The one runner of every experiment: chunk plan, training on a backend, progress, mid-chunk
checkpoints, resume, lock, environment and summary.json. Experiments only say what to train
(jobs) and what to make of it (analyse); see engine/experiments/base.py.

The chunk plan (backend, device, data stream, chunk size per job) is decided once, when a run
directory is created, and recorded in spec.json under ``plan``; a resume reads it back, so it
trains exactly the chunks an uninterrupted run would have, on any machine. Data streams: the
fused backends (cpu, triton) draw every batch from the Philox stream keyed by (seed, instance,
step), so they are interchangeable on resume; the torch backend draws from torch's generator,
seeded per chunk and different on CPU and CUDA, so its runs resume on the recorded device only
(drawing the reference's batches from Philox in torch costs ~8x its sampling time, ~3x its whole
step at K=10,000, n=2, measured on the 2-core EPYC: not worth making the reference that slow).
"""
from __future__ import annotations

import json
import math
import shlex
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import backends
from ..checkpoint import Checkpoint, next_step
from ..errors import SpecError
from ..store import RunDir, read_tensors, write_json, write_tensors, write_text
from ..train import default_chunk_size, plan_chunks
from .base import FUSED_BACKENDS, Experiment, Job, JobResult, option_name


def data_stream(backend: str, device: str) -> str:
    """Name of the stream a backend draws batches from: 'philox' or 'torch-<device type>'."""
    return "philox" if backend in FUSED_BACKENDS else f"torch-{torch.device(device).type}"


def auto_chunk_size(job: Job, backend: str, device: str) -> int:
    """Instances per chunk within memory. The torch backend's cost per instance-step barely depends
    on the chunk size, so it uses at least 8 chunks (results appear early); the fused backends want
    every instance at once (to fill a GPU or every core) and checkpoint inside a chunk."""
    mem = default_chunk_size(job.model, job.train, backend, device)
    if backend in FUSED_BACKENDS:
        return max(1, min(mem, job.n_instances))
    return max(1, min(mem, math.ceil(job.n_instances / 8)))


def make_plan(spec, jobs: list[Job]) -> dict:
    """The chunk plan this machine would choose for a new run of ``spec``."""
    device = backends.default_device(spec.backend)
    return {"backend": spec.backend, "device": device, "data_stream": data_stream(spec.backend, device),
            "chunk_size": {j.name: spec.chunk_size or auto_chunk_size(j, spec.backend, device) for j in jobs}}


def reconcile_plan(recorded: dict, proposed: dict, spec) -> dict:
    """The plan a resumed run trains with: the recorded one, on this invocation's backend when that
    draws the same data. Raises SpecError naming the option when the two cannot be reconciled."""
    if not recorded:
        return proposed
    if recorded["data_stream"] != proposed["data_stream"]:
        was = recorded["backend"]
        if recorded["data_stream"] == "philox" or proposed["data_stream"] == "philox":
            allowed = "cpu or triton" if recorded["data_stream"] == "philox" else "torch"
            raise SpecError("backend", f"{allowed} to resume this run (it was started on {was}, which draws other "
                                       "data than the chosen backend)", spec.backend)
        if recorded["data_stream"] == "torch-cuda" and not torch.cuda.is_available():
            raise SpecError("--out", "a run this machine can resume (it was started on the torch backend on a "
                                     "CUDA GPU, whose data stream needs one)", spec.backend)
    if spec.chunk_size and any(size != spec.chunk_size for size in recorded["chunk_size"].values()):
        sizes = sorted(set(recorded["chunk_size"].values()))
        raise SpecError("chunk_size", f"{' or '.join(map(str, sizes))} on this run directory (the chunk plan "
                                      "recorded in spec.json; it cannot change once the run has started)",
                        spec.chunk_size)
    device = recorded["device"] if recorded["backend"] == "torch" else proposed["device"]
    return {**recorded, "backend": spec.backend, "device": device}


def environment(device: str, threads: int | None = None) -> dict:
    import numpy

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "numpy": numpy.__version__, "device": device}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    else:
        env["cpu"] = platform.processor() or platform.machine()
        env["threads"] = threads or torch.get_num_threads()
    return env


def _train_jobs(exp: Experiment, jobs: list[Job], plan: dict, run: RunDir, progress: bool, log,
                checkpoint_every_s: float, threads: int | None) -> tuple[dict, dict]:
    """Train every chunk not already in the run directory; returns (results per job, timing)."""
    backend, device = plan["backend"], plan["device"]
    fn = backends.train_chunk_fn(backend)
    chunks = {j.name: plan_chunks(j.n_instances, plan["chunk_size"][j.name]) for j in jobs}
    todo = [(j, i) for j in jobs for i in range(len(chunks[j.name])) if not run.has_chunk(i, j.name)]
    n_chunks = sum(len(c) for c in chunks.values())
    if len(todo) < n_chunks:
        log(f"resuming: {n_chunks - len(todo)} of {n_chunks} chunks already trained in {run.root}")
    for j in jobs:  # a partial (or snapshot) of a chunk that was saved is stale
        for i in range(len(chunks[j.name])):
            if run.has_chunk(i, j.name):
                run.partial_path(i, j.name).unlink(missing_ok=True)
                for old in run.chunks.glob(f"{j.name}_{i:05d}.snapshot_*"):
                    old.unlink()
    compile_seconds = 0.0
    if backend == "cpu" and todo:
        from .. import cpu_backend
        cpu_backend.set_threads(threads or cpu_backend.max_threads())
        compile_seconds = cpu_backend.compile()
        if compile_seconds > 2:
            log(f"cpu backend: compiled the training loop in {compile_seconds:.0f} s (cached on disk from now on)")
    total = sum((chunks[j.name][i][1] - chunks[j.name][i][0]) * j.train.steps for j, i in todo)
    instance_steps, seconds = total, 0.0
    with tqdm(total=total, unit="inst-step", unit_scale=True, disable=not progress,
              desc=f"{exp.name} [{backend}]") as bar:
        for job, i in todo:
            start, stop = chunks[job.name][i]
            k = stop - start
            ckpt = Checkpoint(run.partial_path(i, job.name), checkpoint_every_s)
            instance_steps -= next_step(ckpt.load()) * k  # restored, not trained now
            t0 = time.perf_counter()
            W, b, loss, hist = fn(job.model, job.data.feature_probability[start:stop],
                                  job.data.importance[start:stop], job.train, start, device=device,
                                  history_every=job.history_every, on_step=lambda s, k=k: bar.update(s * k),
                                  checkpoint=ckpt, snapshot_steps=job.snapshot_steps,
                                  on_snapshot=lambda t, W, b, job=job, i=i: _save_snapshot(run, job, i, t, W, b))
            seconds += time.perf_counter() - t0
            tensors = {"W": W, "b": b, "loss": loss}
            if hist is not None:
                tensors["history"] = hist
            if job.snapshot_steps:
                snaps = [read_tensors(run.snapshot_path(i, job.name, t)) for t in job.snapshot_steps]
                tensors["W_snapshots"] = torch.stack([s["W"] for s in snaps])
                tensors["b_snapshots"] = torch.stack([s["b"] for s in snaps])
            run.save_chunk(i, tensors, job.name)
            ckpt.remove()  # after the chunk is safe: a kill in between leaves a stale partial, ignored
            for t in job.snapshot_steps:
                run.snapshot_path(i, job.name, t).unlink(missing_ok=True)
    results = {j.name: _load_job(run, j, len(chunks[j.name])) for j in jobs}
    timing = {"n_chunks": n_chunks, "chunks_trained": len(todo), "chunks_resumed": n_chunks - len(todo),
              "train_seconds": seconds, "compile_seconds": compile_seconds, "instance_steps_trained": instance_steps,
              "instance_steps_per_second": instance_steps / seconds if seconds else None}
    return results, timing


def _save_snapshot(run: RunDir, job: Job, index: int, step: int, W, b) -> None:
    write_tensors(run.snapshot_path(index, job.name, step), {"W": W, "b": b})


def _load_job(run: RunDir, job: Job, n_chunks: int) -> JobResult:
    parts = [run.load_chunk(i, job.name) for i in range(n_chunks)]
    cat = lambda key, dim=0: torch.cat([p[key] for p in parts], dim=dim) if key in parts[0] else None  # noqa: E731
    res = JobResult(cat("W"), cat("b"), cat("loss"), cat("history", 1), tuple(job.snapshot_steps),
                    cat("W_snapshots", 1), cat("b_snapshots", 1))
    if res.W.shape[0] != job.n_instances:
        raise SpecError("--out", f"a run directory whose chunks hold {job.n_instances} {job.name} instances "
                                 f"(they hold {res.W.shape[0]})", str(run.root))
    return res


def run(exp: Experiment, spec, out: Path, progress: bool = True, log=print, checkpoint_every_s: float = 30.0,
        threads: int | None = None, preset: str | None = None) -> dict:
    """Train (or resume) ``spec``'s jobs into ``out``, analyse them, write every output; returns the
    summary dict (also in out/summary.json). The directory is locked while this runs.

    preset: the preset name the spec came from (recorded in spec.json, so ``--preset auto`` resumes it)."""
    t0 = time.perf_counter()
    jobs = exp.jobs(spec)
    proposed = make_plan(spec, jobs)
    analysis = {k: getattr(spec, k) for k in exp.analysis_fields}
    run_dir = RunDir.open(out, {**exp.identity(spec), "preset": preset, "analysis": analysis, "plan": proposed})
    try:
        recorded = run_dir.recorded["plan"]
        if _all_trained(run_dir, jobs, recorded):
            plan = recorded  # nothing to train: analyse what is there, whatever this machine could train
        else:
            plan = reconcile_plan(recorded, proposed, spec)
            if plan["backend"] != recorded["backend"]:
                log(f"note: this run was started on {recorded['backend']}; resuming on {plan['backend']} "
                    "(same data stream; results agree to float32 rounding)")
        results, timing = _train_jobs(exp, jobs, plan, run_dir, progress, log, checkpoint_every_s, threads)
        diverged = report_diverged(results, log)
        analysis = exp.analyse(spec, results, run_dir)
        checks = analysis.pop("checks", [])
        summary = {"experiment": exp.name, **analysis, "checks": checks,
                   "checks_passed": sum(c["passed"] for c in checks), "checks_total": len(checks),
                   "n_instances": sum(j.n_instances for j in jobs), "diverged_instances": diverged,
                   "wall_seconds": time.perf_counter() - t0,
                   **timing, "backend": plan["backend"], "plan": plan, "preset": run_dir.recorded.get("preset"),
                   "environment": environment(plan["device"], threads),
                   "rerun": rerun_command(exp, spec, run_dir.root)}
        if timing["chunks_trained"] == 0:
            _keep_training_record(summary, run_dir.root / "summary.json")
        write_json(run_dir.root / "summary.json", summary)
        write_text(run_dir.root / "README.txt", readme_text(exp, spec, run_dir.root, summary))
        return summary
    finally:
        run_dir.close()


def report_diverged(results: dict, log) -> dict:
    """{job: number of diverged instances (NaN/inf loss or weights)}; prints one line per job that
    has any. The analyses flag them (column ``diverged``) and leave them out (JobResult.diverged)."""
    counts = {name: int(res.diverged.sum()) for name, res in results.items()}
    for name, n in counts.items():
        if n:
            K = len(res.loss) if (res := results[name]) is not None else 0
            log(f"warning: {n} of {K} {name} instances diverged (NaN/inf loss or weights): flagged 'diverged' "
                "in the tables and left out of the analysis (a lower --lr usually trains them)")
    return counts


TRAINING_RECORD = ("train_seconds", "compile_seconds", "instance_steps_trained", "instance_steps_per_second",
                   "wall_seconds", "backend", "environment")


def _keep_training_record(summary: dict, path: Path) -> None:
    """A re-run that trained nothing (re-analysis, or the same command again) keeps the timing,
    backend and environment of the run that trained the models, instead of reporting 0 s."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(old, dict) or not old.get("train_seconds"):
        return
    summary["reanalysis"] = {k: summary[k] for k in ("wall_seconds", "environment")}
    summary.update({k: old[k] for k in TRAINING_RECORD if k in old})


def _all_trained(run: RunDir, jobs: list[Job], plan: dict) -> bool:
    return all(run.has_chunk(i, j.name) for j in jobs
               for i in range(len(plan_chunks(j.n_instances, plan["chunk_size"][j.name]))))


def recorded_run(out: Path) -> dict:
    """An existing run directory's spec.json as a dict ({} if new or unreadable)."""
    try:
        rec = json.loads((Path(out) / "spec.json").read_text())
        return rec if isinstance(rec, dict) else {}
    except (OSError, ValueError):
        return {}


def rerun_command(exp: Experiment, spec, out: Path) -> str:
    """The shell command that re-runs (or resumes) this exact spec, from any directory."""
    args = [f"{option_name(k)} {shlex.quote(str(v))}" for k, v in spec.fields_dict().items()
            if k != "chunk_size" or v]
    return f"supbench run {exp.name} " + " ".join(args) + f" --out {shlex.quote(str(Path(out).resolve()))}"


def readme_text(exp: Experiment, spec, out: Path, summary: dict) -> str:
    lines = [f"{exp.name}: {exp.title}", "", "Re-run or resume (bit-identical on the recorded plan):",
             "    " + rerun_command(exp, spec, out), "", "Files: spec.json (what was run, and the chunk plan), "
             "summary.json (results, paper checks, timing, environment), " + ", ".join(exp.outputs), "",
             "Paper checks:"]
    lines += [f"  [{'pass' if c['passed'] else 'FAIL'}] {c['name']}: {c['claim']} (measured {format_measured(c['measured'])}; "
              f"expected {c['expected']})" for c in summary["checks"]]
    return "\n".join(lines) + "\n"


def format_measured(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_measured(x) for x in v) + "]"
    return str(v)

