"""What machine and software a run used: recorded in every summary.json (runner.environment) and
in benchmark records (bench/suite.py), so a figure can be traced to the CPU and versions behind it."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path


def cpu_model() -> str:
    """The CPU's marketing name (e.g. 'AMD EPYC 9B14') from /proc/cpuinfo; platform's guess elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    """{package: version or None} of what the results depend on: torch, numpy, triton, numba, llvmlite."""
    out = {}
    for name in ("torch", "numpy", "triton", "numba", "llvmlite"):
        try:  # the installed distribution's metadata: nothing is imported (an import could fail or be slow)
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The commit of the supbench checkout this code runs from, with "+dirty" when tracked files
    differ from it; None outside a git checkout, and None when the package merely sits inside some
    other repository (e.g. installed into a virtual environment within another project)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=root,
                              check=True).stdout.strip()
    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return None
        commit = git("rev-parse", "HEAD")
        return (commit + "+dirty" if git("status", "--porcelain", "--untracked-files=no") else commit) or None
    except (OSError, subprocess.SubprocessError):
        return None
