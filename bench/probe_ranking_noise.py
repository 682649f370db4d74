"""How noisy is a run's ranking of its fits? Re-estimate every fit's expected loss under other evaluation seeds.
``python -m bench.probe_ranking_noise --run runs/basic-small-quick [--seeds 4] [--rows 8192 32768]``

For a finished basic, adversarial or privileged-basis run (the experiments that rank their fits by
engine.expected_loss.equal_density_expected_losses), per model variant and rows per count of active
features (default: the rows the experiment ranks with, Experiment.ranking_rows): each fit's estimate under evaluation
seeds 0..seeds-1 (the run itself used its own seed),
then per density the fit each seed would keep, the gap between the two best fits (of the mean
estimates) and the largest relative standard deviation of a fit's estimate over the seeds. Picks
that change with the seed are ranked by chance; the gap says how much that matters. Analysis only
(float64 torch, CPU); seconds per variant at the quick presets' sizes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from safetensors.torch import load_file

from engine.expected_loss import equal_density_expected_losses
from engine.experiments import EXPERIMENTS

# The experiments this probes (those ranking their fits by the equal-density expected loss), and the
# rows per count of active features each ranks them with (Experiment.ranking_rows).
RANKED = {name: exp.ranking_rows for name, exp in EXPERIMENTS.items() if exp.ranking_rows}


def spec_of(run: Path):
    """The run's experiment spec, rebuilt from spec.json."""
    rec = json.loads((run / "spec.json").read_text())
    name = rec.get("experiment")
    if name not in RANKED:
        raise SystemExit(f"--run: a {', '.join(RANKED)} run (spec.json says {name!r})")
    exp = EXPERIMENTS[name]
    return exp, exp.make_spec(**{k: v for k, v in rec.items() if k in exp.spec_cls.__dataclass_fields__})


def probe(run: Path, seeds: int, rows_list: list[int] | None = None) -> list[str]:
    """The report's lines (see the module docstring); rows_list None: the experiment's own rows."""
    exp, spec = spec_of(run)
    rows_list = rows_list or [RANKED[exp.name]]
    inst = pq.read_table(run / "instances.parquet").to_pydict()
    w = load_file(str(run / "weights.safetensors"))
    variants = sorted(set(inst["variant"])) if "variant" in inst else [exp.model.variant]
    lines = []
    for v in variants:
        idx = [i for i, x in enumerate(inst.get("variant", [v] * len(inst["density"]))) if x == v]
        dens, fit = np.array(inst["density"])[idx], np.array(inst["fit"])[idx]
        W, b = (w[f"W_{v}"], w[f"b_{v}"]) if f"W_{v}" in w else (w["W"], w["b"])
        imp = np.tile(spec.importance(), (len(idx), 1))
        for rows in rows_list:
            est = np.array([equal_density_expected_losses(W, b, dens, imp, v, seed=s, rows=rows) for s in range(seeds)])
            rel = est.std(0) / est.mean(0) * 100
            lines.append(f"{exp.name} {v}, {rows} rows per count, evaluation seeds 0..{seeds - 1}:")
            for d in sorted(set(dens.tolist()), reverse=True):
                sel = np.flatnonzero(dens == d)
                picks = [int(fit[sel][np.argmin(e[sel])]) for e in est]
                best = np.sort(est.mean(0)[sel])
                gap = f"{(best[1] / best[0] - 1) * 100:.2f}%" if len(best) > 1 else "-"
                lines.append(f"  density {d:.3g}: kept fit per seed {picks}, gap of the best two {gap}, "
                             f"largest sd {rel[sel].max():.2f}%")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.probe_ranking_noise", description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished basic, adversarial or privileged-basis run")
    ap.add_argument("--seeds", type=int, default=4, help="evaluation seeds (at least 2)")
    ap.add_argument("--rows", type=int, nargs="+", default=None,
                    help="rows per count of active features (default: the experiment's own)")
    args = ap.parse_args(argv)
    if args.seeds < 2:
        ap.error("--seeds: at least 2")
    for line in probe(args.run, args.seeds, args.rows):
        print(line, flush=True)


if __name__ == "__main__":
    main()
