"""The paper's experiments, each a spec + jobs + analysis on the one runner (engine/experiments/runner.py).

``EXPERIMENTS`` maps each name (as in ``supbench run <name>``) to its :class:`base.Experiment`.
"""
from . import phase_diagram

EXPERIMENTS = {e.name: e for e in (phase_diagram.EXPERIMENT,)}
