"""Computation in superposition: can m=40 ReLU neurons compute |x| for more than 40 sparse features?

abs-computation models (untied: h = ReLU(W1 x + b1), y = ReLU(W2 h + b2), inputs x_i ~ U[-1, 1]
when active, target |x_i|), n=100 features, m=40 neurons, importance 0.8^i, at the paper's seven
densities; ``fits`` models per density, the one with the lowest expected loss analysed when there
are several (engine.expected_loss.untied_equal_density_expected_losses; with one fit per density,
the quick preset, there is nothing to rank and no expected_loss column). Neurons are rescaled so the
largest |W1| entry of each is 1 (W1 row and b1 times c, W2 column divided by c: the function is
unchanged, as ReLU is positively homogeneous), as in the paper's figure.

Three counts per density, from the kept model:
- *computed*: the output predicts |x_i| with R^2 >= 0.5 (feature_r2: fresh examples with feature i
  active half the time and the others at the training density; a constant output scores <= 0);
- *one sign*: R^2 >= 0.15, which ReLU(x_i) alone (one neuron, one sign) reaches;
- per neuron, the features it carries: rescaled |W1[j, i]| >= 0.25 (visible in the stacked plot).
  The checks count only neurons that can fire and write to an output (fires, writes): a neuron is
  monosemantic when it carries exactly one feature and the model computes it at least one sign of
  (R^2 >= HALF), polysemantic when it carries two or more such features (used_features_per_neuron,
  neuron_shares); shares are of all m neurons, and the monosemantic ones must cover m/8 features.
The paper: dense, every neuron is monosemantic; at 1-S = 0.001 every neuron is highly polysemantic,
and the model "represents more features than it has neurons".

Why the computation checks compare with m/2, not m: |x_i| is not monotone in x_i, and one neuron that
reads only x_i gives a monotone y_i (ReLU of a monotone function), whose R^2 is at most 0.395 (the
best monotone fit to |x| on this test distribution, pool-adjacent-violators on 200,000 draws). So a
model without superposition needs two neurons per computed feature (ReLU(x) + ReLU(-x)) and computes
at most m/2 = 20; more than m/2 computed is computation in superposition. More than m (the first
version of this check) was never reached: at most 26 of 100 at densities <= 0.01 in any run so far,
with the importance 0.8^i leaving features past ~25 with under 0.4% of feature 0's weight.
Instance order: density-major, fits within a density.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import reference, rng
from ..expected_loss import untied_equal_density_expected_losses
from matplotlib.collections import PolyCollection

from ..plots import plt, save
from ..spec import DataSpec, ModelSpec, _check_float, _check_int
from ..store import write_parquet, write_tensors
from .base import CommonSpec, Experiment, Job, best_of_fits, check, kept_column, option

DENSITIES = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
COMPUTED = 0.5  # a feature is computed when its output predicts |x_i| with at least this R^2
# One ReLU neuron computes only one sign of x_i (ReLU(x) or ReLU(-x)), R^2 about 0.2: "half computed".
HALF = 0.15
CARRIES = 0.25  # a neuron carries feature i when its rescaled |W1[j, i]| is at least this (its largest is 1)
MOSTLY = 0.9  # "every neuron" in the paper's figure captions, checked as at least this share of the neurons
WRITES = 0.01  # a neuron writes when its largest |W2| entry is at least this share of the model's largest


@dataclass(frozen=True)
class ComputationSpec(CommonSpec):
    features: int = option(100, "Number of features n (the paper: 100).")
    hidden: int = option(40, "Neurons m (the paper: 40).")
    importance_decay: float = option(0.8, "Feature i has importance decay^i.")
    fits: int = option(1, "Models trained per density; the one with the lowest expected loss is analysed.")
    test_examples: int = option(2000, "Fresh examples per feature for its R^2 (analysis only).")

    def __post_init__(self):
        _check_int("features", self.features, 1, 10_000)
        _check_int("hidden", self.hidden, 1, 10_000)
        _check_float("importance_decay", self.importance_decay, 0.0, 1.0, lo_open=True)
        _check_int("fits", self.fits, 1, 10_000)
        _check_int("test_examples", self.test_examples, 1, 1_000_000)
        super().__post_init__()

    @property
    def model(self) -> ModelSpec:
        return ModelSpec(self.features, self.hidden, "abs-computation")

    def importance(self) -> np.ndarray:
        return self.importance_decay ** np.arange(self.features)


def rescale_neurons(P: dict) -> dict:
    """The same function with every neuron's largest |W1| entry 1: W1 rows and b1 times c_j = 1 / max_i
    |W1[j, i]|, W2 columns divided by c_j (a dead all-zero neuron is left as it is). P: one model."""
    scale = P["W1"].abs().amax(dim=1)
    c = torch.where(scale > 0, 1.0 / scale.clamp_min(1e-30), torch.ones_like(scale))
    return {"W1": P["W1"] * c[:, None], "b1": P["b1"] * c, "W2": P["W2"] / c[None, :], "b2": P["b2"].clone()}


def carries(P: dict) -> torch.Tensor:
    """(m, n) bool: neuron j carries feature i, rescaled |W1[j, i]| >= CARRIES (a dead, all-zero
    neuron carries none). P: one model, rescaled (rescale_neurons)."""
    return P["W1"].abs() >= CARRIES


def features_per_neuron(P: dict) -> np.ndarray:
    """Per neuron (m,): how many features it carries (carries); 0 for a dead neuron."""
    return carries(P).sum(dim=1).numpy()


def fires(P: dict) -> torch.Tensor:
    """(m,) bool: neurons that fire on some input with one active feature, max_i |W1[j, i]| + b1[j] > 0
    (inputs lie in [-1, 1]; a neuron that never fires computes nothing, whatever its weights). Decided
    from the weights, not a sample: at density 0.001 a sample of 2,000 examples left neurons that fire
    whenever their feature exceeds 0.2 unseen (a review). P: one model."""
    return P["W1"].abs().amax(dim=1) + P["b1"] > 0


def writes(P: dict) -> torch.Tensor:
    """(m,) bool: neurons whose output column reaches some output, max_i |W2[i, j]| at least WRITES x the
    largest among neurons that can fire (the quick run's smallest is 0.036 of it; a never-firing neuron
    with a huge column must not set the scale). P: one model, rescaled."""
    col = P["W2"].abs().amax(dim=0)
    live = col[fires(P)]
    return col >= WRITES * (live.max() if live.numel() else col.max()).clamp_min(1e-30)


def used_features_per_neuron(P: dict, r2: np.ndarray) -> np.ndarray:
    """Per neuron (m,): the features it carries (carries) that the model computes at least one sign of
    (R^2 >= HALF), 0 for a neuron that cannot fire (``fires``) or writes nowhere (``writes``). What the
    mono/polysemantic checks count: raw weights pass an untrained init (every neuron carries several
    features at random) and a model whose neurons are all dead (b1 = -100; both found by an audit)."""
    used = carries(P) & torch.as_tensor(np.asarray(r2) >= HALF)[None, :]
    return (used.sum(dim=1) * (fires(P) & writes(P))).numpy()


def neuron_shares(P: dict, used: np.ndarray) -> tuple[float, float, int]:
    """(monosemantic share, polysemantic share, distinct features of the monosemantic neurons) of one
    rescaled model P, from used_features_per_neuron: monosemantic carries exactly one feature, raw
    (carries), and the model computes it; polysemantic carries two or more computed features. Shares of
    all m, not of the live ones: otherwise two live neurons beside dead ones (or ones that write
    nowhere) made 1.0 (a review); distinct, because m neurons all on feature 0 are 'monosemantic' too
    (a second review)."""
    raw = features_per_neuron(P)
    mono = (used == 1) & (raw == 1)
    distinct = len(set(carries(P)[torch.as_tensor(mono)].nonzero()[:, 1].tolist()))
    return float(np.mean(mono)), float(np.mean(used >= 2)), distinct


def eval_uniforms(spec: ComputationSpec) -> torch.Tensor:
    """(n, test_examples, n) float32: the Philox evaluation stream's uniforms of feature i's test examples
    (instance i), which feature_r2 turns into examples at any density."""
    return rng.uniforms(spec.seed, torch.arange(spec.features), 0, spec.test_examples, spec.features,
                        stream=rng.STREAM_EVAL)


def feature_r2(P: dict, spec: ComputationSpec, density: float, u: torch.Tensor | None = None) -> np.ndarray:
    """Per feature i (n,): R^2 of the model's output y_i as a prediction of |x_i|, 1 - E[(y_i - |x_i|)^2]
    / Var(|x_i|), on fresh examples (Philox evaluation stream, float64) where feature i is active with
    probability 1/2 and every other feature at the model's training ``density``. A constant output
    (e.g. the bias alone) scores <= 0; computing |x_i| exactly scores 1. P: one model. u: eval_uniforms(spec)
    when the caller has them (the same for every density and model; drawn here otherwise)."""
    n = spec.features
    u = eval_uniforms(spec) if u is None else u
    Pd = {k: v.double() for k, v in P.items()}
    out = np.empty(n)
    for i in range(n):
        p = torch.full((1, n), density)
        p[0, i] = 0.5
        x = reference.features_from_uniform(u[i:i + 1], p, signed=True)[0].double()
        h = torch.relu(x @ Pd["W1"].T + Pd["b1"])
        y = torch.relu(h @ Pd["W2"][i] + Pd["b2"][i])
        t = x[:, i].abs()
        out[i] = 1.0 - float(((y - t) ** 2).mean()) / max(float(t.var(unbiased=False)), 1e-30)
    return out


class Computation(Experiment):
    name = "computation"
    title = "computation in superposition: n=100 features' |x| computed by m=40 neurons when sparse"
    spec_cls = ComputationSpec
    presets = {
        # 1 fit, 10,000 steps (cpu: kernels/cpu_train_untied.py; the triton kernels do not train untied models).
        # At 5,000 steps the dense model is still shedding its second features: the monosemantic share at
        # density 1 over seeds 0-6 was 0.975, 0.825 (failing the check), 0.925, 0.95, 0.975, 0.9, 0.925;
        # at 10,000 (the notebook's and the paper preset's steps) seeds 0-5 gave 1.0, 0.925, 0.975, 1.0,
        # 0.975, 0.95 (python -m bench.check_seeds --experiments computation --seeds 0 1 2 3 4 5).
        "quick": dict(fits=1, steps=10_000, batch_size=1024, lr=1e-3),
        "paper": dict(fits=3, steps=10_000, batch_size=1024, lr=1e-3),
    }
    analysis_fields = ("test_examples",)
    outputs = ("instances.parquet", "features.parquet", "neurons.parquet", "weights.safetensors", "figures/computation.png")
    quick_cost = "7 models (n=100, m=40, untied) x 10,000 steps; 20 s on 2 CPU cores (cpu backend, AMD EPYC Zen 4)"

    def job_sizes(self, spec):
        from .memory import JobSize
        return [JobSize("models", len(DENSITIES) * spec.fits, spec.features, spec.hidden, untied=True)]

    def jobs(self, spec):
        d = np.repeat(np.array(DENSITIES), spec.fits)
        p = np.repeat(d[:, None], spec.features, axis=1)
        return [Job("models", spec.model, DataSpec(p, spec.importance()), spec.train_spec())]

    def analyse(self, spec, results, run_dir):
        res = results["models"]
        loss = res.loss.numpy()
        ranked = {}
        if spec.fits > 1:  # ~1 s per model at n = 100 (2 CPU cores): only where there is a choice to make
            ranked["expected_loss"] = untied_equal_density_expected_losses(
                res.params, np.repeat(DENSITIES, spec.fits), np.tile(spec.importance(), (len(loss), 1)), spec.seed)
        kept = best_of_fits(ranked.get("expected_loss", loss), spec.fits, res.diverged)
        computed, rows, rescaled, carried, used, diverged = [], [], [], [], [], []
        u = eval_uniforms(spec)  # drawn once: the same test examples' uniforms at every density
        for j, d in enumerate(DENSITIES):
            k = int(kept[j])
            P = rescale_neurons({name: t[k] for name, t in res.params.items()})
            rescaled.append(P)
            r2 = feature_r2(P, spec, d, u)
            ok = r2 >= COMPUTED
            bad = bool(res.diverged[k])
            diverged.append(bad)
            computed.append(-1 if bad else int(ok.sum()))
            carried.append(features_per_neuron(P))
            used.append(used_features_per_neuron(P, r2))
            rows.append({"density": [d] * spec.features, "feature": np.arange(spec.features),
                         "importance": spec.importance(), "r2": np.where(bad, np.nan, r2), "computed": ok & ~bad,
                         "neurons_carrying": carries(P).sum(dim=0).numpy()})
        P_ = len(DENSITIES)
        write_parquet(run_dir.root / "instances.parquet", {
            "instance": np.arange(len(loss)), "density": np.repeat(DENSITIES, spec.fits),
            "fit": np.tile(np.arange(spec.fits), P_), "final_loss": loss, **ranked, "diverged": res.diverged,
            "kept": kept_column(len(loss), kept, res.diverged)})
        write_parquet(run_dir.root / "features.parquet", {k: np.concatenate([np.asarray(r[k]) for r in rows])
                                                          for k in rows[0]})
        write_parquet(run_dir.root / "neurons.parquet", {
            "density": np.repeat(DENSITIES, spec.hidden), "neuron": np.tile(np.arange(spec.hidden), P_),
            "features_carried": np.concatenate(carried), "computed_features_carried": np.concatenate(used)})
        write_tensors(run_dir.root / "weights.safetensors",
                      {**res.params, **{f"{k}_rescaled": torch.stack([P[k] for P in rescaled]) for k in rescaled[0]},
                       "kept": torch.as_tensor(kept)},
                      metadata={"layout": f"W1 (instances, {spec.hidden}, {spec.features}), b1 (instances, "
                                          f"{spec.hidden}), W2 (instances, {spec.features}, {spec.hidden}), b2 "
                                          f"(instances, {spec.features}): rows as instances.parquet; *_rescaled: the "
                                          "kept model per density with every neuron's max |W1| = 1"})
        figure(run_dir.figures / "computation.png", spec, rescaled, computed, carried)
        sparse = [c for c, d in zip(computed, DENSITIES) if d <= 0.01]
        dense = computed[0]
        # A diverged kept model measures NaN, so its check fails (base.check) instead of reading 0.
        mono, _, distinct = (float("nan"), None, 0) if diverged[0] else neuron_shares(rescaled[0], used[0])
        poly = float("nan") if diverged[-1] else neuron_shares(rescaled[-1], used[-1])[1]
        least = -(-spec.hidden // 8)  # monosemantic neurons cover at least m/8 features (quick 12, paper 13)
        most = spec.hidden // 2  # a model without superposition computes at most m/2 (module docstring)
        checks = [
            check("computes-in-superposition", f"at low density (<= 0.01) the model computes |x_i| for more features "
                  f"than the {most} that {spec.hidden} neurons compute without superposition (two per feature; a "
                  f"feature counts when its output predicts |x_i| with R^2 >= {COMPUTED})",
                  sparse, bool(sparse) and max(sparse) > most, f"> {most} at some density"),
            check("dense-without-superposition", f"when dense (density 1) it computes at most {most} features, two "
                  "neurons each", dense, 0 <= dense <= most, f"<= {most}"),
            check("dense-monosemantic", f"when dense (density 1) the neurons are monosemantic: [share of the "
                  f"{spec.hidden} neurons carrying one feature (rescaled |W1| >= {CARRIES}), which the model "
                  f"computes at least one sign of (R^2 >= {HALF}), in a neuron that can fire and writes to an "
                  "output; distinct features among them]", [mono, distinct],
                  mono >= MOSTLY and distinct >= least, f"[>= {MOSTLY}, >= {least}]"),
            check("sparse-polysemantic", f"at density {DENSITIES[-1]:g} the neurons are polysemantic: share of the "
                  f"{spec.hidden} neurons carrying two or more features the model computes (neurons that can fire "
                  "and write)", poly,
                  poly >= MOSTLY, f">= {MOSTLY}"),
        ]
        half = [int((np.asarray(r["r2"]) >= HALF).sum()) for r in rows]
        return {"densities": list(DENSITIES), "features_computed": computed, "features_half_computed": half,
                "features_in_some_neuron": [int((np.asarray(r["neurons_carrying"]) > 0).sum()) for r in rows],
                "mean_features_per_neuron": [float(c[c > 0].mean()) if (c > 0).any() else 0.0 for c in carried],
                "checks": checks}

    def report(self, spec, summary):
        rows = ", ".join(f"{d:g}: {c} ({h})" for d, c, h in zip(summary["densities"], summary["features_computed"],
                                                                summary["features_half_computed"]))
        per = ", ".join(f"{d:g}: {f:.1f}" for d, f in zip(summary["densities"], summary["mean_features_per_neuron"]))
        return [f"computation (n={spec.features}, m={spec.hidden}): features whose |x| is computed (R^2 >= {COMPUTED}; "
                f"in brackets at least one sign, R^2 >= {HALF}), by density: {rows}",
                f"features carried per live neuron (rescaled |W1| >= {CARRIES}), by density: {per}"]


def figure(path, spec, rescaled, computed, carried) -> None:
    """One panel per density: each neuron's input weights W1[j, :] (rescaled, max |W1| = 1) as a
    stacked bar per feature, positive up and negative down, coloured by feature (yellow = most
    important), neurons sorted by their strongest feature."""
    P = len(DENSITIES)
    fig, axes = plt.subplots(P, 1, figsize=(11, 1.55 * P + 0.8), sharex=True, constrained_layout=True)
    colours = plt.cm.viridis_r(np.linspace(0.0, 1.0, spec.features))
    for ax, d, M, c, per in zip(axes, DENSITIES, rescaled, computed, carried):
        W1 = M["W1"].numpy()
        order = np.argsort(np.argmax(np.abs(W1), axis=1), kind="stable")
        W1 = W1[order]
        # Stacks as one PolyCollection per panel: one ax.bar per feature made 1,400 artists and took 37 s.
        pos, neg = np.clip(W1, 0, None), np.clip(W1, None, 0)  # (m, n)
        tops, bottoms = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
        boxes, faces = [], []
        for y1, y0 in ((tops, tops - pos), (bottoms, bottoms - neg)):
            j, i = np.nonzero(y1 != y0)
            x = j[:, None] + np.array([-0.4, 0.4, 0.4, -0.4])
            y = np.stack([y0[j, i], y0[j, i], y1[j, i], y1[j, i]], axis=1)
            boxes.append(np.stack([x, y], axis=2))
            faces.append(colours[i])
        ax.add_collection(PolyCollection(np.concatenate(boxes), facecolors=np.concatenate(faces), linewidths=0))
        ax.set_xlim(-0.8, W1.shape[0] - 0.2)
        low, high = float(bottoms[:, -1].min()), float(tops[:, -1].max())
        pad = 0.05 * max(high - low, 1e-9)
        ax.set_ylim(low - pad, high + pad)
        ax.axhline(0, color="0.3", lw=0.5)
        live = per[per > 0]
        ax.set_ylabel(f"1-S={d:g}\n{c} computed\n{live.mean() if live.size else 0:.1f} feat./neuron", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("neuron (sorted by its strongest feature)")
    bar = fig.colorbar(plt.cm.ScalarMappable(cmap="viridis_r", norm=plt.Normalize(0, spec.features - 1)), ax=axes,
                       shrink=0.3, aspect=25, pad=0.01)
    bar.set_label(f"feature i (importance {spec.importance_decay:g}^i)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(f"Computation in superposition: each neuron's input weights W1[j, i], rescaled to max |W1[j, :]| = 1 "
                 f"and stacked over features i (n={spec.features}, m={spec.hidden})", fontsize=10)
    save(fig, path)


EXPERIMENT = Computation()
