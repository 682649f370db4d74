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

from .. import backends, machine
from ..checkpoint import Checkpoint, next_step
from ..errors import SpecError, TrainingDiverged
from ..store import DamagedFile, RunDir, read_checked, spec_hash, write_json, write_tensors, write_text
from ..train import default_chunk_size, plan_chunks
from . import memory
from .base import FUSED_BACKENDS, Experiment, Job, JobResult, divergence_check, option_name, status_word


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
    """The chunk plan this machine would choose for a new run of ``spec``: backend, device, data
    stream, chunk size per job and the chunks themselves, {job: [[start, stop], ...]}."""
    device = backends.default_device(spec.backend)
    sizes = {j.name: spec.chunk_size or auto_chunk_size(j, spec.backend, device) for j in jobs}
    return {"backend": spec.backend, "device": device, "data_stream": data_stream(spec.backend, device),
            "chunk_size": sizes, "chunks": {j.name: [list(c) for c in plan_chunks(j.n_instances, sizes[j.name])]
                                            for j in jobs}}


def replan(n_instances: int, size: int, trained: list) -> list[list[int]]:
    """Chunks covering range(n_instances): the ``trained`` [start, stop) ranges as they are, every
    gap between them cut into chunks of ``size``."""
    out, at = [], 0
    for a, b in sorted(map(tuple, trained)) + [(n_instances, n_instances)]:
        out += [[s, min(s + size, a)] for s in range(at, a, size)]
        if a < b:
            out.append([a, b])
        at = b
    return out


def reconcile_plan(recorded: dict, proposed: dict, spec, trained: dict | None = None) -> dict:
    """The plan a resumed run trains with: the recorded one, on this invocation's backend when that
    draws the same data. An explicit chunk size that differs from the recorded one re-plans the
    chunks not yet trained (``trained``: {job: [[start, stop], ...]} already on disk) and keeps the
    trained ones. Raises SpecError naming the option when the two cannot be reconciled."""
    if not recorded:
        return proposed
    if "chunks" not in recorded:
        raise SpecError("--out", "a run directory made by this version of supbench (this one predates chunk "
                                 "hashes; start a new --out)")
    if recorded["data_stream"] != proposed["data_stream"]:
        was = recorded["backend"]
        if recorded["data_stream"] == "philox" or proposed["data_stream"] == "philox":
            allowed = "cpu or triton" if recorded["data_stream"] == "philox" else "torch"
            raise SpecError("backend", f"{allowed} to resume this run (it was started on {was}, which draws other "
                                       "data than the chosen backend)", spec.backend)
        if recorded["data_stream"] == "torch-cuda" and not torch.cuda.is_available():
            raise SpecError("--out", "a run this machine can resume (it was started on the torch backend on a "
                                     "CUDA GPU, whose data stream needs one)", spec.backend)
    device = recorded["device"] if recorded["backend"] == "torch" else proposed["device"]
    plan = {**recorded, "backend": spec.backend, "device": device,
            "chunk_size": dict(recorded["chunk_size"]), "chunks": {k: [list(c) for c in v] for k, v in recorded["chunks"].items()}}
    if spec.chunk_size:
        for job, size in recorded["chunk_size"].items():
            if size != spec.chunk_size:
                n = recorded["chunks"][job][-1][1] if recorded["chunks"][job] else 0
                plan["chunk_size"][job] = spec.chunk_size
                plan["chunks"][job] = replan(n, spec.chunk_size, (trained or {}).get(job, []))
    return plan


def check_plan(plan, jobs: list[Job], path: Path) -> None:
    """Raise SpecError naming spec.json unless its plan is whole: a backend, device and data stream,
    and for every job chunks that cover its instances exactly, in order."""
    def bad(why):
        raise SpecError("--out", f"a run directory with a whole chunk plan ({path} is damaged: {why}; move the "
                                 "directory aside to start over)")
    if not isinstance(plan, dict):
        bad("no plan")
    if "chunks" not in plan:
        raise SpecError("--out", f"a run directory made by this version of supbench ({path.parent} predates chunk "
                                 "hashes; start a new --out)")
    for key in ("backend", "device", "data_stream", "chunk_size"):
        if key not in plan:
            bad(f"the plan has no {key}")
    for j in jobs:
        chunks = plan["chunks"].get(j.name) if isinstance(plan["chunks"], dict) else None
        ok = isinstance(chunks, list) and all(isinstance(c, list) and len(c) == 2 for c in chunks)
        ok = ok and bool(chunks) and chunks[0][0] == 0 and chunks[-1][1] == j.n_instances and all(
            c[0] < c[1] for c in chunks) and all(x[1] == y[0] for x, y in zip(chunks, chunks[1:]))
        if not ok:
            bad(f"the chunks of {j.name} do not cover its {j.n_instances} instances")


