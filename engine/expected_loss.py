"""Expected loss of trained models on the data distribution, exact in which features are active.

Why not the training loss: an experiment that keeps the lowest-loss of several fits, or drops the
worst, ranks models whose losses differ by a few percent, and the training loss (the mean over the
last 100 batches) is far noisier than that at low density, where the loss comes from rare
coincidences of active features: on the 3->2 phase diagram at density 0.01 it ranged 5e-6..3e-5
over seeds whose expected losses lie within 1.1e-5..1.7e-5, and kept the worse solution.

The expected loss of a model at feature densities p (n,) is sum over active sets A of P(A | p) x
E[loss | exactly A active]. The probabilities are exact (set_probabilities); only the values of the
active features are sampled (stratified_sample: random rows; grid_sample: a midpoint grid, for few
features; size_blocks: a midpoint grid per single feature, a jittered grid per pair, a Latin hypercube
per larger subset), one fixed sample that every model sees (common random numbers): the comparison of
two models is then much less noisy than either estimate. For tied (W, b) models (relu-output,
relu-hidden, linear):
- instance_expected_losses: any densities, n <= MAX_FEATURES (2^n active sets);
- equal_density_expected_losses: one density per model (all n features), any n: exact in how many
  features are active, the active set sampled;
- set_expected_losses: data with feature sets (DataSpec.sets), exact in which sets are active.
Samples are made one active set (state, stratum) at a time, so memory stays within one of them.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from . import reference, rng
from .errors import SpecError
from .spec import ModelSpec, _check_int, check_sets

# 256 active sets: at most 2.65M rows of grid_sample per model (56 sets of 5 features x 8^5 points);
# n = 12 took a minute and 12 GiB per model. Beyond it: equal_density_expected_losses (one density
# per model) or set_expected_losses with its own limit on states.
MAX_FEATURES = 8
TIED_VARIANTS = ("relu-output", "relu-hidden", "linear")


def _float64(name: str, value, what: str) -> torch.Tensor:
    """value as a float64 tensor without autograd history (nn.Parameter and numpy views welcome), or a
    SpecError naming the field."""
    try:
        if isinstance(value, torch.Tensor):
            return value.detach().to(torch.float64)
        return torch.tensor(np.array(value, dtype=np.float64))  # a copy: read-only views are fine
    except (TypeError, ValueError) as err:
        raise SpecError(name, what, type(value).__name__) from err


def check_models(W, b, importance=None, variant: str = "relu-output"):
    """Validated float64 copies of tied models: W (K, m, n), b (K, n), importance (K, n) finite and
    >= 0 (None: all ones). SpecError, naming the field, for anything else."""
    W = _float64("W", W, "a (K, m, n) array of numbers")
    if W.dim() != 3 or min(W.shape) < 1:
        raise SpecError("W", "a (K, m, n) array with K, m, n >= 1", tuple(W.shape))
    K, n = W.shape[0], W.shape[2]
    b = _float64("b", b, f"a ({K}, {n}) array of numbers")
    if tuple(b.shape) != (K, n):
        raise SpecError("b", f"shape ({K}, {n}) to match W", tuple(b.shape))
    imp = torch.ones(K, n, dtype=torch.float64) if importance is None else \
        _float64("importance", importance, f"a ({K}, {n}) array of numbers")
    if tuple(imp.shape) != (K, n):
        raise SpecError("importance", f"shape ({K}, {n}) to match W", tuple(imp.shape))
    if not (torch.isfinite(imp) & (imp >= 0)).all():
        raise SpecError("importance", "finite and >= 0", float(imp[~(torch.isfinite(imp) & (imp >= 0))][0]))
    if variant not in TIED_VARIANTS:
        raise SpecError("variant", "relu-output, relu-hidden or linear (tied models)", variant)
    return W, b, imp


def check_densities(name: str, p, shape: tuple) -> np.ndarray:
    """p as float64 of the given shape with every value in [0, 1], or a SpecError naming ``name``."""
    try:
        p = np.array(p, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise SpecError(name, "numbers in [0, 1]", type(p).__name__) from err
    if p.shape != shape:
        raise SpecError(name, f"shape {shape}", p.shape)
    bad = ~((p >= 0) & (p <= 1))
    if bad.any():
        raise SpecError(name, "in [0, 1]", float(p[bad][0]))
    return p


def active_sets(n: int) -> np.ndarray:
    """Every set of active features as a bool mask (2^n, n), by size then index (row 0: none)."""
    _check_int("n", n, 1, MAX_FEATURES)
    masks = [np.array([(s >> i) & 1 for i in range(n)], bool) for s in range(2 ** n)]
    return np.array(sorted(masks, key=lambda m: (m.sum(), [-int(v) for v in m])))


def set_probabilities(p) -> np.ndarray:
    """P(exactly the features of each active set are active), (P, 2^n), for densities p (P, n)."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2:
        raise SpecError("p", "densities of shape (P, n)", p.shape)
    p = check_densities("p", p, p.shape)
    sets = active_sets(p.shape[1])
    return np.prod(np.where(sets[None], p[:, None, :], 1 - p[:, None, :]), axis=2)


