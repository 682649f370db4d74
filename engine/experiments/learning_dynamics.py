"""Learning dynamics of uniform superposition (Elhage et al. 2022, "Superposition and Learning
Dynamics"): feature dimensionalities D_i move in discrete jumps between the fraction lines, and the
loss curve has plateaus between them.

The uniform setup of the dimensionality experiment (n = 400, m = 30 relu-output, importance 1)
at one density (1/(1-S) = ``inv_density``), ``seeds`` models, with the training loss recorded
every ``history_every`` steps and the weights at ``snapshots`` log-spaced steps (plus step 0,
the initialisation, and the last step). Instance order: one row per seed index.

What is measured (each claim a check; thresholds below, validated on synthetic trajectories in
tests/test_experiment_learning_dynamics.py):
- jumps: a feature that ends on a fraction line (within metrics.FRACTION_TOLERANCE) after moving
  at least MIN_MOVE makes at least JUMP_SHARE of its net move within one window of JUMP_WINDOW
  decades of steps (steps t..1.78t) that ends at least JUMP_WINDOW decades before the last step (a
  jump is followed by training that does not undo it). A step function scores 1; a ramp smooth on the
  log-step axis the paper plots scores window / decades trained (~0.07 over 3.7 decades); an
  exponential approach (1 - e^(-t/tau)) ~0.21. A ramp linear in steps that ends at the last step
  scores 0.20 (0.44 in its last window, which the rule leaves out: on a log axis it is a rise at the
  very end, and it passed as jumps, an audit's finding). The quick run's features jump at ~1,000 of
  5,000 steps: leaving out the last window moved 137 judged features' jumping count from 120 to 117.
  The criterion is about the log-step axis the paper plots: a ramp linear in steps that ends well
  before the last step (say at 2,000 of 5,000) is a rise within ~0.25 decades there and counts as a
  jump (0.38); real features move 0.38-0.45 of their net change in their window, with most of the rest
  before it (asking for <= 1/3 before the window left 30% of the quick run's features jumping).
  The check: at least half of those features jump.
- loss plateau: on the log-binned loss, a window of PLATEAU_WINDOW decades before the features jump,
  after the loss has already fallen by DROP_MIN of its total decrease, where it moves by at most
  PLATEAU_MAX of that decrease, and a drop of at least DROP_MIN across the window where the features
  jump: a plateau between two drops (a loss falling evenly in log steps over 3 decades moves 1/7.5 of
  its decrease in any 0.4 decades: no plateau; the flat start of an exponential decay, which passed
  before the first drop was asked for, is no plateau either). The quick run has fallen 52-57% of its
  decrease when its plateau (steps ~140..400) starts; its drops are 5-11x the fall over as wide a
  window before them (reported as ``prior``; loss_plateau says why that is not a rule).
- D* falls: dimensions per feature falls by at least DSTAR_FALL from its maximum during training
  (reached early, while every feature is still small) to its end value, as features pack into
  superposition.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.patches import Patch

from .. import metrics
from ..plots import fraction_line, plt, save
from ..spec import _check_float, _check_int
from ..store import write_parquet, write_tensors
from .base import Experiment, Job, check, option
from .dimensionality import UniformSpec

NAME = "learning-dynamics"

JUMP_WINDOW = 0.25      # decades of steps
JUMP_SHARE = 1 / 3      # of a feature's net change, within one window
MIN_MOVE = 0.1          # least |D_end - D_init| for a feature to count as having moved
PLATEAU_WINDOW = 0.4    # decades
PLATEAU_MAX = 0.05      # of the loss's total decrease (step 10 to the end)
DROP_MIN = 0.2          # of the loss's total decrease, across the window where features jump
DSTAR_FALL = 0.2
SMOOTH_DECADES = 0.05   # half-width of the log bins the loss is averaged over
LOSS_FROM_STEP = 10     # the loss is judged from this step (earlier bins hold one or two batches)
FIGURE_SEEDS = 4        # seeds drawn in the figure (columns)
LINE_COLORS = {"1": "#1f77b4", "3/4": "#9467bd", "2/3": "#17becf", "1/2": "#c44e52", "2/5": "#2ca02c",
               "3/8": "#ff7f0e"}

PRESETS = {
    # The notebook's optimiser (AdamW lr 1e-3, wd 1e-2, constant) at batch 256 and 5,000 steps: the
    # features arrive at ~300..3,000 steps (at lr 1e-2 they arrive by step ~500, with no loss plateau
    # before them). Measured cost: see LearningDynamics.quick_cost.
    "quick": dict(seeds=3, steps=5000, batch_size=256, lr=1e-3, weight_decay=1e-2, schedule="constant",
                  snapshots=50),
    # The notebook's recipe in full: batch 1024, 10,000 steps.
    "paper": dict(seeds=3, steps=10_000, batch_size=1024, lr=1e-3, weight_decay=1e-2, schedule="constant",
                  snapshots=80),
}


@dataclass(frozen=True)
class LearningDynamicsSpec(UniformSpec):
    """Everything needed to re-run it; the CLI options map one-to-one onto these fields."""

    inv_density: float = option(4.0, "1/(1-S) = 1/density of every feature (the paper's jumps show at 3..10).")
    seeds: int = option(3, "Models trained, one per seed index; every one is analysed.")
    snapshots: int = option(50, "Weight snapshots, log-spaced from step 1 to the last step (step 0 is added; "
                                "early steps that round to the same step are kept once).")
    history_every: int = option(1, "Record the training loss every this many steps.")
    steps: int = option(5000, "Training steps per model.")
    batch_size: int = option(256, "Examples per training step.")

    def __post_init__(self):
        _check_float("inv_density", self.inv_density, 1.0, 1e6)
        _check_int("seeds", self.seeds, 1, 1000)
        _check_int("snapshots", self.snapshots, 2, 10_000)
        super().__post_init__()  # steps checked first: history_every's range depends on it
        # From --steps on, the history holds step 0 alone: nothing to judge a plateau on.
        _check_int("history_every", self.history_every, 1, max(1, self.steps - 1))

    def snapshot_steps(self) -> tuple[int, ...]:
        """0, then ``snapshots`` log-spaced steps from 1 to ``steps`` (rounded, duplicates dropped)."""
        s = np.unique(np.round(np.logspace(0.0, math.log10(self.steps), self.snapshots)).astype(np.int64))
        return (0, *(int(t) for t in s))


def jump_shares(steps, D, window: float = JUMP_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """The largest change of each D_i within any window of ``window`` decades of steps, as a share of
    its net change, and where that window lies.

    steps (S,) increasing snapshot steps (0 = the init, placed at step 1 on the log axis); D (S, n).
    Returns share (n,) = min(1, max |D[b] - D[a]| over snapshot pairs a < b with
    log10(step_b / step_a) <= window and step_b at least ``window`` decades before the last step,
    divided by |D[-1] - D[0]|) (0 where D did not move), and jump_step (n,): the geometric mean of
    that pair's steps.
    """
    x = np.log10(np.maximum(np.asarray(steps, np.float64), 1.0))
    D = np.asarray(D, np.float64)
    S = len(x)
    a, b = np.triu_indices(S, k=1)
    keep = (x[b] - x[a] <= window + 1e-9) & (x[b] <= x[-1] - window + 1e-9)
    a, b = a[keep], b[keep]
    if len(a) == 0:  # snapshots too far apart for any window: no jump can be seen
        return np.zeros(D.shape[1]), np.full(D.shape[1], np.nan)
    change = np.abs(D[b] - D[a])                       # (pairs, n)
    best = np.argmax(change, axis=0)                   # (n,)
    largest = change[best, np.arange(D.shape[1])]
    net = np.abs(D[-1] - D[0])
    share = np.where(net > 0, np.minimum(1.0, largest / np.where(net > 0, net, 1.0)), 0.0)
    jump_step = 10 ** ((x[a[best]] + x[b[best]]) / 2)
    return share, jump_step


def movers_on_lines(D) -> np.ndarray:
    """bool (n,): features of D (S, n) that end within tolerance of a fraction line after moving at
    least MIN_MOVE from their initial value (the ones whose arrival is judged)."""
    D = np.asarray(D, np.float64)
    return (metrics.nearest_fraction(D[-1]) >= 0) & (np.abs(D[-1] - D[0]) >= MIN_MOVE)


def smooth_loss(steps, loss, at) -> np.ndarray:
    """Mean of the recorded loss over log bins [t / r, t * r], r = 10^SMOOTH_DECADES, around each
    step in ``at``; NaN where a bin holds no record (a coarse --history-every: early bins are narrower
    than it). Filling those from the nearest record drew a flat line there, a plateau by construction.
    steps, loss (T,); at (G,) -> (G,)."""
    steps = np.asarray(steps, np.float64)
    loss = np.asarray(loss, np.float64)
    r = 10 ** SMOOTH_DECADES
    out = np.empty(len(at))
    for i, t in enumerate(at):
        inside = (steps >= t / r) & (steps <= t * r)
        out[i] = loss[inside].mean() if inside.any() else np.nan
    return out


def loss_plateau(steps, loss, jump_steps) -> dict:
    """Plateau before the jumps and drop across them, as shares of the loss's total decrease.

    steps, loss (T,): the recorded history; jump_steps: the jump steps of the features judged.
    The loss is averaged in log bins (smooth_loss) on a grid of 20 points per decade from
    LOSS_FROM_STEP (or, where the history is too coarse for bins that early, the first step from
    which every bin holds a record: ``judged_from``) to the last step; total = first - last grid
    value. The jump window is the middle half (quartiles) of the jump steps, widened to at least
    2 * JUMP_WINDOW decades about its geometric centre; ``drop`` = loss fall across it / total. ``plateau`` = the smallest range
    (max - min) of the loss over a window of PLATEAU_WINDOW decades that starts once the loss has
    fallen by DROP_MIN x total and ends at or before the jump window starts, / total (None when no
    such window fits); ``before`` = how far the loss had fallen when that window starts, / total;
    ``prior`` = its fall over a window as wide as the jump window just before it, / total (reported:
    the quick and paper runs drop 5-11x that across the jumps). passed: plateau <= PLATEAU_MAX and
    drop >= DROP_MIN.
    What it cannot tell apart: a loss falling smoothly in steps (a decay with a fast transient in front,
    or a straight line) is, on the log-step axis the paper plots, a fall, a flat stretch and a drop.
    A rule drop >= 3 x prior (tried) is met by any straight line (10^0.5 = 3.16 for the narrowest jump
    window) and failed legitimate losses whose jumps spread over 1.3 decades (2.6), so it is not used;
    the jumps check is what ties the drop to the features.
    """
    steps = np.asarray(steps, np.float64)
    jump_steps = np.asarray(jump_steps, np.float64)
    last = float(steps.max())
    result = {"plateau": None, "drop": None, "before": None, "prior": None, "jump_window": None,
              "plateau_window": None, "judged_from": None, "passed": False}
    if len(jump_steps) == 0 or last <= LOSS_FROM_STEP:
        return result
    grid = np.logspace(math.log10(LOSS_FROM_STEP), math.log10(last),
                       max(2, int(round(20 * math.log10(last / LOSS_FROM_STEP))) + 1))
    L = smooth_loss(steps, loss, grid)
    empty = np.flatnonzero(~np.isfinite(L))
    if len(empty):  # judge only where every bin holds records
        grid, L = grid[empty[-1] + 1:], L[empty[-1] + 1:]
        if len(grid) < 2:
            return result
    result["judged_from"] = float(grid[0])
    total = L[0] - L[-1]
    if not total > 0:
        return result
    lo, hi = np.percentile(np.log10(jump_steps), [25, 75])
    centre, half = (lo + hi) / 2, max((hi - lo) / 2, JUMP_WINDOW)
    lo, hi = max(centre - half, math.log10(grid[0])), min(centre + half, math.log10(last))
    if not hi > lo:  # the features jump before the loss can be judged
        return result
    at = np.interp([lo - (hi - lo), lo, hi], np.log10(grid), L)  # np.interp holds the ends past the grid
    drop = float((at[1] - at[2]) / total)
    prior = float((at[0] - at[1]) / total)
    g = np.log10(grid)
    best, where, before = None, None, None
    for i in range(len(g)):
        j = np.searchsorted(g, g[i] + PLATEAU_WINDOW - 1e-9)
        if j >= len(g) or g[j] > lo + 1e-9:
            break
        fallen = float((L[0] - L[i]) / total)
        if fallen < DROP_MIN:  # not yet after a first drop: the flat start of any decay
            continue
        span = float((L[i:j + 1].max() - L[i:j + 1].min()) / total)
        if best is None or span < best:
            best, where, before = span, [float(grid[i]), float(grid[j])], fallen
    result.update(plateau=best, drop=drop, before=before, prior=prior, jump_window=[float(10 ** lo), float(10 ** hi)],
                  plateau_window=where, passed=bool(best is not None and best <= PLATEAU_MAX and drop >= DROP_MIN))
    return result


def jump_summary(steps, D) -> dict:
    """The jump criterion for one model's snapshots D (S, n): how many features are judged (end on
    a line after moving), how many of them jump (share >= JUMP_SHARE), and their median share."""
    share, jump_step = jump_shares(steps, D)
    judged = movers_on_lines(D)
    return {"judged": int(judged.sum()), "jumping": int((share[judged] >= JUMP_SHARE).sum()),
            "median_share": float(np.median(share[judged])) if judged.any() else None,
            "shares": share[judged], "jump_steps": jump_step[judged]}


def line_changes(D, hold: int = 2) -> int:
    """How many features move from one fraction line to another: D (S, n); a feature counts when the
    lines it sits on (within tolerance, for at least ``hold`` consecutive snapshots) are not all
    the same one (e.g. 1/2 and later 2/5). Reported, not checked."""
    near = metrics.nearest_fraction(D)                 # (S, n)
    count = 0
    for i in range(near.shape[1]):
        seq, held = near[:, i], []
        run = 1
        for s in range(1, len(seq) + 1):
            if s < len(seq) and seq[s] == seq[s - 1]:
                run += 1
                continue
            if seq[s - 1] >= 0 and run >= hold and (not held or held[-1] != seq[s - 1]):
                held.append(int(seq[s - 1]))
            run = 1
        count += len(held) >= 2
    return count


def snapshot_metrics(W_snapshots: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W_snapshots (S, K, m, n) -> D_i (S, K, n), ||W_i|| (S, K, n), D* (S, K)."""
    D = np.stack([metrics.dimensionality(w).numpy() for w in W_snapshots])
    N = np.stack([metrics.feature_norms(w).numpy() for w in W_snapshots])
    Ds = np.stack([metrics.dimensions_per_feature(w).numpy() for w in W_snapshots])
    return D, N, Ds