def chunk_key(identity: dict, job: str, start: int, stop: int, stream: str) -> str:
    """The spec hash every file of one chunk carries: what it computes (the run's identity), which
    instances, and the data stream they were drawn from (cpu and triton share one)."""
    return spec_hash({"identity": identity, "job": job, "range": [start, stop], "data_stream": stream})


def environment(device: str, threads: int | None = None) -> dict:
    """summary.json's "environment": versions (engine.machine.versions), supbench's git commit, the
    device, and the GPU's name or the CPU's model and the threads that trained."""
    env = {"python": sys.version.split()[0], "platform": platform.platform(), **machine.versions(),
           "supbench_commit": machine.git_commit(), "device": device}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    else:
        env["cpu"] = machine.cpu_model()
        env["threads"] = threads or torch.get_num_threads()
    return env


class ChunkStore:
    """The chunks of one run directory: which are trained (every file validated: readable, this
    spec's hash, the right number of instances), saving new ones once, loading a job's results.

    identity: the run's identity (Experiment.identity); stream: the plan's data stream.
    """

    def __init__(self, run: RunDir, jobs: list[Job], identity: dict, stream: str, log):
        self.run, self.identity, self.stream, self.log = run, identity, stream, log
        self.jobs = {j.name: j for j in jobs}
        self.loaded: dict[tuple[str, int, int], dict] = {}

    def key(self, job: str, start: int, stop: int) -> str:
        return chunk_key(self.identity, job, start, stop, self.stream)

    def scan(self) -> dict:
        """Validate every finished chunk file on disk: {job: [[start, stop], ...]} of the good ones.
        A damaged file is named, deleted and so retrained; another spec's file is refused
        (SpecMismatch): the directory mixes two runs."""
        trained = {}
        for name in self.jobs:
            trained[name] = []
            for (a, b), path in sorted(self.run.chunk_files(name).items()):
                if self._read(name, a, b, path) is not None:
                    trained[name].append([a, b])
        return trained

    def _read(self, job: str, a: int, b: int, path: Path) -> dict | None:
        try:
            tensors = read_checked(path, self.key(job, a, b))
            shapes = self.jobs[job].model.param_shapes()
            if tuple(tensors["loss"].shape) != (b - a,) or any(tuple(tensors[k].shape) != (b - a, *s)
                                                                for k, s in shapes.items()):
                raise DamagedFile(f"{path} holds {tuple(tensors['loss'].shape)} losses or parameters of another "
                                  f"shape, not {b - a} instances of {shapes}")
        except (DamagedFile, KeyError) as e:
            self.log(f"warning: {e if isinstance(e, DamagedFile) else f'{path} is damaged (no {e})'}; retraining it")
            path.unlink(missing_ok=True)
            return None
        self.loaded[(job, a, b)] = tensors
        return tensors

    def has(self, job: str, a: int, b: int) -> bool:
        return (job, a, b) in self.loaded

    def save(self, job: str, a: int, b: int, tensors: dict) -> bool:
        """Write a finished chunk once; False (and nothing written) when it is already there, e.g. a
        retried task's duplicate completion."""
        if self.has(job, a, b):
            return False
        write_tensors(self.run.chunk_path(job, a, b), tensors, metadata={"spec_hash": self.key(job, a, b)})
        self.loaded[(job, a, b)] = tensors
        return True

    def result(self, job: Job, chunks: list) -> JobResult:
        parts = [self.loaded[(job.name, a, b)] for a, b in chunks]
        cat = lambda key, dim=0: torch.cat([p[key] for p in parts], dim=dim) if key in parts[0] else None  # noqa: E731
        params = {k: cat(k) for k in job.model.param_shapes()}
        return JobResult(params.get("W"), params.get("b"), cat("loss"), cat("history", 1), tuple(job.snapshot_steps),
                         cat("W_snapshots", 1), cat("b_snapshots", 1), params=params)