def eval_values(seed: int, instance: int, step: int, rows: int, k: int) -> torch.Tensor:
    """(rows, k) float64 strictly inside (0, 1): the Philox evaluation stream's uniforms keyed by (seed,
    instance, step, rng.STREAM_EVAL), multiples of 2^-24 in [0, 1), moved to the middle of their bins
    (+2^-25). An active feature's value is then never 0, which would make it inactive (probability 2^-24
    per draw), and the values stay uniform over the 2^24 bins."""
    u = rng.uniforms(seed, torch.tensor([instance]), step, rows, k, stream=rng.STREAM_EVAL)[0].double()
    return u + 2.0 ** -25


def stratified_sample(seed: int, n: int, rows_single: int) -> list[torch.Tensor]:
    """One fixed evaluation sample, stratified by active set: for set j of active_sets(n), float64
    examples (rows_j, n) whose active features are eval_values(seed, instance j, step 0) (a stream no
    training draw uses), and the others 0: draws
    from the data distribution given that exactly those features are active. rows_j = rows_single /
    4^(size - 1), at least 64: the single-feature sets, which carry most of the loss when sparse, get
    the most; the empty set one row (its loss is exact)."""
    _check_int("seed", seed, 0, 2**63 - 1)
    _check_int("rows_single", rows_single, 1)
    out = []
    for j, mask in enumerate(active_sets(n)):
        k = int(mask.sum())
        rows = 1 if k == 0 else max(64, rows_single // 4 ** (k - 1))
        out.append(eval_values(seed, j, 0, rows, n) * torch.as_tensor(mask, dtype=torch.float64))
    return out


# Points per axis a grid gives a set of many features at least, while the set stays within
# MAX_GRID_ROWS: 8 (a bias of ~0.4% in E[u^2]) for up to 5 features; round(points^(1/k)) alone gave a
# set of 5 only 5 per axis at 4,096 points (~1%, on every loss at density 1).
MIN_AXIS, MAX_GRID_ROWS = 8, 2 ** 15
# A set (state) of at most this many active features gets a midpoint grid, one with more random rows:
# past 5 the grid drops below MIN_AXIS (3 per axis for 8 features, 2 for 9-12) and its midpoint bias
# reached -3% of the expected loss at n = 10, density 0.7, and -10% at density 1.
GRID_FEATURES = 5


def grid_axis(k: int, points: int) -> int:
    """Points per axis of the midpoint grid for a set of k active features: round(points^(1/k)), at
    least 2, raised towards MIN_AXIS while the grid keeps within MAX_GRID_ROWS rows."""
    g = max(2, int(round(points ** (1.0 / k))))
    while g < MIN_AXIS and (g + 1) ** k <= MAX_GRID_ROWS:
        g += 1
    return g


def state_rows(mask: np.ndarray, s: int, seed: int = 0, points: int = 4096, rows: int = 8192) -> torch.Tensor:
    """Evaluation rows (rows_s, n) float64 for one state: the features of mask (n,) active with
    independent uniform values, the others 0. k = 0 active: one zero row; k <= GRID_FEATURES: a
    midpoint grid, grid_axis(k, points) values (i + 1/2) / g per active feature, every combination
    (its mean is the midpoint rule for the conditional expectation, error ~1/g^2 for the
    piecewise-quadratic losses of ReLU models, against 1/sqrt(rows) for random rows); more: ``rows``
    random rows, eval_values(seed, instance s, step 3)."""
    n, idx = len(mask), np.flatnonzero(mask)
    k = len(idx)
    if k == 0:
        return torch.zeros(1, n, dtype=torch.float64)
    if k <= GRID_FEATURES:
        g = grid_axis(k, points)
        values = torch.cartesian_prod(*[(torch.arange(g, dtype=torch.float64) + 0.5) / g] * k).reshape(-1, k)
    else:
        values = eval_values(seed, s, 3, rows, k)
    x = torch.zeros(values.shape[0], n, dtype=torch.float64)
    x[:, torch.as_tensor(idx)] = values
    return x


def _check_sample_sizes(seed, points, rows):
    _check_int("seed", seed, 0, 2**63 - 1)
    _check_int("points", points, 1)
    _check_int("rows", rows, 1)


def state_sample(masks: np.ndarray, seed: int = 0, points: int = 4096, rows: int = 8192):
    """state_rows for each state of masks (S, n) (set_states, active_sets), state s keyed by its index:
    a generator, so one state's rows are in memory at a time (conditional_losses takes any iterable)."""
    _check_sample_sizes(seed, points, rows)
    return (state_rows(mask, s, seed, points, rows) for s, mask in enumerate(masks))


def grid_sample(n: int, points: int) -> list[torch.Tensor]:
    """A deterministic evaluation sample, stratified by active set like stratified_sample: for set j of
    active_sets(n), state_rows (a midpoint grid for sets of <= GRID_FEATURES features, else ``points``
    random rows of evaluation seed 0). The phase diagram's seeds differ by a few percent in the pair
    sets' losses, which 1,024 random rows per pair could not rank; the grid can."""
    return list(state_sample(active_sets(n), 0, points, points))


# Doubles per intermediate tensor (models x rows x n) of conditional_losses: ~8 MB, so a big sample
# never holds gigabytes (a fixed 256 models x 2^20 rows took ~12 GiB), and small ones stay in cache.
ELEMENTS = 2 ** 20


def _block_losses(K: int, width: int, sample, loss, chunk: int = 256) -> np.ndarray:
    """(K, S) float64: loss(lo, hi, x) -> (hi - lo,) for models lo..hi-1 on each row block x of the
    sample (any iterable), models in groups of at most ``chunk``, fewer where a block has many rows
    (ELEMENTS doubles per intermediate of ``width`` columns). Each model's loss is computed alone,
    so the grouping never changes a number."""
    columns = []
    for x in sample:
        col = np.empty(K)
        step = max(1, min(chunk, ELEMENTS // (x.shape[0] * width)))
        for lo in range(0, K, step):
            col[lo:lo + step] = loss(lo, min(K, lo + step), x).numpy()
        columns.append(col)
    return np.stack(columns, axis=1) if columns else np.empty((K, 0))


def conditional_losses(W, b, sample, importance=None, variant: str = "relu-output", chunk: int = 256) -> np.ndarray:
    """float64 loss of each model W (K, m, n), b (K, n) given each active set: (K, S) for a sample of S
    row blocks (a list, or any iterable: a generator keeps one block in memory at a time), by
    engine.reference.instance_loss on each block's rows (every model sees the same examples).
    importance: (K, n) per model, or None for all ones. Grouping models (``chunk``) never changes a
    number (_block_losses)."""
    W, b, imp = check_models(W, b, importance, variant)
    K, m, n = W.shape

    def loss(lo, hi, x):
        return reference.instance_loss(W[lo:hi], b[lo:hi], x[None].expand(hi - lo, -1, -1), imp[lo:hi], variant)
    return _block_losses(K, max(n, m), _row_blocks(sample, n), loss, chunk)


def _row_blocks(sample, n: int):
    """The blocks of ``sample`` as float64 tensors (rows, n), lazily; SpecError naming ``sample`` for
    anything else (a sample made for another n, a flat array)."""
    for x in sample:
        x = _float64("sample", x, f"row blocks of shape (rows, {n})")
        if x.dim() != 2 or x.shape[1] != n:
            raise SpecError("sample", f"row blocks of shape (rows, {n}) to match W (grid_sample({n}, ...))",
                            tuple(x.shape))
        yield x


def _check_sets_of(cond: np.ndarray, p) -> tuple[np.ndarray, np.ndarray]:
    """cond (K, 2^n) as float64 and the set probabilities of densities p (P, n): SpecError naming p
    when its n does not match cond's 2^n columns."""
    cond = np.asarray(cond, dtype=np.float64)
    if cond.ndim != 2 or cond.shape[1] < 2 or cond.shape[1] & (cond.shape[1] - 1):
        raise SpecError("cond", "a (K, 2^n) array from conditional_losses", cond.shape)
    probs = set_probabilities(p)
    if cond.shape[1] != probs.shape[1]:
        n = cond.shape[1].bit_length() - 1
        raise SpecError("p", f"densities of {n} feature{'s' * (n > 1)}, to match cond's 2^{n} active sets",
                        np.shape(p))
    return cond, probs


def expected_losses(cond: np.ndarray, p) -> np.ndarray:
    """Expected loss of each model on each distribution: cond (K, 2^n) from conditional_losses, p
    (P, n) densities -> (K, P). Exact in which features are active; only the values are sampled."""
    cond, probs = _check_sets_of(cond, p)
    return cond @ probs.T


def own_expected_losses(cond: np.ndarray, p) -> np.ndarray:
    """Expected loss of each model at its own densities: cond (K, 2^n), p (K, n) -> (K,)."""
    cond, probs = _check_sets_of(cond, p)
    if probs.shape[0] != cond.shape[0]:
        raise SpecError("p", f"one row of densities per model ({cond.shape[0]})", probs.shape[0])
    return np.einsum("ks,ks->k", cond, probs)


def instance_expected_losses(W, b, p, importance, points: int = 4096, variant: str = "relu-output") -> np.ndarray:
    """Each model's expected loss at its own densities p (K, n) and importances (K, n), on
    grid_sample(n, points) made one set at a time: (K,) float64 (NaN for NaN weights). W (K, m, n),
    b (K, n) tied models of ``variant`` (relu-output, relu-hidden, linear) of n <= MAX_FEATURES
    features. What the phase diagram and intro rank their fits by."""
    W, b, imp = check_models(W, b, importance, variant)
    p = check_densities("p", p, (W.shape[0], W.shape[2]))
    sample = state_sample(active_sets(W.shape[2]), 0, points, points)
    return own_expected_losses(conditional_losses(W, b, sample, imp, variant), p)


# A model leaves out stratum k >= 1 when P(k active) < NEGLIGIBLE x P(some feature active): relative,
# because at very low density the whole loss is that small (an absolute 1e-12 cut the pair stratum at
# density 5e-7, n = 2, and tied two fits that differ only there). The k = 0 stratum is always kept.
NEGLIGIBLE = 1e-12


def kept_strata(probs: np.ndarray) -> np.ndarray:
    """bool (K, n + 1): the strata each model evaluates, from size_probabilities (K, n + 1)."""
    keep = probs >= NEGLIGIBLE * (1.0 - probs[:, :1])
    keep[:, 1:] &= probs[:, 1:] > 0
    keep[:, 0] = probs[:, 0] > 0
    return keep


def size_probabilities(p, n: int) -> np.ndarray:
    """P(exactly k of n independent features are active), k = 0..n, for models whose features all
    have density p (P,): the binomial pmf, (P, n + 1) float64, computed in logs (any n)."""
    _check_int("n", n, 1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    p = check_densities("density", p, p.shape)[:, None]
    k = np.arange(n + 1)
    log_comb = np.array([math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) for j in k])
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pmf = log_comb + np.where(k == 0, 0.0, k * np.log(p)) + np.where(k == n, 0.0, (n - k) * np.log1p(-p))
    return np.exp(log_pmf)  # p = 0 or 1: log 0 = -inf where a factor vanishes, exp gives exact 0 and 1


def size_blocks(seed: int, n: int, k: int, rows: int = 8192, single_points: int = 512) -> list[torch.Tensor]:
    """Evaluation rows float64 with exactly k of n features active, for models whose features are
    independent and share one density (given k active, every k-subset is then equally likely), as
    blocks whose row-weighted mean loss is E[loss | k active]:
    - k = 0: one zero row;
    - k = 1: n blocks, feature i's holding single_points midpoints (j + 1/2) / single_points (the sparse
      end's loss is mostly single features, and the grid makes it near exact; one block per feature
      keeps memory at single_points x n, not n^2 x single_points);
    - k >= 2: one block. When the C(n, k) subsets fit in ``rows``, each gets the same rows (balanced: at
      n = 10, 8,192 random subsets left the fits' differences about twice as noisy), e = rows // C(n, k)
      of them, with stratified values (value_design): a pair's on a jittered g x g grid, g = isqrt(e)
      (one uniform point per cell; at n = 20, k = 2 carried 30-40% of basic's loss and most of its
      estimate's spread at densities 0.003-0.03), a larger subset's a Latin hypercube of e points (each
      feature's values one per 1/e interval). Else ``rows`` rows whose subset is the k smallest of n
      uniforms (uniform over subsets), with uniform values. Draws from the Philox evaluation stream
      keyed by (seed, instance k, step, rng.STREAM_EVAL): step 1 the subsets, 2 the values' uniforms
      (eval_values), 4 the Latin hypercube's orders.
    The k >= 2 designs are unbiased (k = 1's midpoint grid has an O(1/single_points^2) bias). Against
    uniform values in balanced subsets, changing the seed moved a fit's estimate 4-8x less at n = 10
    (privileged-basis) and 3-6x less at n = 20 at densities 0.003-0.03 (basic)."""
    _check_int("k", k, 0, n)
    if k == 0:
        return [torch.zeros(1, n, dtype=torch.float64)]
    if k == 1:
        axis = (torch.arange(single_points, dtype=torch.float64) + 0.5) / single_points
        blocks = []
        for i in range(n):
            x = torch.zeros(single_points, n, dtype=torch.float64)
            x[:, i] = axis
            blocks.append(x)
        return blocks
    subsets = math.comb(n, k)
    if subsets > rows:
        idx = rng.uniforms(seed, torch.tensor([k]), 1, rows, n, stream=rng.STREAM_EVAL)[0].argsort(dim=1)[:, :k]
        active = torch.zeros(idx.shape[0], n, dtype=torch.bool)
        active.scatter_(1, idx, True)
        return [eval_values(seed, k, 2, idx.shape[0], n) * active]
    values = value_design(seed, k, subsets, rows // subsets)  # (subsets, e', k)
    combos = torch.tensor(list(itertools.combinations(range(n), k)), dtype=torch.int64)
    x = torch.zeros(subsets, values.shape[1], n, dtype=torch.float64)
    x.scatter_(2, combos[:, None, :].expand(-1, values.shape[1], -1), values)
    return [x.reshape(-1, n)]


def value_design(seed: int, k: int, subsets: int, each: int) -> torch.Tensor:
    """(subsets, e', k) float64 in (0, 1): stratified values of ``each`` rows for each of ``subsets``
    k-subsets (size_blocks' balanced strata). k = 2 with each >= 4: a jittered grid, g = isqrt(each),
    e' = g^2 rows, row (a, b) = ((a, b) + u) / g; else a Latin hypercube, e' = each rows, feature j's
    value in row r (pi_j(r) + u) / each, pi_j a random order of the rows (each = 1: plain uniforms).
    u: eval_values at step 2 (instance k), so every value is strictly inside (0, 1); the orders from
    the evaluation stream at step 4."""
    g = math.isqrt(each)
    grid = k == 2 and g >= 2
    rows = g * g if grid else each
    u = eval_values(seed, k, 2, subsets * rows, k).reshape(subsets, rows, k)
    if grid:
        cells = torch.cartesian_prod(torch.arange(g), torch.arange(g)).double()  # (g^2, 2)
        return (cells[None] + u) / g
    order = rng.uniforms(seed, torch.tensor([k]), 4, subsets * rows, k, stream=rng.STREAM_EVAL)[0]
    order = order.reshape(subsets, rows, k).argsort(dim=1).double()
    return (order + u) / rows


def size_stratum(seed: int, n: int, k: int, rows: int = 8192, single_points: int = 512) -> torch.Tensor:
    """size_blocks as one tensor (rows_k, n): every row with exactly k of n features active."""
    return torch.cat(size_blocks(seed, n, k, rows, single_points))


def size_sample(seed: int, n: int, rows: int, single_points: int = 512, sizes=None) -> list[torch.Tensor]:
    """size_stratum for each count k in ``sizes`` (default 0..n): a fixed evaluation sample
    stratified by the number of active features. Each stratum holds up to rows x n doubles: ask only
    for the counts you need at large n."""
    _check_int("n", n, 1)
    _check_sample_sizes(seed, single_points, rows)
    return [size_stratum(seed, n, int(k), rows, single_points) for k in (range(n + 1) if sizes is None else sizes)]


# Rows per count of active features where n = 20 models are ranked (basic, adversarial): 4x the default.
# Measured on a basic quick run's relu fits (6 evaluation seeds, CPU Intel Xeon): a fit's estimate moved
# by at most 0.57% (density 0.3) against 1.26% at 8,192 rows, for 1.1 s against 0.4 s per 21 models
# (n = 80, m = 20, basic --size large: 15.8 s against 3.3 s).
RANKING_ROWS = 32768


def _equal_density(P: dict, imp: torch.Tensor, model: ModelSpec, density: np.ndarray, seed: int,
                   rows: int) -> np.ndarray:
    """sum over k of P(k active) x E[loss | k active] per model (K,) for validated float64 parameters
    P of ``model`` (engine.reference.params_instance_loss: any variant), each stratum (size_blocks)
    made once and evaluated only for the models that keep it (kept_strata: a model at density 1 needs
    only k = n). Untied (abs-computation) inputs are reference.signed_values of the rows."""
    _check_sample_sizes(seed, 1, rows)
    n, m = model.n_features, model.n_hidden
    probs = size_probabilities(density, n)  # (K, n + 1)
    keep = kept_strata(probs)
    out = np.zeros(len(density))

    def loss(models, x):
        i = torch.as_tensor(models)
        return reference.params_instance_loss({k: v[i] for k, v in P.items()}, x[None].expand(len(models), -1, -1),
                                              imp[i], model)
    for k in np.flatnonzero(keep.any(0)):
        models = np.flatnonzero(keep[:, k])
        blocks = size_blocks(seed, n, int(k), rows)
        if not model.tied:
            blocks = [reference.signed_values(x) for x in blocks]
        weights = np.array([x.shape[0] for x in blocks], dtype=np.float64)
        cond = _block_losses(len(models), max(n, m), blocks, lambda lo, hi, x: loss(models[lo:hi], x))
        out[models] += probs[models, k] * (cond @ (weights / weights.sum()))
    return out


def equal_density_expected_losses(W, b, density, importance, variant: str = "relu-output", seed: int = 0,
                                  rows: int = 8192) -> np.ndarray:
    """Each model's expected loss when its n features are independent with one density each model's
    own: W (K, m, n), b (K, n) tied models of ``variant`` (relu-output, relu-hidden, linear), density
    (K,), importance (K, n) -> (K,) float64, NaN for NaN weights. Exact in how many features are
    active (size_probabilities), the conditional losses on size_blocks(seed, n, k, rows), made one
    stratum at a time; a model leaves out the strata kept_strata drops for it. What
    privileged-basis, basic and adversarial rank their fits by (n = 10: 1,024 active sets)."""
    W, b, imp = check_models(W, b, importance, variant)
    density = check_densities("density", density, (W.shape[0],))
    return _equal_density({"W": W, "b": b}, imp, ModelSpec(W.shape[2], W.shape[1], variant), density, seed, rows)


UNTIED_SHAPES = {"W1": "(K, m, n)", "b1": "(K, m)", "W2": "(K, n, m)", "b2": "(K, n)"}


def untied_equal_density_expected_losses(params: dict, density, importance, seed: int = 0,
                                         rows: int = 8192) -> np.ndarray:
    """equal_density_expected_losses for the untied abs-computation model: params {W1 (K, m, n), b1
    (K, m), W2 (K, n, m), b2 (K, n)}, inputs 2 u - 1 when active (uniform on [-1, 1)), target |x|
    (engine.reference.params_instance_loss). What computation ranks its fits by when it has several."""
    if not isinstance(params, dict) or set(params) != set(UNTIED_SHAPES):
        raise SpecError("params", "a dict of W1, b1, W2, b2", sorted(params) if isinstance(params, dict) else params)
    P = {k: _float64(k, v, f"a {UNTIED_SHAPES[k]} array of numbers") for k, v in params.items()}
    if P["W1"].dim() != 3 or min(P["W1"].shape) < 1:
        raise SpecError("W1", "a (K, m, n) array with K, m, n >= 1", tuple(P["W1"].shape))
    K, m, n = P["W1"].shape
    for k, want in (("b1", (K, m)), ("W2", (K, n, m)), ("b2", (K, n))):
        if tuple(P[k].shape) != want:
            raise SpecError(k, f"shape {want} to match W1", tuple(P[k].shape))
    _, _, imp = check_models(P["W1"], P["b2"], importance)  # importance: (K, n), finite, >= 0
    density = check_densities("density", density, (K,))
    return _equal_density(P, imp, ModelSpec(n, m, "abs-computation"), density, seed, rows)


MAX_STATES = 4096


def set_states(n: int, sets, p) -> tuple[np.ndarray, np.ndarray]:
    """Every state of the data in which features are active, exactly, for the feature sets of
    DataSpec.sets (engine.reference.features_from_uniform's rule): masks (S, n) bool and their
    probabilities (K, S) under densities p (K, n). A correlated set is off (1 - p_a, a its first
    member) or all on (p_a); an anticorrelated set off (1 - p_a) or exactly member j on (p_a / size
    each); a feature in no set off or on (1 - p_i, p_i). S = the product of the units' counts."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != n:
        raise SpecError("p", f"densities of shape (K, {n})", p.shape)
    p = check_densities("p", p, p.shape)
    sets = check_sets(sets, p)  # DataSpec's rule: disjoint, in range, one density per set
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


def set_expected_losses(W, b, p, importance, sets, variant: str = "relu-output", seed: int = 0,
                        points: int = 4096, rows: int = 65536) -> np.ndarray:
    """Each model's expected loss on data with feature sets (DataSpec.sets): W (K, m, n), b (K, n)
    tied models, p (K, n) densities, importance (K, n) -> (K,) float64 (NaN for NaN weights). Exact in
    which features are active (set_states), the values on state_rows, one state at a time. What
    correlated ranks its fits by; rows 65,536: its sets of 10 put 10 or 20 features in a state, and
    at 8,192 random rows two fits 0.4% apart in expected loss swapped places with the sample's seed
    (at 65,536 they did not)."""
    W, b, imp = check_models(W, b, importance, variant)
    _check_sample_sizes(seed, points, rows)
    masks, probs = set_states(W.shape[2], sets, check_densities("p", p, (W.shape[0], W.shape[2])))
    return np.einsum("ks,ks->k", conditional_losses(W, b, state_sample(masks, seed, points, rows), imp, variant), probs)
