"""Why a phase-diagram run misses cells: retrain them under other settings.
``python -m bench.probe_phase_minima --run runs/phase-diagram-2f-paper [--variants 1,0.001,10000 0.5,0.001,10000]``

Takes a finished 2->1 run, the cells whose phase missed the theory under ``--protocol`` (default
drop-worst, the paper's averaging, whatever protocol the run was analysed under) and as many
matched ones (a control, drawn with a fixed seed), and trains ``--seeds`` fresh models per cell
for each variant ``init_scale,lr,steps`` (init_scale multiplies the engine's per-instance Xavier
draw: the notebook's xavier_normal_ on the 3-D tensor starts smaller; the rest of the training
spec is the run's). Fresh instance ids, so fresh batches: variant 1,<run's lr>,<run's steps> is
the baseline to compare with. Per variant it prints the share of missed and of matched cells
whose drop-worst phase (and best-seed phase) is the theory's, and the share of single seeds at
the theory phase. CPU backend; about 100 s per variant for 400 cells x 10 seeds x 10,000 steps
on 2 cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from engine import DataSpec, metrics, reference, theory, train
from engine.expected_loss import instance_expected_losses
from engine.experiments import phase_diagram as pd


def cell_matches(run: Path, protocol: str) -> dict:
    """cells.parquet's columns (numpy arrays, one row per cell), with ``match`` recomputed from
    instances.parquet under ``protocol`` (seeds ranked by their expected loss, as the experiment ranks them),
    so the probe's cells do not depend on the protocol the run was last analysed under. Columns keep their
    stored dtypes (float32 norms, as the experiment averages them). KeyError('expected_loss') for a run
    analysed before that column existed."""
    def columns(name):
        table = pq.read_table(run / name)
        return {k: np.asarray(table.column(k).to_numpy()) for k in table.column_names}
    c, i = columns("cells.parquet"), columns("instances.parquet")
    if "expected_loss" not in i:
        raise KeyError("expected_loss")
    grid = int(max(c["importance_index"].max(), c["density_index"].max())) + 1
    order = np.lexsort((i["seed_index"], i["importance_index"], i["density_index"]))
    seeds = int(i["seed_index"].max()) + 1
    keys = (i["density_index"] * grid + i["importance_index"])[order].reshape(-1, seeds)[:, 0]
    kept = pd.kept_seeds(i["expected_loss"][order].reshape(-1, seeds), protocol,
                         i["diverged"][order].reshape(-1, seeds)).ravel()
    codes = pd.cell_phase(i["extra_norm"][order], i["extra_superposition"][order], kept, seeds)
    phase = dict(zip(keys, np.array(metrics.PHASES)[codes]))
    emp = np.array([phase[k] for k in c["density_index"] * grid + c["importance_index"]])
    return {**c, "empirical_phase": emp, "match": emp == c["theory_phase"]}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.probe_phase_minima", description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished phase-diagram run directory (2 features)")
    ap.add_argument("--variants", nargs="+", default=None, help="init_scale,lr,steps (default: the run's, then "
                                                                   "init x0.5 and x0.25, then lr x10)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--protocol", choices=pd.PROTOCOLS, default="drop-worst",
                    help="whose misses to probe (default drop-worst, the paper's averaging)")
    args = ap.parse_args(argv)
    run_spec = json.loads((args.run / "spec.json").read_text())
    fields = {**run_spec, **run_spec.get("analysis", {})}  # analysis-only options (eval_samples) live there
    spec = pd.PhaseDiagramSpec(**{k: v for k, v in fields.items() if k in pd.PhaseDiagramSpec.__dataclass_fields__})
    if spec.features != 2:
        ap.error("--run: a 2->1 phase diagram (features 2)")
    base = spec.train_spec()
    variants = args.variants or [f"1,{base.lr},{base.steps}", f"0.5,{base.lr},{base.steps}",
                                 f"0.25,{base.lr},{base.steps}", f"1,{base.lr * 10},{base.steps}"]
    try:
        c = cell_matches(args.run, args.protocol)
    except KeyError:
        ap.error("--run: its instances.parquet has no expected_loss (analysed before 2026-12-07); re-run the "
                 "run's own command (README.txt) to re-analyse it first: nothing retrains")
    missed = np.where(~c["match"])[0]
    if missed.size == 0:
        print(f"{args.run}: every cell matched the theory; nothing to probe")
        return
    matched = np.random.default_rng(0).choice(np.where(c["match"])[0], min(missed.size, int(c["match"].sum())),
                                              replace=False)
    cells, S, nm = np.concatenate([missed, matched]), args.seeds, missed.size
    dens, rimp = np.repeat(c["density"][cells], S), np.repeat(c["rel_importance"][cells], S)
    p = np.stack([dens, dens], 1)
    imp = np.ones_like(p)
    imp[:, 1] = rimp
    th = theory.phase(2, c["density"][cells], c["rel_importance"][cells])
    print(f"{args.run}: {nm} cells missed under {args.protocol}, {matched.size} matched ones, {S} seeds each", flush=True)
    draw = reference.init_weights
    try:
        for v in variants:
            scale, lr, steps = (float(x) for x in v.split(","))
            ts = dataclasses.replace(base, lr=lr, steps=int(steps))
            reference.init_weights = lambda model, seed, inst, _s=scale: draw(model, seed, inst) * _s
            res = train(spec.model, DataSpec(p, imp), ts, backend="cpu", progress=False)
            # ranked as the experiment ranks them: by expected loss, not the training-loss window
            loss = instance_expected_losses(res.W, res.b, p, imp, spec.eval_samples)
            norm, sup = metrics.feature_norms(res.W)[:, -1].numpy(), metrics.superposition(res.W)[:, -1].numpy()
            worst = pd.cell_phase(norm, sup, pd.kept_seeds(loss.reshape(-1, S), "drop-worst").ravel(), S)
            best = pd.cell_phase(norm, sup, pd.kept_seeds(loss.reshape(-1, S), "best").ravel(), S)
            single = metrics.classify(norm, sup).reshape(-1, S) == th[:, None]
            print(f"init x{scale:g} lr {lr:g} steps {int(steps)}: cells at the theory phase, drop-worst: missed "
                  f"{np.mean(worst[:nm] == th[:nm]):.3f}, matched {np.mean(worst[nm:] == th[nm:]):.3f}; best seed: "
                  f"{np.mean(best[:nm] == th[:nm]):.3f}, {np.mean(best[nm:] == th[nm:]):.3f}; single seeds: "
                  f"{single[:nm].mean():.3f}, {single[nm:].mean():.3f} ({res.seconds:.0f} s)", flush=True)
    finally:
        reference.init_weights = draw


if __name__ == "__main__":
    main()
