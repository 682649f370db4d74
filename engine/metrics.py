"""Geometry of trained toy models (Elhage et al. 2022). All functions are batched over instances.

W has shape (K, m, n): column i of W[k] is feature i's embedding W_i. hat W_i = W_i / ||W_i||,
with ||W_i|| guarded against 0 (an unlearned feature has hat W_i = 0, superposition 0, D_i = 0).
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import SpecError
from .spec import _check_float

_EPS = 1e-12
# "diverged": a model whose weights are NaN/inf (training blew up) is never given a real phase.
PHASES = ("not represented", "dedicated", "superposition", "diverged")
NOT_REPRESENTED, DEDICATED, SUPERPOSITION, DIVERGED = 0, 1, 2, 3
NORM_THRESHOLD = 0.5
SUPERPOSITION_THRESHOLD = 0.5


def _as_tensor(W) -> torch.Tensor:
    """W as a float64 tensor of shape (K, m, n); SpecError("W") for anything else (a 2-D W would be
    read along the wrong axis, silently)."""
    try:
        W = torch.as_tensor(W)
    except (TypeError, ValueError, RuntimeError):
        raise SpecError("W", "a (K, m, n) array of numbers", type(W).__name__) from None
    if W.ndim != 3 or W.is_complex():
        raise SpecError("W", "a (K, m, n) array of real numbers (K instances, m hidden, n features)", tuple(W.shape))
    return W.double() if W.dtype != torch.float64 else W


def feature_norms(W) -> torch.Tensor:
    """||W_i||, shape (K, n): about 1 when feature i is represented, about 0 when not."""
    return torch.linalg.vector_norm(_as_tensor(W), dim=1)


def feature_cosines(W) -> torch.Tensor:
    """cos(W_i, W_j) as (K, n, n) [i, j] (a zero column counts as direction 0: cosine 0)."""
    W = _as_tensor(W)
    Wh = W / torch.linalg.vector_norm(W, dim=1).clamp_min(_EPS)[:, None, :]
    return torch.bmm(Wh.transpose(1, 2), Wh)


def _overlaps(W):
    """(hat W_i . W_j)^2 as (K, n, n) [i, j], and the norms (K, n)."""
    W = _as_tensor(W)
    norms = torch.linalg.vector_norm(W, dim=1)
    Wh = W / norms.clamp_min(_EPS)[:, None, :]
    return torch.bmm(Wh.transpose(1, 2), W) ** 2, norms


def superposition(W) -> torch.Tensor:
    """s_i = sum over j != i of (hat W_i . W_j)^2, shape (K, n).

    This is the paper's text definition (not its square root, which the notebook's colour bars use).
    """
    ov, _ = _overlaps(W)
    return ov.sum(dim=2) - torch.diagonal(ov, dim1=1, dim2=2)


def dimensionality(W) -> torch.Tensor:
    """D_i = ||W_i||^2 / sum_j (hat W_i . W_j)^2, shape (K, n), in [0, 1].

    1 dedicated, 1/2 antipodal pair, 2/3 triangle, 3/4 tetrahedron, 2/5 pentagon; 0 unlearned.
    """
    ov, norms = _overlaps(W)
    return norms**2 / ov.sum(dim=2).clamp_min(_EPS)


def dimensions_per_feature(W) -> torch.Tensor:
    """D* = m / ||W||_F^2, shape (K,). Its inverse is features per dimension (inf for W = 0: no feature
    is stored)."""
    W = _as_tensor(W)
    return W.shape[1] / (W**2).sum(dim=(1, 2))


# A regular pentagon's neighbours are 72 degrees apart: within this many, a 2-D model of five features
# counts as one (intro's and non-uniform's pentagon). Intro's quick run is within 2 degrees; non-uniform's
# fits with every D_i within 0.05 of 2/5 spread continuously up to 14.3 (quick run, 2e79435); a fan 36
# degrees apart, which has every D_i = 2/5 too, is 36 or more off.
PENTAGON_ANGLE_TOLERANCE = 20.0


def neighbour_angles(w) -> np.ndarray:
    """Degrees between neighbouring represented features of a 2-D model w (2, n), going round the circle:
    (k,) for k features of norm >= NORM_THRESHOLD (empty for none, [360] for one). A regular pentagon
    gives 72 five times; D_i alone cannot tell it from other tight frames (a fan 36 degrees apart)."""
    w = np.asarray(w, dtype=np.float64)
    keep = np.linalg.norm(w, axis=0) >= NORM_THRESHOLD
    a = np.sort(np.degrees(np.arctan2(w[1, keep], w[0, keep])))
    return np.diff(np.r_[a, a[:1] + 360.0])


def classify(norm, sup) -> np.ndarray:
    """Phase of a feature from its norm and superposition (the documented thresholds):
    not represented if ||W_i|| < 0.5; else superposition if s_i >= 0.5; else dedicated; and
    DIVERGED where either is NaN or inf (a NaN compares False to every threshold, so without this
    a diverged model would be labelled dedicated). Returns int codes indexing :data:`PHASES`."""
    norm = np.asarray(norm, dtype=np.float64)
    sup = np.asarray(sup, dtype=np.float64)
    if norm.shape != sup.shape:
        raise SpecError("sup", f"of the shape of norm {norm.shape}", sup.shape)
    phase = np.where(norm < NORM_THRESHOLD, NOT_REPRESENTED,
                     np.where(sup >= SUPERPOSITION_THRESHOLD, SUPERPOSITION, DEDICATED))
    return np.where(np.isfinite(norm) & np.isfinite(sup), phase, DIVERGED).astype(np.int64)


# The paper's "sticky" values of D_i: dedicated, tetrahedron, triangle, antipodal pair, pentagon,
# square antiprism. (value, label), largest first.
FRACTIONS = ((1.0, "1"), (3 / 4, "3/4"), (2 / 3, "2/3"), (1 / 2, "1/2"), (2 / 5, "2/5"), (3 / 8, "3/8"))
FRACTION_TOLERANCE = 0.02


def nearest_fraction(D, tol: float = FRACTION_TOLERANCE) -> np.ndarray:
    """Index into :data:`FRACTIONS` of the fraction line each D_i lies within ``tol`` of, else -1.

    D: any shape of dimensionalities; returns int64 of the same shape. The lines 2/5 and 3/8 are
    0.025 apart, so with tol <= 0.0125 a value is near at most one line; with a wider tol the
    nearest line wins.
    """
    _check_float("tol", tol, 0.0, 0.5)
    D = np.asarray(D, dtype=np.float64)
    values = np.array([v for v, _ in FRACTIONS])
    dist = np.abs(D[..., None] - values)
    idx = np.argmin(dist, axis=-1)
    return np.where(np.take_along_axis(dist, idx[..., None], -1)[..., 0] <= tol, idx, -1).astype(np.int64)


def fraction_counts(D, tol: float = FRACTION_TOLERANCE) -> dict:
    """How many of the D_i (any shape) lie within ``tol`` of each fraction line: {label: count}."""
    near = nearest_fraction(D, tol)
    return {label: int((near == k).sum()) for k, (_, label) in enumerate(FRACTIONS)}
