"""The analytic phase diagram of the extra feature (the paper's theory panels; Wattenberg).

Density s (all features), relative importance r of the extra feature, other importances 1.
Expected loss of each candidate solution, and the phase of the extra feature in it:
    ignore the extra feature                         r (s/3 - s^2/4)    not represented
    dedicate the dimension to it (ignore one other)  s/3 - s^2/4        dedicated
    extra feature antipodal with one other           (1 + r) s^2 / 6    superposition
    (3->2 only) the other two antipodal, extra kept  s^2 / 3            dedicated
The phase at (s, r) is that of the solution with the least expected loss.
"""
from __future__ import annotations

import numpy as np

from .errors import SpecError
from .metrics import DEDICATED, NOT_REPRESENTED, SUPERPOSITION

SUPPORTED_FEATURES = (2, 3)


def solution_losses(features: int, density, rel_importance) -> tuple[np.ndarray, np.ndarray]:
    """Expected losses (S, ...) of each candidate solution and the extra feature's phase per solution (S,)."""
    if features not in SUPPORTED_FEATURES:
        raise SpecError("features", "2 or 3", features)
    s, r = np.broadcast_arrays(np.asarray(density, float), np.asarray(rel_importance, float))
    # The candidate losses are those of the closed form only for a density in (0, 1] and r > 0; outside,
    # argmin would still return a phase, silently.
    if not np.all((s > 0) & (s <= 1)):
        raise SpecError("density", "in (0, 1] everywhere", float(s[~((s > 0) & (s <= 1))].flat[0]))
    if not np.all((r > 0) & np.isfinite(r)):
        raise SpecError("rel_importance", "finite and > 0 everywhere", float(r[~((r > 0) & np.isfinite(r))].flat[0]))
    base = s / 3 - s**2 / 4
    losses = [r * base, base, (1 + r) * s**2 / 6]
    phases = [NOT_REPRESENTED, DEDICATED, SUPERPOSITION]
    if features == 3:
        losses.append(s**2 / 3)
        phases.append(DEDICATED)
    return np.stack(losses), np.array(phases)


def phase(features: int, density, rel_importance) -> np.ndarray:
    """Theoretical phase code (see engine.metrics.PHASES) of the extra feature, broadcast over inputs."""
    losses, phases = solution_losses(features, density, rel_importance)
    return phases[np.argmin(losses, axis=0)]
