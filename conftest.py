"""Test configuration for tests/ and bench/. TRITON_INTERPRET must be set before triton is first imported, so the
Triton kernels run (slowly, exactly) on CPU in CI; GPU-marked tests need a CUDA device."""
import os

if not os.environ.get("SUPBENCH_TEST_ON_GPU"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (set SUPBENCH_TEST_ON_GPU=1 on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Every test run writes pytest-benchmark's JSON (all timings) to .benchmarks/pytest-benchmark.json,
    unless --benchmark-json names another file; runs before pytest-benchmark reads the option."""
    opt = getattr(config.option, "benchmark_json", "absent")
    if opt is None:
        from importlib.metadata import version
        from pathlib import Path

        path = Path(str(config.rootpath)) / ".benchmarks" / "pytest-benchmark.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        # pytest-benchmark < 5.3 takes the option as an open file, 5.3 and later as a path.
        major, minor = (int(v) for v in version("pytest-benchmark").split(".")[:2])
        config.option.benchmark_json = path if (major, minor) >= (5, 3) else open(path, "wb")
