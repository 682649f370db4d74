"""The ``supbench`` command line: ``supbench list`` and ``supbench run <experiment>``, whose options are
generated from the experiment spec's fields (one source of truth: engine/experiments/).

Every user error is one line on stderr, ``supbench: error: --option: must be ... (got ...)``,
with exit code 2 and no traceback.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import sys
import time
from pathlib import Path

import click

from . import backends
from .errors import BackendUnavailable, SpecError, TrainingDiverged, TrainingFailed, UnsupportedShape
from .experiments import EXPERIMENTS, memory, runner
from .experiments.base import CommonSpec, default_preset, option_name, spec_fields, status_word


class UserError(click.ClickException):
    exit_code = 2

    def show(self, file=None):
        click.echo(f"supbench: error: {self.format_message()}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """supbench: fast toy models of superposition."""


@cli.group()
def run():
    """Run one of the paper's experiments."""


def _preset_note(exp, name: str) -> str:
    """'[quick: 2500, paper: 10000]' for a field the presets set, '' otherwise."""
    label = {"quick": "quick", "quick-fused": "quick on cpu/triton", "paper": "paper"}
    vals = [f"{label[p]}: {exp.presets[p][name]}" for p in label if p in exp.presets and name in exp.presets[p]]
    return f" Presets: {'; '.join(vals)}." if vals else ""


class _Number(click.ParamType):
    """An int or float option: converted when it parses, else passed on as the text given, so the spec's
    own check refuses it with the field's allowed range (click's message would give no range)."""

    def __init__(self, kind: type):
        self.kind, self.name = kind, "integer" if kind is int else "number"

    def convert(self, value, param, ctx):
        try:
            return self.kind(value)
        except (TypeError, ValueError):
            return value


def _field_options(exp) -> list[click.Option]:
    """One option per spec field (but backend, handled with auto), help from the field's metadata."""
    opts = []
    common = {f.name for f in dataclasses.fields(CommonSpec)}
    # The experiment's own fields first, then the training fields every experiment has.
    for f, typ in sorted(spec_fields(exp.spec_cls), key=lambda ft: ft[0].name in common):
        if f.name == "backend":
            continue
        choices = f.metadata.get("choices")
        help_ = f.metadata.get("help", "") + (f" One of: {', '.join(choices)}." if choices else "")
        if all(f.name in values for values in exp.presets.values()):  # the spec's own default never applies
            help_ += _preset_note(exp, f.name).replace(" Presets:", " Default, by preset:")
        else:
            help_ += f" Default {f.default if f.name != 'chunk_size' else 'automatic'}." + _preset_note(exp, f.name)
        opts.append(click.Option([option_name(f.name)], type=_Number(typ) if typ in (int, float) else str, default=None,
                                 help=help_))
    return opts


def _common_options(exp) -> list[click.Option]:
    return [
        click.Option(["--preset"], type=click.Choice(["auto", "quick", "paper"]), default="auto", show_default=True,
                     help="quick: minutes on 2 CPU cores; paper: the paper's scale; auto: paper when the triton "
                          "backend trains, quick otherwise. Options given explicitly override the preset."),
        click.Option(["--backend"], type=str, default="auto", show_default=True,
                     help="auto (triton on a CUDA GPU, else cpu if numba is installed, else torch; a resumed run "
                          "keeps the backend it was started on), torch, triton or cpu."),
        click.Option(["--threads"], type=_Number(int), default=None,
                     help="CPU threads of the cpu backend (default: all cores), of the torch backend on a CPU and "
                          "of the analysis (default: torch's own setting)."),
        click.Option(["--out"], type=str, default=None,
                     help=f"Run directory (default {exp.default_out_help()}). Re-running the "
                          "same command resumes; --preset and --backend auto then keep what the run was started with "
                          "(analysis-only options follow the command, with a note when they change)."),
        click.Option(["--progress/--no-progress"], default=True, show_default=True, help="Show a progress bar."),
        click.Option(["--ray"], is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                     help="Train the chunks as Ray tasks: --ray alone starts a local Ray instance (--threads CPUs, "
                          "default all); --ray ADDRESS joins a running cluster. Same results as a local run. "
                          "Needs pip install -e \".[ray]\"."),
    ]


# SpecError fields that name no option (the whole run's memory): printed as they are, not as --memory.
NOT_OPTIONS = ("memory",)


def _resolve(exp, preset: str, requested: str, given: dict, out: Path | None, log):
    """(backend, preset name, spec, out) for the options given, auto backend and preset resolved.

    A run directory that exists keeps what it was started with when the options leave it open:
    ``--preset auto`` takes its recorded preset, ``--backend auto`` its recorded backend (if it runs
    here), so the same command resumes the same run on any machine."""
    backend = backends.resolve(requested)
    name = exp.preset_name(default_preset(backend) if preset == "auto" else preset, backend)
    out = out or exp.default_out(exp.make_spec(**{**exp.presets[name], **given}), name)
    recorded = runner.recorded_run(out)
    if recorded.get("preset") in exp.presets and preset == "auto":
        name = recorded["preset"]
    plan = recorded.get("plan")
    was = plan.get("backend") if isinstance(plan, dict) else None
    if requested == "auto" and was in ("torch", "cpu", "triton") and was != backend:
        try:
            backend = backends.resolve(was)
        except BackendUnavailable:
            pass
    spec = exp.make_spec(**{**exp.presets[name], **given, "backend": backend})
    # Before anything is built: a sweep too big for this machine is refused with the figure.
    memory.check_fits(exp.job_sizes(spec), spec, backend, backends.default_device(backend))
    if requested == "auto" and backend == "cpu":
        for job in exp.jobs(spec):
            if not backends.cpu_supports(job.model):
                log(f"note: the cpu backend does not train {job.model.variant} models; using torch")
                return _resolve(exp, preset, "torch", given, out, log)
    if requested == "auto" and backend == "triton":  # the GPU self-test, for every model the run trains
        for job in exp.jobs(spec):
            fallback = backends.resolve("auto", job.model, job.train, log=log, sets=job.data.sets,
                                        examples=job.data.examples)
            if fallback != "triton":
                return _resolve(exp, preset, fallback, given, out, log)
    for job in exp.jobs(spec):
        backends.check_supported(backend, job.model, job.train, job.data.sets, job.data.examples)
    return backend, name, spec, out


