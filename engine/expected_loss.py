"""Expected loss of trained models on the data distribution, exact in which features are active.

Why not the training loss: an experiment that keeps the lowest-loss of several fits, or drops the
worst, ranks models whose losses differ by a few percent, and the training loss (the mean over the
last 100 batches) is far noisier than that at low density, where the loss comes from rare
coincidences of active features: on the 3->2 phase diagram at density 0.01 it ranged 5e-6..3e-5
over seeds whose expected losses lie within 1.1e-5..1.7e-5, and kept the worse solution.

The expected loss of a model at feature densities p (n,) is sum over active sets A of P(A | p) x
E[loss | exactly A active]. The probabilities are exact (set_probabilities); only the values of the
active features are sampled (stratified_sample: random rows; grid_sample: a midpoint grid, for few
features), one fixed sample that every model sees (common random numbers): the comparison of two
models is then much less noisy than either estimate. Used
with tied (W, b) models of n <= MAX_FEATURES features (2^n active sets).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import reference, rng
from .errors import SpecError

MAX_FEATURES = 12  # 4,096 active sets


def active_sets(n: int) -> np.ndarray:
    """Every set of active features as a bool mask (2^n, n), by size then index (row 0: none)."""
    if not 1 <= n <= MAX_FEATURES:
        raise ValueError(f"n must be in [1, {MAX_FEATURES}] for an enumeration of active sets (got {n})")
    masks = [np.array([(s >> i) & 1 for i in range(n)], bool) for s in range(2 ** n)]
    return np.array(sorted(masks, key=lambda m: (m.sum(), [-int(v) for v in m])))


def set_probabilities(p) -> np.ndarray:
    """P(exactly the features of each active set are active), (P, 2^n), for densities p (P, n)."""
    p = np.asarray(p, dtype=np.float64)
    sets = active_sets(p.shape[1])
    return np.prod(np.where(sets[None], p[:, None, :], 1 - p[:, None, :]), axis=2)


def stratified_sample(seed: int, n: int, rows_single: int) -> list[torch.Tensor]:
    """One fixed evaluation sample, stratified by active set: for set j of active_sets(n), float64
    examples (rows_j, n) whose active features are uniforms of the Philox evaluation stream keyed by
    (seed, instance j, step 0, rng.STREAM_EVAL), which no training draw uses, and the others 0: draws
    from the data distribution given that exactly those features are active. rows_j = rows_single /
    4^(size - 1), at least 64: the single-feature sets, which carry most of the loss when sparse, get
    the most; the empty set one row (its loss is exact)."""
    out = []
    for j, mask in enumerate(active_sets(n)):
        k = int(mask.sum())
        rows = 1 if k == 0 else max(64, rows_single // 4 ** (k - 1))
        u = rng.uniforms(seed, torch.tensor([j]), 0, rows, n, stream=rng.STREAM_EVAL)[0].double()
        out.append(u * torch.as_tensor(mask, dtype=torch.float64))
    return out


# Points per axis grid_sample gives a set of many features at least, while the set stays within
# MAX_GRID_ROWS: 8 (a bias of ~0.4% in E[u^2]) for up to 5 features; round(points^(1/k)) alone gave a
# set of 5 only 5 per axis at 4,096 points (~1%, on every loss at density 1).
MIN_AXIS, MAX_GRID_ROWS = 8, 2 ** 15


def grid_axis(k: int, points: int) -> int:
    """Points per axis of grid_sample's grid for a set of k active features: round(points^(1/k)), at
    least 2, raised towards MIN_AXIS while the grid keeps within MAX_GRID_ROWS rows."""
    g = max(2, int(round(points ** (1.0 / k))))
    while g < MIN_AXIS and (g + 1) ** k <= MAX_GRID_ROWS:
        g += 1
    return g


def grid_sample(n: int, points: int) -> list[torch.Tensor]:
    """A deterministic evaluation sample, stratified by active set like stratified_sample, whose rows
    are a midpoint grid instead of random draws: for set j of active_sets(n) with k members, g =
    grid_axis(k, points) values (i + 1/2) / g per active feature, every combination
    (g^k rows), the others 0; the empty set one row. The mean over a set's rows is the midpoint rule
    for E[loss | exactly that set active], whose error falls as 1/g^2 for the piecewise-quadratic
    losses of ReLU models, against 1/sqrt(rows) for random rows: the phase diagram's seeds differ by
    a few percent in the pair sets' losses, which 1,024 random rows per pair could not rank."""
    out = []
    for mask in active_sets(n):
        k = int(mask.sum())
        x = torch.zeros(1, n, dtype=torch.float64)
        if k:
            g = grid_axis(k, points)
            axis = (torch.arange(g, dtype=torch.float64) + 0.5) / g
            grid = torch.cartesian_prod(*[axis] * k).reshape(-1, k)
            x = torch.zeros(grid.shape[0], n, dtype=torch.float64)
            x[:, torch.as_tensor(np.flatnonzero(mask))] = grid
        out.append(x)
    return out


