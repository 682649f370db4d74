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


def pytest_collection_finish(session):
    """Start in the background the child process of each selected test that its module lists in
    EARLY_CHILDREN (tests/early_children.py: their cold compilations then run on the core the suite
    leaves idle)."""
    if session.config.option.collectonly:
        return
    jobs = {}
    for item in session.items:
        module, name = getattr(item, "module", None), getattr(item, "originalname", None)  # (test functions only)
        make = getattr(module, "EARLY_CHILDREN", {}).get(name)
        job = make() if make else None
        if job is not None:
            jobs[(module.__name__, name)] = job
    if jobs:
        import early_children  # (tests/, on sys.path once its modules are collected)

        early_children.start(jobs)


def pytest_sessionfinish(session):
    """Kill an early child still running (its test not reached: -x stopped the run, ^C, an internal error)."""
    import sys

    if "early_children" in sys.modules:
        sys.modules["early_children"].stop()


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


@pytest.fixture
def cut_inside_a_chunk():
    """cut(spec, out): runner.run of a torch-backend phase-diagram ``spec`` into ``out``, interrupted
    (KeyboardInterrupt) at its 450th reference training step, with a checkpoint after every step: with
    chunks of 4 models that is chunk [4, 8) at step 150, its checkpoint at step 147 (progress comes
    every 3 steps). The patch is undone before it returns."""
    def cut(spec, out):
        from engine import reference
        from engine.experiments import phase_diagram, runner
        real, calls = reference.params_train_step, []

        def dies_midway(*a, **k):
            calls.append(1)
            if len(calls) == 450:
                raise KeyboardInterrupt
            return real(*a, **k)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(reference, "params_train_step", dies_midway)
            with pytest.raises(KeyboardInterrupt):
                runner.run(phase_diagram.EXPERIMENT, spec, out, progress=False, log=lambda m: None,
                           checkpoint_every_s=0)
    return cut