def _validate_early(exp, preset: str, given: dict) -> None:
    """Refuse, before any work, an option the run's preset cannot take: the options given over each preset
    the run may resolve to (``preset``'s, its '-fused' form included; every one for auto), the first
    error raised if every one fails. Not over the spec's bare defaults, which no run uses: a range that
    depends on another field (learning-dynamics' --history-every is at most --steps - 1) would be judged
    against a default the preset overrides. _resolve then builds the spec of the preset the run really
    takes, which checks everything again."""
    names = [name for name in exp.presets if preset == "auto" or name.split("-")[0] == preset]
    first = None
    for name in names:
        try:
            exp.make_spec(**{**exp.presets[name], **given})
            return
        except SpecError as e:
            first = first or e
    raise first


def _run_experiment(exp, preset, backend, out, progress, threads, ray, **options):
    t0 = time.perf_counter()
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    try:
        given = {k: v for k, v in options.items() if v is not None}
        if out is not None:
            if not out.strip():  # '' would be the current directory, not a run directory
                raise SpecError("--out", "a directory path (a run's own directory, not empty)", out)
            out = Path(out)
        _validate_early(exp, preset, given)
        backends.check_threads(threads)
        backend, preset, spec, out = _resolve(exp, preset, backend, given, out, log)
        summary = runner.run(exp, spec, out, progress=progress, log=log, threads=threads, preset=preset, ray=ray)
    except SpecError as e:
        name = e.field if e.field in NOT_OPTIONS else option_name(e.field)
        allowed = e.allowed
        for f, _ in spec_fields(exp.spec_cls):  # another option named in the message: as the user typed it
            if "_" in f.name:
                allowed = re.sub(rf"\b{f.name}\b", option_name(f.name), allowed)
        raise UserError(f"{name}: must be {allowed}" + (f" (got {e.got!r})" if e.got is not None else ""))
    except (BackendUnavailable, UnsupportedShape) as e:
        msg = str(e)  # the API's field name "backend:" is the option --backend here, as SpecError's are
        raise UserError("--" + msg if msg.startswith("backend:") else msg)
    except (TrainingDiverged, TrainingFailed) as e:
        click.echo(f"supbench: error: {e}", err=True)
        sys.exit(1)
    except MemoryError:
        click.echo("supbench: error: memory: this machine ran out of memory building the run; use fewer instances",
                   err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        saved = out is not None and any(Path(out, "chunks").glob("*.safetensors"))
        click.echo(f"\ninterrupted: finished chunks and checkpoints are saved in {out}; run the same command again to resume"
                   if saved else "\ninterrupted before any chunk or checkpoint was saved; the same command starts again",
                   err=True)
        sys.exit(130)
    for line in exp.report(spec, summary):
        click.echo(line)
    for c in summary["checks"]:
        click.echo(f"check {status_word(c)}: {runner.check_line(c)}")
    rate = summary["instance_steps_per_second"]
    if summary["chunks_trained"] == 0:
        click.echo(f"wall time: {time.perf_counter() - t0:.1f} s; nothing to train (every chunk was already in {out})"
                   + (f"; it trained in {summary['train_seconds']:.1f} s on {summary['backend']}"
                      if summary.get("train_seconds") else ""))
    else:
        compiled = (f" ({summary['compile_seconds']:.1f} s of it one-off compilation, cached for next time)"
                    if summary.get("compile_seconds", 0) > 1 else "")
        click.echo(f"wall time: {time.perf_counter() - t0:.1f} s{compiled}; training {summary['train_seconds']:.1f} s, "
                   + (f"{rate:,.0f} instance-steps/s" if rate else "n/a"))
    click.echo(f"outputs: {out}/ (summary.json, " + ", ".join(exp.outputs) + ")")


def _make_command(exp) -> click.Command:
    doc = (f"{exp.title}.\n\nWrites spec.json, summary.json (paper checks, timing), README.txt (how to re-run) and "
           + ", ".join(exp.outputs) + " into --out.")
    return click.Command(exp.name, params=_field_options(exp) + _common_options(exp),
                         callback=functools.partial(_run_experiment, exp), help=doc)


for _exp in EXPERIMENTS.values():
    run.add_command(_make_command(_exp))


@cli.command("list")
def list_cmd():
    """Every experiment, one line each, with the cost of its quick preset."""
    width = max(len(n) for n in EXPERIMENTS)
    for name, exp in EXPERIMENTS.items():
        click.echo(f"{name:<{width}}  {exp.title}" + (f"  [quick: {exp.quick_cost}]" if exp.quick_cost else ""))


def main(argv=None):
    """Console entry point: click in non-standalone mode so every usage error is one line, exit 2."""
    try:
        cli.main(args=argv, prog_name="supbench", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        if getattr(e, "ctx", None) is not None and type(e).__name__ == "NoArgsIsHelpError":
            click.echo(e.ctx.get_help())  # `supbench` or `supbench run` alone: the help, not an error
            sys.exit(0)
        if isinstance(e, UserError):
            e.show()
        else:
            click.echo(f"supbench: error: {e.format_message()}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("\ninterrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