def chunk_inputs(job: Job, start: int, stop: int) -> dict:
    """What a backend's train_chunk needs for instances [start, stop) of ``job`` (no run directory)."""
    return dict(model=job.model, p=job.data.feature_probability[start:stop], importance=job.data.importance[start:stop],
                train=job.train, first_instance=start, history_every=job.history_every)


def train_one(fn, job: Job, start: int, stop: int, device: str, on_step=None, checkpoint=None,
              on_snapshot=None, snapshots: dict | None = None) -> dict:
    """Train one chunk; the tensors its file holds (the model's parameters by name, loss, history?,
    W/b_snapshots?).
    snapshots: {step: {"W", "b"}} recorded before a resume (the rest come through on_snapshot)."""
    got = dict(snapshots or {})

    def keep(t, W, b):
        got[t] = {"W": W, "b": b}
        if on_snapshot is not None:
            on_snapshot(t, W, b)

    inp = chunk_inputs(job, start, stop)
    params, loss, hist = fn(inp["model"], inp["p"], inp["importance"], inp["train"], start, device=device,
                          history_every=job.history_every, on_step=on_step, checkpoint=checkpoint,
                          snapshot_steps=job.snapshot_steps, on_snapshot=keep if job.snapshot_steps else None,
                          sets=job.data.sets, examples=job.data.examples)
    tensors = {**params, "loss": loss}
    if hist is not None:
        tensors["history"] = hist
    if job.snapshot_steps:
        tensors["W_snapshots"] = torch.stack([got[t]["W"] for t in job.snapshot_steps])
        tensors["b_snapshots"] = torch.stack([got[t]["b"] for t in job.snapshot_steps])
    return tensors


def _restored_snapshots(run: RunDir, store: ChunkStore, job: Job, a: int, b: int, ckpt: Checkpoint) -> dict:
    """Snapshots saved before a chunk's checkpoint; if one is missing or bad, the checkpoint is
    discarded too (the chunk then trains from its start and records every snapshot again)."""
    saved = ckpt.load()
    step, key, got = next_step(saved), store.key(job.name, a, b), {}
    for t in job.snapshot_steps:
        path = run.snapshot_path(job.name, a, b, t)
        if t <= step and saved is not None:
            try:
                got[t] = read_checked(path, key)
                continue
            except (FileNotFoundError, DamagedFile, SpecError):
                store.log(f"warning: snapshot {path.name} missing or damaged; chunk {job.name} [{a}, {b}) "
                          "trains from its start")
                ckpt.remove()
                return _restored_snapshots(run, store, job, a, b, ckpt)
        path.unlink(missing_ok=True)  # a snapshot after the checkpoint is recorded again
    return got


