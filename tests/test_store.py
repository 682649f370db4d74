import json

import pyarrow.parquet as pq
import pytest
import torch

from engine.errors import SpecError
from engine.store import RunDir, SpecMismatch, read_checked, read_tensors, write_parquet, write_tensors


def test_run_dir_keeps_its_spec_and_refuses_another(tmp_path):
    RunDir.open(tmp_path / "r", {"a": 1, "b": [1, 2]}).close()
    assert json.loads((tmp_path / "r/spec.json").read_text()) == {"a": 1, "b": [1, 2]}
    with pytest.raises(SpecMismatch, match="a is 1 there but 2 here"):
        RunDir.open(tmp_path / "r", {"a": 2, "b": [1, 2]})
    run = RunDir.open(tmp_path / "r", {"a": 1, "b": [1, 2]})  # same spec: reopen to resume
    write_tensors(run.chunk_path("m", 3, 5), {"W": torch.ones(2, 3)}, metadata={"spec_hash": "k"})
    assert list(run.chunk_files("m")) == [(3, 5)] and run.chunk_files("other") == {}
    assert torch.equal(read_checked(run.chunk_path("m", 3, 5), "k")["W"], torch.ones(2, 3))
    with pytest.raises(SpecMismatch, match="another spec"):
        read_checked(run.chunk_path("m", 3, 5), "other key")


def test_unwritable_directory_is_a_spec_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SpecError) as e:
        RunDir.open(tmp_path / "f" / "r", {})
    assert e.value.field == "--out"


def test_writes_leave_no_temporary_files(tmp_path):
    write_parquet(tmp_path / "t.parquet", {"x": [1, 2], "y": ["a", "b"]})
    write_tensors(tmp_path / "w.safetensors", {"W": torch.zeros(2)})
    assert pq.read_table(tmp_path / "t.parquet").to_pydict() == {"x": [1, 2], "y": ["a", "b"]}
    assert torch.equal(read_tensors(tmp_path / "w.safetensors")["W"], torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet", "w.safetensors"]


def test_a_run_directory_in_use_by_another_process_is_refused(tmp_path):
    import subprocess
    import sys
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from engine.store import RunDir; "
                               f"r = RunDir.open({str(tmp_path / 'r')!r}, {{}}); print('ok', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(SpecError, match="no other running supbench process"):
            RunDir.open(tmp_path / "r", {})
    finally:
        holder.kill()
        holder.wait()
    RunDir.open(tmp_path / "r", {})  # the lock died with its process
