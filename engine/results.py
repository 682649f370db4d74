"""Reading a finished run directory back into Python: ``load_run("runs/basic-small-quick")``.

A run directory (engine/experiments/runner.py) holds spec.json (what was run), summary.json (the
checks and headline numbers), Parquet tables (a row per trained model, per point, per feature ...),
weights.safetensors and figures/*.png. load_run gathers them, so a notebook or another tool reads
a run in one call instead of knowing each file's name and format.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import torch

from .errors import SpecError
from .store import read_tensors


@dataclass
class Run:
    """A finished run, read from its directory.

    root: the directory. spec: spec.json (the experiment's fields, "experiment", "plan" ...).
    summary: summary.json (the checks, headline numbers, timing, environment).
    tables: every top-level ``*.parquet`` by file stem ("instances", "features", "cells" ...), each
    {column: (rows,) numpy array} (string columns as object arrays).
    weights: weights.safetensors, {name: tensor} (e.g. "W" (K, m, n), "b" (K, n), "kept", or per
    variant "W_relu-output" ...). figures: the PNGs under figures/, sorted.
    """
    root: Path
    spec: dict
    summary: dict
    tables: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    figures: list = field(default_factory=list)

    @property
    def experiment(self) -> str:
        """The experiment's name (spec.json's "experiment")."""
        return self.spec.get("experiment", "")

    @property
    def checks(self) -> list[dict]:
        """summary.json's checks: each {"name", "passed" (True, False or None: not run), ...}."""
        return self.summary.get("checks", [])


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecError("run", f"a run directory whose {path.name} is readable JSON ({type(e).__name__})",
                        str(path)) from None
    if not isinstance(obj, dict):
        raise SpecError("run", f"a run directory whose {path.name} holds a JSON object", str(path))
    return obj


def _read_table(path: Path) -> dict:
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several kinds for a damaged file
        raise SpecError("run", f"a run directory whose {path.name} is a readable Parquet table "
                               f"({type(e).__name__})", str(path)) from None
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def load_run(path) -> Run:
    """Everything a finished run directory holds (see Run). Refuses, in one SpecError line naming the
    path, a directory that is missing, holds no summary.json (not a run, or one still training or cut
    short: re-run its command to finish it) or holds a damaged file."""
    root = Path(path)
    if not root.is_dir():
        raise SpecError("run", "an existing run directory", str(path))
    if not (root / "summary.json").is_file() or not (root / "spec.json").is_file():
        raise SpecError("run", "a finished run directory (with spec.json and summary.json; a run cut short "
                               "finishes when its command is run again)", str(path))
    weights: dict[str, torch.Tensor] = {}
    if (root / "weights.safetensors").is_file():
        try:
            weights = read_tensors(root / "weights.safetensors")
        except Exception as e:  # safetensors raises its own error kinds for a damaged file
            raise SpecError("run", f"a run directory whose weights.safetensors is readable ({type(e).__name__})",
                            str(root / "weights.safetensors")) from None
    return Run(root=root, spec=_read_json(root / "spec.json"), summary=_read_json(root / "summary.json"),
               tables={p.stem: _read_table(p) for p in sorted(root.glob("*.parquet"))}, weights=weights,
               figures=sorted((root / "figures").glob("*.png")) if (root / "figures").is_dir() else [])


__all__ = ["Run", "load_run"]
