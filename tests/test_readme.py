"""The README's Python API example runs as written (with fewer steps), so the README stays true."""
import re
from pathlib import Path


def test_python_api_example_runs():
    src = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.search(r"## Python API\n\n```python\n(.*?)```", src, re.S).group(1)
    assert "steps=5000" in code
    scope = {}
    exec(compile(code.replace("steps=5000", "steps=200"), "README.md", "exec"), scope)
    res = scope["res"]
    assert res.W.shape == (8, 5, 20) and res.history.shape == (2, 8) and res.loss.shape == (8,)


def test_readme_shows_the_two_commands_and_ci_runs_the_test_one():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    main_cmd = 'pip install torch==2.13.0 -e . && supbench run phase-diagram'
    test_cmd = 'pip install torch==2.13.0 -e ".[dev]" && pytest'
    assert main_cmd in readme and test_cmd in readme and test_cmd in ci


def test_readme_documents_every_experiment_with_a_figure():
    from engine.experiments import EXPERIMENTS
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    for name in EXPERIMENTS:
        assert f"`supbench run {name}" in readme, name
    for fig in re.findall(r"\]\((docs/figures/[^)]+\.png)\)", readme):
        assert (root / fig).is_file(), fig
    assert len(re.findall(r"\]\((docs/figures/[^)]+\.png)\)", readme)) >= len(EXPERIMENTS)


def test_load_run_example_runs_on_a_finished_run(tmp_path):
    """The README's load_run example, on a tiny basic run in place of runs/basic-small-quick."""
    from engine.experiments import basic, runner
    src = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.search(r"```python\n(from engine import load_run\n.*?)```", src, re.S).group(1)
    assert '"runs/basic-small-quick"' in code
    runner.run(basic.EXPERIMENT, basic.BasicSpec(fits=1, steps=10, batch_size=8, backend="torch"), tmp_path / "run",
               progress=False, log=lambda m: None)
    scope = {}
    exec(compile(code.replace('"runs/basic-small-quick"', repr(str(tmp_path / "run"))), "README.md", "exec"), scope)
    assert scope["run"].experiment == "basic" and len(scope["run"].checks) == 3