# Doubles per intermediate tensor (models x rows x n) of conditional_losses: ~8 MB, so a big sample
# never holds gigabytes (a fixed 256 models x 2^20 rows took ~12 GiB), and small ones stay in cache.
ELEMENTS = 2 ** 20


def conditional_losses(W, b, sample: list[torch.Tensor], importance=None, variant: str = "relu-output",
                       chunk: int = 256) -> np.ndarray:
    """float64 loss of each model W (K, m, n), b (K, n) given each active set: (K, len(sample)), by
    engine.reference.instance_loss on each set's rows (stratified_sample or grid_sample; every model
    sees the same examples). importance: (K, n) per model, or None for all ones. Models go through in
    groups of at most ``chunk``, fewer where a set has many rows (ELEMENTS per intermediate); each
    model's loss is computed alone, so the grouping never changes a number."""
    W = torch.as_tensor(W, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    K, n = W.shape[0], W.shape[2]
    imp = (torch.ones(K, n, dtype=torch.float64) if importance is None
           else torch.as_tensor(np.asarray(importance, dtype=np.float64)))
    out = np.empty((K, len(sample)))
    for j, x in enumerate(sample):
        step = max(1, min(chunk, ELEMENTS // (x.shape[0] * max(n, W.shape[1]))))
        for lo in range(0, K, step):
            Wc, bc, ic = W[lo:lo + step], b[lo:lo + step], imp[lo:lo + step]
            out[lo:lo + step, j] = reference.instance_loss(Wc, bc, x[None].expand(Wc.shape[0], -1, -1), ic,
                                                           variant).numpy()
    return out


def expected_losses(cond: np.ndarray, p) -> np.ndarray:
    """Expected loss of each model on each distribution: cond (K, 2^n) from conditional_losses, p
    (P, n) densities -> (K, P). Exact in which features are active; only the values are sampled."""
    return cond @ set_probabilities(p).T


def own_expected_losses(cond: np.ndarray, p) -> np.ndarray:
    """Expected loss of each model at its own densities: cond (K, 2^n), p (K, n) -> (K,)."""
    return np.einsum("ks,ks->k", cond, set_probabilities(p))


# Strata of size_sample whose probability is below this for every model are not evaluated: each
# conditional loss is at most sum_i I_i / n (bounded weights aside), so they move no ranking.
NEGLIGIBLE = 1e-12


def size_probabilities(p, n: int) -> np.ndarray:
    """P(exactly k of n independent features are active), k = 0..n, for models whose features all
    have density p (P,): the binomial pmf, (P, n + 1) float64."""
    p = np.asarray(p, dtype=np.float64).reshape(-1, 1)
    k = np.arange(n + 1)
    comb = np.array([math.comb(n, int(j)) for j in k], dtype=np.float64)
    return comb * p ** k * (1 - p) ** (n - k)  # numpy: 0 ** 0 = 1, so p = 0 and p = 1 are exact


def size_sample(seed: int, n: int, rows: int, single_points: int = 512) -> list[torch.Tensor]:
    """A fixed evaluation sample stratified by the number of active features, for models whose n
    features are independent and share one density (any n; active_sets' 2^n sets stop at 12).
    Entry k (k = 0..n) holds float64 rows (rows_k, n) with exactly k active features: k = 0 one zero
    row; k = 1 a midpoint grid, single_points values (i + 1/2) / single_points for each feature in
    turn (n x single_points rows: the sparse end's loss is mostly single features, and the grid
    makes it near exact); k >= 2 ``rows`` random rows whose active set is uniform over the k-subsets
    (given that k features are active and all share one density, every k-subset is equally likely)
    and whose active values are uniform. The draws come from the Philox evaluation stream keyed by
    (seed, instance k, steps 1 and 2, rng.STREAM_EVAL): step 1 picks each row's set (its k smallest
    of n uniforms), step 2 gives the values; stratified_sample uses step 0 only."""
    out = [torch.zeros(1, n, dtype=torch.float64)]
    if n >= 1:
        axis = (torch.arange(single_points, dtype=torch.float64) + 0.5) / single_points
        single = torch.zeros(n, single_points, n, dtype=torch.float64)
        single[torch.arange(n), :, torch.arange(n)] = axis
        out.append(single.reshape(n * single_points, n))
    for k in range(2, n + 1):
        order = rng.uniforms(seed, torch.tensor([k]), 1, rows, n, stream=rng.STREAM_EVAL)[0].argsort(dim=1)
        active = torch.zeros(rows, n, dtype=torch.bool)
        active.scatter_(1, order[:, :k], True)
        u = rng.uniforms(seed, torch.tensor([k]), 2, rows, n, stream=rng.STREAM_EVAL)[0].double()
        out.append(u * active)
    return out


def equal_density_expected_losses(W, b, density, importance, variant: str = "relu-output", seed: int = 0,
                                  rows: int = 8192) -> np.ndarray:
    """Each model's expected loss when its n features are independent with one density each model's
    own: W (K, m, n), b (K, n) tied models of ``variant`` (relu-output, relu-hidden, linear), density
    (K,), importance (K, n) -> (K,) float64, NaN for NaN weights. Exact in how many features are
    active (size_probabilities), the conditional losses on size_sample(seed, n, rows); strata
    below NEGLIGIBLE probability for every model are left out. What privileged-basis ranks its fits
    by (n = 10: 1,024 active sets, too many for grid_sample's per-set grids)."""
    if len(np.shape(W)) != 3:
        raise SpecError("W", "a (K, m, n) tensor", tuple(np.shape(W)))
    K, n = np.shape(W)[0], np.shape(W)[2]
    density = np.asarray(density, dtype=np.float64)
    if density.shape != (K,):
        raise SpecError("density", f"one density per model, shape ({K},)", tuple(density.shape))
    if not ((density >= 0) & (density <= 1)).all():
        raise SpecError("density", "in [0, 1]", float(density[~((density >= 0) & (density <= 1))][0]))
    if np.shape(b) != (K, n) or np.shape(importance) != (K, n):
        raise SpecError("b and importance", f"shape ({K}, {n}) to match W",
                        (tuple(np.shape(b)), tuple(np.shape(importance))))
    if variant not in ("relu-output", "relu-hidden", "linear"):
        raise SpecError("variant", "relu-output, relu-hidden or linear (tied models)", variant)
    probs = size_probabilities(density, n)  # (K, n + 1)
    used = np.flatnonzero(probs.max(0) >= NEGLIGIBLE)
    sample = size_sample(seed, n, rows)
    cond = conditional_losses(W, b, [sample[k] for k in used], importance, variant)  # (K, len(used))
    return np.einsum("ks,ks->k", cond, probs[:, used])


# A state of set_states with at most this many active features gets a midpoint grid (grid_axis),
# one with more random rows: a grid of 10 features would need 2^10 points at 2 per axis.
GRID_FEATURES = 5
MAX_STATES = 4096


def set_states(n: int, sets, p) -> tuple[np.ndarray, np.ndarray]:
    """Every state of the data in which features are active, exactly, for the feature sets of
    DataSpec.sets (engine.reference.features_from_uniform's rule): masks (S, n) bool and their
    probabilities (K, S) under densities p (K, n). A correlated set is off (1 - p_a, a its first
    member) or all on (p_a); an anticorrelated set off (1 - p_a) or exactly member j on (p_a / size
    each); a feature in no set off or on (1 - p_i, p_i). S = the product of the units' counts."""
    p = np.asarray(p, dtype=np.float64)
    in_set = np.zeros(n, bool)
    units = []  # per unit: [(members on, probability (K,)), ...]
    for kind, a, size in sets:
        in_set[a:a + size] = True
        off = (np.zeros(n, bool), 1 - p[:, a])
        if kind == "correlated":
            on = np.zeros(n, bool)
            on[a:a + size] = True
            units.append([off, (on, p[:, a])])
        else:
            units.append([off] + [(np.arange(n) == a + j, p[:, a] / size) for j in range(size)])
    for i in np.flatnonzero(~in_set):
        units.append([(np.zeros(n, bool), 1 - p[:, i]), (np.arange(n) == i, p[:, i])])
    count = math.prod(len(u) for u in units)
    if count > MAX_STATES:
        raise SpecError("sets", f"at most {MAX_STATES} data states (here {count})", count)
    masks, probs = [np.zeros(n, bool)], [np.ones(p.shape[0])]
    for unit in units:
        masks = [m | on for m in masks for on, _ in unit]
        probs = [q * r for q in probs for _, r in unit]
    return np.array(masks), np.stack(probs, axis=1)


def state_sample(masks: np.ndarray, seed: int, points: int = 4096, rows: int = 8192) -> list[torch.Tensor]:
    """One fixed evaluation sample per state (masks (S, n) from set_states), float64 rows (rows_s, n)
    whose active features are independent uniforms and the others 0 (every set rule gives its active
    members independent uniform values): a midpoint grid (grid_axis(k, points) per axis) for states
    of k <= GRID_FEATURES active features, else ``rows`` random rows from the evaluation stream keyed by
    (seed, instance s, step 3, rng.STREAM_EVAL)."""
    out = []
    for s, mask in enumerate(masks):
        k, idx = int(mask.sum()), torch.as_tensor(np.flatnonzero(mask))
        if k == 0:
            out.append(torch.zeros(1, len(mask), dtype=torch.float64))
            continue
        if k <= GRID_FEATURES:
            g = grid_axis(k, points)
            values = torch.cartesian_prod(*[(torch.arange(g, dtype=torch.float64) + 0.5) / g] * k).reshape(-1, k)
        else:
            values = rng.uniforms(seed, torch.tensor([s]), 3, rows, k, stream=rng.STREAM_EVAL)[0].double()
        x = torch.zeros(values.shape[0], len(mask), dtype=torch.float64)
        x[:, idx] = values
        out.append(x)
    return out


def set_expected_losses(W, b, p, importance, sets, variant: str = "relu-output", seed: int = 0,
                        points: int = 4096, rows: int = 65536) -> np.ndarray:
    """Each model's expected loss on data with feature sets (DataSpec.sets): W (K, m, n), b (K, n)
    tied models, p (K, n) densities, importance (K, n) -> (K,) float64 (NaN for NaN weights). Exact in
    which features are active (set_states), the values on state_sample. What correlated ranks its fits by;
    rows 65,536: its sets of 10 put 10 or 20 features in a state, and at 8,192 random rows two fits
    0.4% apart in expected loss swapped places with the sample's seed (at 65,536 they did not)."""
    masks, probs = set_states(np.shape(W)[2], sets, p)
    cond = conditional_losses(W, b, state_sample(masks, seed, points, rows), importance, variant)
    return np.einsum("ks,ks->k", cond, probs)


def instance_expected_losses(W, b, p, importance, points: int = 4096) -> np.ndarray:
    """Each model's expected loss at its own densities p (K, n) and importances (K, n), on
    grid_sample(n, points): (K,) float64 (NaN for NaN weights). W (K, m, n), b (K, n) relu-output models.
    What the phase diagram and intro rank their fits by."""
    n = np.shape(p)[1]
    return own_expected_losses(conditional_losses(W, b, grid_sample(n, points), importance), p)
