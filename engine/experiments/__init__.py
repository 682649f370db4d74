"""The paper's experiments, each a spec + jobs + analysis on the one runner (engine/experiments/runner.py).

``EXPERIMENTS`` maps each name (as in ``supbench run <name>``) to its :class:`base.Experiment`, in the
paper's order.
"""
from . import (adversarial, basic, dimensionality, intro, learning_dynamics, non_uniform, phase_diagram,
               privileged_basis, correlated, double_descent, computation)

EXPERIMENTS = {e.name: e for e in (intro.EXPERIMENT, basic.EXPERIMENT, phase_diagram.EXPERIMENT,
                                         non_uniform.EXPERIMENT, dimensionality.EXPERIMENT,
                                         learning_dynamics.EXPERIMENT, adversarial.EXPERIMENT,
                                         privileged_basis.EXPERIMENT, correlated.EXPERIMENT,
                                         double_descent.EXPERIMENT, computation.EXPERIMENT)}
