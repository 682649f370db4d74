"""The ``supbench`` command line. Options map one-to-one onto the experiment spec's fields.

Every user error is one line on stderr, ``supbench: error: --option: must be ... (got ...)``,
with exit code 2 and no traceback.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from . import backends
from .errors import BackendUnavailable, SpecError, UnsupportedShape
from .experiments import phase_diagram as pd


class UserError(click.ClickException):
    exit_code = 2

    def show(self, file=None):
        click.echo(f"supbench: error: {self.format_message()}", err=True)


def _option_name(field: str) -> str:
    return field if field.startswith("-") else "--" + field.replace("_", "-")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """supbench: fast toy models of superposition."""


@cli.group()
def run():
    """Run one of the paper's experiments."""


@run.command("phase-diagram")
@click.option("--features", type=int, default=None, help="2 (n=2, m=1; default) or 3 (n=3, m=2).")
@click.option("--preset", type=click.Choice(["auto", "quick", "paper"]), default="auto", show_default=True,
              help="quick: about a minute on 2 CPU cores; paper: the paper's protocol at 50x50; "
                   "auto: paper when the triton backend trains, quick otherwise.")
@click.option("--grid", type=int, default=None, help="Grid points per axis (density x relative importance).")
@click.option("--seeds", type=int, default=None, help="Models per grid point (the worst is dropped).")
@click.option("--steps", type=int, default=None, help="Training steps per model.")
@click.option("--batch-size", type=int, default=None, help="Examples per step.")
@click.option("--lr", type=float, default=None, help="Learning rate.")
@click.option("--optimizer", type=str, default=None, help="adamw (default) or adam.")
@click.option("--weight-decay", type=float, default=None, help="Weight decay (default 0.01).")
@click.option("--seed", type=int, default=None, help="Random seed of the whole sweep (default 0).")
@click.option("--density-min", type=float, default=None, help="Lowest feature density, in (0, 1] (default 0.01).")
@click.option("--density-max", type=float, default=None, help="Highest feature density, in (0, 1] (default 1).")
@click.option("--importance-min", type=float, default=None, help="Lowest relative importance (default 0.1).")
@click.option("--importance-max", type=float, default=None, help="Highest relative importance (default 10).")
@click.option("--backend", type=str, default="auto", show_default=True,
              help="auto (triton on a CUDA GPU, else cpu if numba is installed, else torch), torch, triton or cpu.")
@click.option("--threads", type=int, default=None, help="CPU threads of the cpu backend (default: all cores).")
@click.option("--precision", type=str, default=None, help="fp32 (default) or tf32 (triton backend).")
@click.option("--chunk-size", type=int, default=None, help="Instances per chunk (default: automatic).")
@click.option("--protocol", type=str, default=None,
              help="How a grid point's seeds make its phase: drop-worst (the paper's: average all but the "
                   "highest-loss seed) or best (the lowest-loss seed). Default: best for quick on a fused "
                   "backend, drop-worst otherwise.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run directory (default runs/phase-diagram-<features>f-<preset>). Re-running resumes.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def phase_diagram_cmd(preset, backend, out, progress, threads, **options):
    """Train the 2->1 (or 3->2) phase-change sweep, classify it and compare with theory.

    Writes spec.json, instances.parquet, cells.parquet, weights.safetensors, summary.json and
    figures/phase_diagram.png into --out.
    """
    t0 = time.perf_counter()
    try:
        given = {k: v for k, v in options.items() if v is not None}
        spec = pd.PhaseDiagramSpec(**given)  # validates every option before any work
        backends.check_threads(threads)
        backend = backends.resolve(backend, spec.model, spec.train_spec(), log=lambda m: click.echo(m, err=True))
        if preset == "auto":
            preset = "paper" if backend == "triton" else "quick"
        spec = pd.PhaseDiagramSpec(**{**pd.preset_fields(preset, backend), **given, "backend": backend})
        backends.check_supported(backend, spec.model, spec.train_spec())
        out = out or Path("runs") / f"phase-diagram-{spec.features}f-{preset}"
        summary = pd.run(spec, out, progress=progress, log=lambda m: click.echo(m, err=True), threads=threads)
    except SpecError as e:
        raise UserError(f"{_option_name(e.field)}: must be {e.allowed}" + (f" (got {e.got!r})" if e.got is not None else ""))
    except (BackendUnavailable, UnsupportedShape) as e:
        raise UserError(str(e))
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: finished chunks and checkpoints are saved in {out}; run the same command again to resume",
                   err=True)
        sys.exit(130)
    rate = summary["instance_steps_per_second"]
    click.echo(f"phase diagram {spec.features}->{spec.features - 1}: {spec.grid}x{spec.grid} grid, "
               f"{spec.seeds} seeds, {spec.n_instances} models x {spec.steps} steps on {spec.backend}")
    others = ", ".join(f"{p} {a:.3f}" for p, a in summary["agreement_by_protocol"].items() if p != spec.protocol)
    click.echo(f"agreement with theory: {summary['agreement']:.3f} of grid cells "
               f"(protocol {spec.protocol}; {others})")
    compiled = (f" ({summary['compile_seconds']:.1f} s of it one-off compilation, cached for next time)"
                if summary.get("compile_seconds", 0) > 1 else "")
    click.echo(f"wall time: {time.perf_counter() - t0:.1f} s{compiled}; training {summary['train_seconds']:.1f} s, "
               + (f"{rate:,.0f} instance-steps/s" if rate else "n/a (all chunks resumed)"))
    click.echo(f"outputs: {out}/ (summary.json, cells.parquet, instances.parquet, weights.safetensors, "
               f"figures/phase_diagram.png)")


def main(argv=None):
    """Console entry point: click in non-standalone mode so every usage error is one line, exit 2."""
    try:
        cli.main(args=argv, prog_name="supbench", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
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