def figure(path, spec: LearningDynamicsSpec, steps, D, N, hist_steps, history, jumps: list[dict],
           plateaus: list[dict]) -> None:
    """Columns = seeds (up to FIGURE_SEEDS): D_i against step (log x) coloured by the fraction line it
    ends on, with the lines; beneath, the loss (raw and log-binned) on the same x axis, the window
    where the features jump shaded in both."""
    K = min(D.shape[1], FIGURE_SEEDS)
    fig, axes = plt.subplots(2, K, figsize=(5.2 * K + 0.8, 8), sharex=True, squeeze=False, constrained_layout=True,
                             gridspec_kw={"height_ratios": [1.6, 1]})
    steps = np.asarray(steps)
    show = steps >= 1  # the init (step 0) has no place on a log axis; step 1 is next to it
    labels = [label for _, label in metrics.FRACTIONS]
    for k in range(K):
        top, bottom = axes[0, k], axes[1, k]
        near = metrics.nearest_fraction(D[-1, k])
        represented = N[-1, k] >= metrics.NORM_THRESHOLD
        for i in np.argsort(near):  # unplaced features first, underneath
            if near[i] >= 0:
                kw = dict(color=LINE_COLORS[labels[near[i]]], lw=0.7, alpha=0.7)
            else:
                kw = dict(color="0.55" if represented[i] else "0.8", lw=0.4, alpha=0.5)
            top.plot(steps[show], D[show, k, i], **kw)
        for v, label in metrics.FRACTIONS:
            fraction_line(top, v, label)
        h = history[:, k]
        hs = np.asarray(hist_steps)
        bottom.plot(np.maximum(hs, 1), h, color="0.75", lw=0.3, label="loss per step")
        grid = np.logspace(0, math.log10(max(2, hs.max())), 200)
        L = smooth_loss(hs, h, grid)
        bottom.plot(grid[np.isfinite(L)], L[np.isfinite(L)], color="k", lw=1.2, label="log-binned mean")
        win = plateaus[k].get("jump_window")
        if win:
            for ax in (top, bottom):
                ax.axvspan(*win, color="#c44e52", alpha=0.08, lw=0)
        pw = plateaus[k].get("plateau_window")
        if pw:
            bottom.axvspan(*pw, color="#3b75af", alpha=0.12, lw=0, label="flattest stretch before the jumps")
        top.set_xscale("log")
        top.set_ylim(-0.02, 1.08)
        counts = metrics.fraction_counts(D[-1, k])
        placed = ", ".join(f"{c} at {lab}" for lab, c in counts.items() if c)
        top.set_title(f"seed {k}: {placed or 'no feature on a line'}\n{jumps[k]['jumping']} of "
                      f"{jumps[k]['judged']} arriving features jump", fontsize=9)
        bottom.set_xlabel("training step")
        if k == 0:
            top.set_ylabel("feature dimensionality  D$_i$")
            bottom.set_ylabel("training loss")
            bottom.legend(loc="upper right", fontsize=7, frameon=False)
    handles = [plt.Line2D([], [], color=c, lw=2, label=f"ends at {lab}") for lab, c in LINE_COLORS.items()]
    handles.append(plt.Line2D([], [], color="0.55", lw=2, label="ends off the lines"))
    handles.append(Patch(color="#c44e52", alpha=0.2, label="where features jump (middle half)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"Learning dynamics of uniform superposition (n={spec.features}, m={spec.hidden}, 1/(1-S) = "
                 f"{spec.inv_density:g}): D$_i$ against the fraction lines, the loss beneath (the paper: jumps, and a "
                 "plateau before them)")
    save(fig, path)


class LearningDynamics(Experiment):
    name = NAME
    title = "learning dynamics: every D_i and the loss over training (uniform n=400, m=30, one density)"
    spec_cls = LearningDynamicsSpec
    presets = PRESETS
    results_format = 1
    outputs = ("snapshots.parquet", "history.parquet", "weights.safetensors", "figures/learning_dynamics.png")
    quick_cost = ("3 models (n=400, m=30) x 5,000 steps at batch 256, 46 snapshots; 6 s on 2 CPU cores "
                  "(cpu backend, Intel Xeon)")

    def job_sizes(self, spec):
        from .memory import JobSize
        return [JobSize("models", spec.seeds, spec.model.n_features, spec.model.n_hidden,
                        -(-spec.steps // spec.history_every) if spec.history_every else 0, len(spec.snapshot_steps()))]

    def jobs(self, spec):
        density = np.full(spec.seeds, 1.0 / spec.inv_density)
        return [Job("models", spec.model, spec.data_spec(density), spec.train_spec(),
                    history_every=spec.history_every, snapshot_steps=spec.snapshot_steps())]

    def analyse(self, spec, results, run_dir):
        res = results["models"]
        steps = np.asarray(res.snapshot_steps, np.int64)
        D, N, Ds = snapshot_metrics(res.W_snapshots)     # (S, K, n), (S, K, n), (S, K)
        S, K, n = D.shape
        si, ki, fi = np.meshgrid(np.arange(S), np.arange(K), np.arange(n), indexing="ij")
        order = np.lexsort((fi.ravel(), si.ravel(), ki.ravel()))  # rows by seed, then step, then feature
        write_parquet(run_dir.root / "snapshots.parquet",
                      {"seed": ki.ravel()[order], "step": steps[si.ravel()[order]], "feature": fi.ravel()[order],
                       "dimensionality": D.ravel()[order], "norm": N.ravel()[order]})
        history = res.history.numpy()                     # (T, K)
        hist_steps = np.arange(history.shape[0]) * spec.history_every
        write_parquet(run_dir.root / "history.parquet",
                      {"seed": np.repeat(np.arange(K), len(hist_steps)), "step": np.tile(hist_steps, K),
                       "loss": history.T.ravel()})
        # Copies of W, b: safetensors refuses tensors that share memory, and a JobResult's final
        # weights may be a view of its last snapshot.
        write_tensors(run_dir.root / "weights.safetensors",
                      {"W": res.W.clone(), "b": res.b.clone(), "W_snapshots": res.W_snapshots,
                       "b_snapshots": res.b_snapshots, "snapshot_steps": torch.as_tensor(steps)},
                      metadata={"layout": "W (seeds, n_hidden, n_features), b (seeds, n_features) after the last "
                                          "step; W_snapshots (snapshots, seeds, n_hidden, n_features), b_snapshots "
                                          "(snapshots, seeds, n_features) after snapshot_steps (0 = the init)"})

        jumps = [jump_summary(steps, D[:, k]) for k in range(K)]
        plateaus = [loss_plateau(hist_steps, history[:, k], jumps[k]["jump_steps"]) for k in range(K)]
        figure(run_dir.figures / "learning_dynamics.png", spec, steps, D, N, hist_steps, history, jumps, plateaus)

        judged = sum(j["judged"] for j in jumps)
        jumping = sum(j["jumping"] for j in jumps)
        share_all = np.concatenate([j["shares"] for j in jumps])
        jump_fraction = jumping / judged if judged else 0.0
        plateau_seeds = sum(p["passed"] for p in plateaus)
        falls = [float(Ds[:, k].max() - Ds[-1, k]) for k in range(K)]
        checks = [
            check("jumps", f"features arrive at the fraction lines in jumps: at least half of those that end on a "
                  f"line after moving >= {MIN_MOVE} make >= {JUMP_SHARE:.2f} of their move within {JUMP_WINDOW} "
                  f"decades of steps, ending at least {JUMP_WINDOW} decades before the last step",
                  {"judged": judged, "jumping": jumping, "fraction": jump_fraction,
                   "median_share": float(np.median(share_all)) if judged else None},
                  judged > 0 and jump_fraction >= 0.5, ">= 0.5 of the judged features (and at least one judged)"),
            check("loss-plateau", f"the loss plateaus before the features jump and drops while they do: after a "
                  f"first fall of >= {DROP_MIN:.0%} of the total decrease, a {PLATEAU_WINDOW}-decade stretch moving "
                  f"<= {PLATEAU_MAX:.0%} of it, then >= {DROP_MIN:.0%} of it across the jumps (in at least half of "
                  "the seeds; prior: the fall over as wide a window just before them, reported)",
                  [{"before": p["before"], "plateau": p["plateau"], "drop": p["drop"], "prior": p["prior"]}
                   for p in plateaus],
                  2 * plateau_seeds >= K, f"passes in >= {math.ceil(K / 2)} of {K} seeds"),
            check("d-star-falls", f"features pack into superposition as they are learned: D* falls by >= {DSTAR_FALL} "
                  "from its maximum during training to its end value (every seed)", falls,
                  min(falls) >= DSTAR_FALL, f">= {DSTAR_FALL} in every seed"),
        ]
        per_seed = [{"final_D_star": float(Ds[-1, k]), "max_D_star": float(Ds[:, k].max()),
                     "max_D_star_step": int(steps[np.argmax(Ds[:, k])]), "final_loss": float(res.loss[k]),
                     "diverged": bool(res.diverged[k]),
                     "fraction_counts": metrics.fraction_counts(D[-1, k]),
                     "judged": jumps[k]["judged"], "jumping": jumps[k]["jumping"],
                     "line_changes": line_changes(D[:, k]),
                     "median_jump_share": jumps[k]["median_share"],
                     "median_jump_step": float(np.median(jumps[k]["jump_steps"])) if jumps[k]["judged"] else None,
                     "loss_plateau": plateaus[k]} for k in range(K)]
        return {"snapshot_steps": steps.tolist(), "D_star": Ds.T.tolist(), "seeds": per_seed, "checks": checks}

    def report(self, spec, summary):
        s = summary["seeds"]
        kept = len(summary["snapshot_steps"]) - 1  # (step 0, the init, is added to the log-spaced ones)
        merged = (f" ({spec.snapshots - kept} of the early ones rounded to a step already kept)"
                  if kept < spec.snapshots else "")
        return [f"learning dynamics n={spec.features}, m={spec.hidden}, 1/(1-S) = {spec.inv_density:g}: {spec.seeds} "
                f"seeds x {spec.steps} steps on {summary['backend']}; weights at step 0 and {kept} log-spaced steps of "
                f"the {spec.snapshots} asked for{merged}",
                "per seed: " + "; ".join(f"{x['jumping']}/{x['judged']} arriving features jump, D* "
                                         f"{x['max_D_star']:.2f} -> {x['final_D_star']:.2f}" for x in s)]


EXPERIMENT = LearningDynamics()
