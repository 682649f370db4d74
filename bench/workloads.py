"""The benchmark workloads: one full training step of K instances.

Density is spread log-uniformly over the instances, 0.01..1, as in a sweep; importance is the
experiment's (phase: 1 and a spread relative importance for the extra feature; basic: 0.7^i;
uniform: 1). ``smoke`` keeps n and m (so every kernel path runs) but shrinks batch and K for CI.
WORKLOADS are the GPU sizes, CPU_WORKLOADS the same models at the K a 2-core CPU trains.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Workload:
    name: str
    n: int
    m: int
    batch: int
    K: int
    importance: str  # "phase" | "decay0.7" | "uniform"

    @property
    def useful_flop_per_step(self) -> float:
        """10 B n m FLOP per instance-step (forward, backward; shared/design.md) times K."""
        return 10.0 * self.batch * self.n * self.m * self.K

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Feature probability and importance, each (K, n) float32."""
        p = np.repeat(np.logspace(-2, 0, self.K)[:, None], self.n, axis=1)
        if self.importance == "phase":
            imp = np.ones((self.K, self.n))
            imp[:, -1] = np.logspace(-1, 1, self.K)[np.random.default_rng(0).permutation(self.K)]
        elif self.importance == "decay0.7":
            imp = np.tile(0.7 ** np.arange(self.n), (self.K, 1))
        else:
            imp = np.ones((self.K, self.n))
        return p.astype(np.float32), imp.astype(np.float32)

    def smoke(self) -> "Workload":
        return replace(self, batch=min(self.batch, 16), K=min(self.K, 3))


WORKLOADS = {
    "phase": Workload("phase", n=2, m=1, batch=1024, K=100_000, importance="phase"),
    "basic": Workload("basic", n=20, m=5, batch=1024, K=10_000, importance="decay0.7"),
    "uniform": Workload("uniform", n=400, m=30, batch=1024, K=1_000, importance="uniform"),
}

# The same workloads sized for a CPU (issue #8's table: measured on a 2-core AMD EPYC).
CPU_WORKLOADS = {
    "phase": replace(WORKLOADS["phase"], K=10_000),
    "basic": replace(WORKLOADS["basic"], K=1_000),
    "uniform": replace(WORKLOADS["uniform"], K=10),
}

# Instance counts of the scaling sweep (basic workload).
SCALING_K = (100, 300, 1_000, 3_000, 10_000, 30_000, 100_000)