def is_out_of_memory(e: BaseException) -> bool:
    """An allocation failure: MemoryError (numpy, numba), torch.OutOfMemoryError (CUDA), or the plain
    RuntimeError torch raises when a CPU allocation fails ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "out of memory" in str(e).lower())


def split_chunk(run: RunDir, plan: dict, job: Job, a: int, b: int, device: str, log) -> list[tuple[int, int]]:
    """Replace chunk [a, b) of ``job`` by its two halves in ``plan`` and in spec.json (only the chunk
    list changes there), drop its checkpoint and snapshots; returns the halves. One instance that
    does not fit is a one-line error."""
    if b - a == 1:
        raise SpecError("memory", f"enough for one instance of {job.name} (it alone ran out of memory on {device})")
    mid = (a + b) // 2
    chunks = plan["chunks"][job.name]
    k = chunks.index([a, b])
    chunks[k:k + 1] = [[a, mid], [mid, b]]
    run.record_plan({**run.recorded["plan"], "chunks": plan["chunks"]})
    run.partial_path(job.name, a, b).unlink(missing_ok=True)
    for t in job.snapshot_steps:
        run.snapshot_path(job.name, a, b, t).unlink(missing_ok=True)
    log(f"chunk {job.name} [{a}, {b}) ran out of memory on {device}: split in two and retried "
        "(the new plan is recorded in spec.json)")
    return [(a, mid), (mid, b)]


def _train_jobs(exp: Experiment, jobs: list[Job], plan: dict, run: RunDir, store: ChunkStore, progress: bool,
                log, checkpoint_every_s: float, threads: int | None, on_ray: bool = False) -> tuple[dict, dict]:
    """Train every chunk of the plan not already in the run directory; returns (results per job,
    timing). A chunk that runs out of memory is split in two (recorded in spec.json's plan) and
    retried. on_ray: the chunks are Ray tasks (engine/experiments/distributed.py)."""
    backend, device = plan["backend"], plan["device"]
    todo = [(j, a, b) for j in jobs for a, b in plan["chunks"][j.name] if not store.has(j.name, a, b)]
    n_chunks = sum(len(plan["chunks"][j.name]) for j in jobs)
    if len(todo) < n_chunks:
        log(f"resuming: {n_chunks - len(todo)} of {n_chunks} chunks already trained in {run.root}")
    _remove_stale(run, jobs, plan, store)
    if on_ray:
        from . import distributed
        trained, seconds = distributed.train_chunks(
            exp, jobs, plan, store, todo, progress, log,
            split=lambda job, a, b: split_chunk(run, plan, job, a, b, device, log))
        steps = sum((b - a) * j.train.steps for j, a, b in todo)
        resumed = n_chunks - len(todo)
        n_chunks = sum(len(plan["chunks"][j.name]) for j in jobs)  # out-of-memory splits add chunks
        return ({j.name: store.result(j, plan["chunks"][j.name]) for j in jobs},
                {"n_chunks": n_chunks, "chunks_trained": trained, "chunks_resumed": resumed, "chunks_from_checkpoint": 0,
                 "train_seconds": seconds, "compile_seconds": 0.0, "instance_steps_trained": steps,
                 "instance_steps_per_second": steps / seconds if seconds else None, "ray": True})
    fn = backends.train_chunk_fn(backend)
    compile_seconds = 0.0
    if backend == "cpu" and todo:
        from .. import cpu_backend
        cpu_backend.set_threads(threads or cpu_backend.max_threads())
        paths = sorted({cpu_backend.kernel_path(j.model, batch=j.train.batch_size) for j, _, _ in todo})
        compile_seconds = sum(cpu_backend.compile(path, log=log if progress else None) for path in paths)
        if compile_seconds > 2:
            log(f"cpu backend: compiled the training loop in {compile_seconds:.0f} s (cached on disk from now on)")
    total = sum((b - a) * j.train.steps for j, a, b in todo)
    instance_steps, seconds, trained, from_checkpoint = total, 0.0, 0, 0
    with backends.torch_threads(threads if backend == "torch" else None, device), \
            tqdm(total=total, unit="inst-step", unit_scale=True, disable=not progress,
                 desc=f"{exp.name} [{backend}]") as bar:
        while todo:
            job, a, b = todo.pop(0)
            key = store.key(job.name, a, b)
            ckpt = Checkpoint(run.partial_path(job.name, a, b), checkpoint_every_s, key=key, steps=job.train.steps,
                              on_discard=log)
            snaps = _restored_snapshots(run, store, job, a, b, ckpt)
            done_before = next_step(ckpt.load())
            instance_steps -= done_before * (b - a)  # restored, not trained now
            if done_before:
                log(f"resuming: chunk {job.name} [{a}, {b}) from its checkpoint at step {done_before:,} of "
                    f"{job.train.steps:,}")
            t0, progressed = time.perf_counter(), [0]

            def on_step(s, k=b - a, progressed=progressed):
                progressed[0] += s * k
                bar.update(s * k)
            try:
                tensors = train_one(fn, job, a, b, device, on_step=on_step,
                                    checkpoint=ckpt, snapshots=snaps,
                                    on_snapshot=lambda t, W, b_, job=job, a=a, b=b: write_tensors(
                                        run.snapshot_path(job.name, a, b, t), {"W": W, "b": b_},
                                        metadata={"spec_hash": store.key(job.name, a, b)}))
            except (MemoryError, RuntimeError) as e:
                if not is_out_of_memory(e):
                    raise
                halves = split_chunk(run, plan, job, a, b, device, log)
                instance_steps += done_before * (b - a)
                bar.total += progressed[0]  # the halves train those steps again
                bar.refresh()
                todo[:0] = [(job, s, t) for s, t in halves]
                continue
            seconds += time.perf_counter() - t0
            store.save(job.name, a, b, tensors)
            trained += 1
            from_checkpoint += done_before > 0  # counted once saved: a chunk split for memory restarts at 0
            ckpt.remove()  # after the chunk is safe: a kill in between leaves a stale partial, ignored
            for t in job.snapshot_steps:
                run.snapshot_path(job.name, a, b, t).unlink(missing_ok=True)
    n_chunks = sum(len(plan["chunks"][j.name]) for j in jobs)
    results = {j.name: store.result(j, plan["chunks"][j.name]) for j in jobs}
    timing = {"n_chunks": n_chunks, "chunks_trained": trained, "chunks_resumed": n_chunks - trained,
              "chunks_from_checkpoint": from_checkpoint,
              "train_seconds": seconds, "compile_seconds": compile_seconds, "instance_steps_trained": instance_steps,
              "instance_steps_per_second": instance_steps / seconds if seconds else None}
    return results, timing


def _remove_stale(run: RunDir, jobs: list[Job], plan: dict, store: ChunkStore) -> None:
    """Checkpoints and snapshots of chunks that are trained or no longer in the plan."""
    for j in jobs:
        live = {(a, b) for a, b in plan["chunks"][j.name] if not store.has(j.name, a, b)}
        for path in run.chunks.glob(f"{j.name}_*-*.*.safetensors"):
            rng = path.name[len(j.name) + 1:].split(".")[0]
            a, _, b = rng.partition("-")
            if a.isdigit() and b.isdigit() and (int(a), int(b)) not in live:
                path.unlink(missing_ok=True)


def run(exp: Experiment, spec, out: Path, progress: bool = True, log=print, checkpoint_every_s: float = 30.0,
        threads: int | None = None, preset: str | None = None, ray: str | None = None) -> dict:
    """Train (or resume) ``spec``'s jobs into ``out``, analyse them, write every output; returns the
    summary dict (also in out/summary.json). The directory is locked while this runs.

    preset: the preset name the spec came from (recorded in spec.json, so ``--preset auto`` resumes it).
    ray: train the chunks as Ray tasks: 'local' (start a local Ray instance with ``threads`` CPUs,
        default all) or a cluster address; the result equals a local run's with the same plan."""
    t0 = time.perf_counter()
    memory.check_fits(exp.job_sizes(spec), spec, spec.backend, backends.default_device(spec.backend))
    try:
        jobs = exp.jobs(spec)
    except MemoryError:
        raise SpecError("memory", "enough to build the sweep (this machine ran out of memory listing its "
                                  "instances; use fewer)", None) from None
    proposed = make_plan(spec, jobs)
    if ray is not None:
        from . import distributed
        resources = distributed.connect(ray, threads, log)
        if spec.backend == "triton":
            proposed["device"] = "cuda"  # the workers' GPUs, whatever the driver has
        distributed.check_resources(spec.backend, proposed["device"], resources)
        if spec.backend in FUSED_BACKENDS and not spec.chunk_size:
            sizes = {j.name: distributed.chunk_size_for(j.n_instances, spec.backend, resources) for j in jobs}
            proposed = {**proposed, "chunk_size": sizes,
                        "chunks": {j.name: [list(c) for c in plan_chunks(j.n_instances, sizes[j.name])] for j in jobs}}
    analysis = {k: getattr(spec, k) for k in exp.analysis_fields}
    identity = exp.identity(spec)
    run_dir = RunDir.open(out, {**identity, "preset": preset, "analysis": analysis, "plan": proposed})
    try:
        recorded = run_dir.recorded.get("plan")
        check_plan(recorded, jobs, run_dir.root / "spec.json")
        store = ChunkStore(run_dir, jobs, identity, recorded["data_stream"], log)
        trained = store.scan()
        if all(store.has(j.name, a, b) for j in jobs for a, b in recorded["chunks"][j.name]):
            plan = recorded  # nothing to train: analyse what is there, whatever this machine could train
            if spec.backend != recorded["backend"]:
                log(f"note: every model of this run is already trained (on {recorded['backend']}): nothing "
                    "trains here, the run is analysed again")
        else:
            plan = reconcile_plan(recorded, proposed, spec, trained)
            if plan["chunks"] != recorded["chunks"]:
                log("note: the chunks not yet trained are re-planned at --chunk-size "
                    f"{spec.chunk_size} (recorded in spec.json)")
                run_dir.record_plan({**recorded, "chunk_size": plan["chunk_size"], "chunks": plan["chunks"]})
            if plan["backend"] != recorded["backend"]:
                log(f"note: this run was started on {recorded['backend']}; resuming on {plan['backend']} "
                    "(same data stream; results agree to float32 rounding)")
                # Recorded, so the re-run command and --backend auto name the backend that trains now,
                # and README.txt says the run is no longer one backend's, bit for bit.
                used = list(recorded.get("backends_used", [recorded["backend"]]))
                plan["backends_used"] = used + [plan["backend"]] if plan["backend"] not in used else used
                run_dir.record_plan({**run_dir.recorded["plan"], "backend": plan["backend"], "device": plan["device"],
                                     "backends_used": plan["backends_used"]})
        # Analysis-only options that differ from the run's last analysis are said now (a preset's may have
        # changed since the run was made) and recorded once the analysis is written, so a refused resume
        # or an interrupted one leaves spec.json naming the analysis summary.json holds.
        was, now = run_dir.recorded.get("analysis"), json.loads(json.dumps(analysis))
        changed = [k for k in now if isinstance(was, dict) and k in was and was[k] != now[k]]
        if changed:
            after = " ".join(f"{option_name(k)} {now[k]}" for k in changed)
            before = " ".join(f"{option_name(k)} {was[k]}" for k in changed)
            log(f"note: analysed under {after}; this run was last analysed under {before} (pass {before} to keep it)")
        results, timing = _train_jobs(exp, jobs, plan, run_dir, store, progress, log, checkpoint_every_s, threads,
                                      on_ray=ray is not None)
        everything = [name for name, res in results.items() if res.diverged.all()]
        diverged = report_diverged(results, log if not everything else lambda m: None)
        if everything:
            write_json(run_dir.root / "summary.json", {"experiment": exp.name, "diverged_instances": diverged,
                                                        **timing, "plan": plan, "error": "every instance diverged"})
            raise TrainingDiverged(f"every {everything[0]} instance diverged (NaN/inf loss or weights): nothing to "
                                   "analyse; a lower --lr usually trains them")
        if progress:  # the bar has ended; ranking fits and drawing figures can take seconds to a minute
            log(f"{exp.name}: analysing {sum(j.n_instances for j in jobs):,} trained models (checks, tables, figures)")
        # The analysis (torch, float64, on the CPU) keeps to --threads too: on a shared machine torch's
        # default of every core made the float64 ranking several times slower than one thread.
        with backends.torch_threads(threads, "cpu"):
            analysis = exp.analyse(spec, results, run_dir)
        checks = analysis.pop("checks", [])
        if (failed := divergence_check(results)) is not None:
            checks.append(failed)
        summary = {"experiment": exp.name, **analysis, "checks": checks,
                   "checks_passed": sum(c["passed"] is True for c in checks), "checks_total": len(checks),
                   "checks_not_run": sum(c["passed"] is None for c in checks),
                   "n_instances": sum(j.n_instances for j in jobs), "diverged_instances": diverged,
                   "wall_seconds": time.perf_counter() - t0,
                   **timing, "backend": plan["backend"], "plan": plan, "preset": run_dir.recorded.get("preset"),
                   "environment": environment(plan["device"], threads),
                   "rerun": rerun_command(exp, spec, run_dir.root, plan)}
        if timing["chunks_trained"] == 0:
            _keep_training_record(summary, run_dir.root / "summary.json")
        write_json(run_dir.root / "summary.json", summary)
        if was != now:
            run_dir.record("analysis", analysis)  # re-analysed under other analysis-only options
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


def recorded_run(out: Path) -> dict:
    """An existing run directory's spec.json as a dict ({} if new or unreadable)."""
    try:
        rec = json.loads((Path(out) / "spec.json").read_text())
        return rec if isinstance(rec, dict) else {}
    except (OSError, ValueError):
        return {}


def rerun_command(exp: Experiment, spec, out: Path, plan: dict | None = None) -> str:
    """The shell command that re-runs (or resumes) this exact spec, from any directory. With the run's
    ``plan``, its backend and chunk size are the plan's (what trained the models), not this call's:
    a call that only re-analysed a finished run may have named other ones."""
    fields = spec.fields_dict()
    if plan:
        fields["backend"], fields["chunk_size"] = plan["backend"], chunk_size_option(plan, spec.chunk_size)
    args = [f"{option_name(k)} {shlex.quote(str(v))}" for k, v in fields.items() if k != "chunk_size" or v]
    return f"supbench run {exp.name} " + " ".join(args) + f" --out {shlex.quote(str(Path(out).resolve()))}"


def chunk_size_option(plan: dict, asked: int) -> int:
    """The --chunk-size that gives ``plan`` in a new directory (0: none needed, or none can): the one
    size every job was cut at, named where the batches depend on it (the torch backend) or where it
    was asked for (``asked``); 0 for philox data (cpu, triton: the chunking changes nothing) unless
    asked, and for a plan whose jobs were cut at different sizes."""
    sizes = set(plan.get("chunk_size", {}).values())
    if len(sizes) != 1:
        return 0
    size = sizes.pop()
    return size if plan.get("data_stream", "").startswith("torch") or size == asked else 0


def readme_text(exp: Experiment, spec, out: Path, summary: dict) -> str:
    plan = summary.get("plan", {})
    lines = [f"{exp.name}: {exp.title}", "", "Re-run or resume (bit-identical on the recorded plan):",
             "    " + rerun_command(exp, spec, out, plan), ""]
    if len(plan.get("backends_used", ())) > 1:
        lines += [f"Note: this run was trained on {' then '.join(plan['backends_used'])} (resumed on another backend: the",
                  "same batches, results agree to float32 rounding), so the command above reproduces it to float32",
                  "rounding, not bit for bit.", ""]
    if plan.get("data_stream", "").startswith("torch") and (replanned(plan) or not chunk_size_option(plan, 0)):
        why = ("this run's chunk plan changed while it ran (a --chunk-size re-plan or an out-of-memory split),"
               if replanned(plan) else "this run's jobs were cut into chunks of different sizes (no one --chunk-size),")
        lines += [f"Note: {why}",
                  "and the torch backend's batches depend on the chunking: the command above reproduces it bit for bit",
                  "from this directory (its spec.json holds the plan), not in a new one.", ""]
    lines += ["Files: spec.json (what was run, and the chunk plan), "
             "summary.json (results, paper checks, timing, environment), " + ", ".join(exp.outputs), "",
             "Read it in Python (tables, weights, checks):",
             f"    from engine import load_run; run = load_run({str(Path(out).resolve())!r})", "",
             "Paper checks:"]
    lines += [f"  [{status_word(c)}] {check_line(c)}" for c in summary["checks"]]
    return "\n".join(lines) + "\n"


def check_line(c: dict) -> str:
    """A check of summary.json in words, after its status: "name: claim (measured ...; expected ...)",
    or "(needs ...)" for one the run could not make. The CLI and README.txt both print it."""
    if c["passed"] is None:
        return f"{c['name']}: {c['claim']} (needs {c['expected']})"
    return f"{c['name']}: {c['claim']} (measured {format_measured(c['measured'])}; expected {c['expected']})"


def replanned(plan: dict) -> bool:
    """True when some job's chunks are not the even cut of its recorded chunk size."""
    return any(chunks != [list(c) for c in plan_chunks(chunks[-1][1], plan["chunk_size"][job])]
               for job, chunks in plan.get("chunks", {}).items() if chunks)


def format_measured(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_measured(x) for x in v) + "]"
    return str(v)

