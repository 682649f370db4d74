"""Model variants beyond the tied relu-output/linear model (#10): which backends train them, and
that a backend that cannot says so up front (auto then picks one that can, in one printed line)."""
import pytest
import torch

from engine import backends
from engine.errors import UnsupportedShape
from engine.spec import ModelSpec, TrainSpec


def test_triton_refuses_relu_hidden_up_front():
    pytest.importorskip("triton")
    with pytest.raises(UnsupportedShape, match="relu-hidden.*choose cpu or torch"):
        backends.check_supported("triton", ModelSpec(10, 5, "relu-hidden"), TrainSpec())
    backends.check_supported("triton", ModelSpec(10, 5, "relu-output"), TrainSpec())  # still fine


def test_auto_on_a_gpu_machine_picks_a_backend_that_trains_relu_hidden_and_says_so(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backends, "triton_usable", lambda: True)
    monkeypatch.setattr(backends, "_SELF_TESTS", {})
    logs = []
    got = backends.resolve("auto", ModelSpec(10, 5, "relu-hidden"), TrainSpec(), log=logs.append)
    assert got == ("cpu" if backends.cpu_usable() else "torch")
    assert len(logs) == 1 and "relu-hidden" in logs[0] and got in logs[0]


def test_relu_hidden_trains_on_torch_and_cpu_to_the_same_kind_of_solution():
    """Different batches (torch generator vs Philox): both learn a dense 3->3 relu-hidden model
    that keeps every feature (loss well below the all-zero model's)."""
    pytest.importorskip("numba")
    import numpy as np
    from engine import DataSpec, train
    model = ModelSpec(3, 3, "relu-hidden")
    data = DataSpec(np.full((4, 3), 1.0), np.ones(3))
    zero_loss = 1 / 3  # E[x^2] for x ~ U[0, 1)
    for backend in ("torch", "cpu"):
        res = train(model, data, TrainSpec(steps=1500, batch_size=256, lr=1e-2), backend=backend, progress=False)
        assert float(res.loss.max()) < 0.1 * zero_loss, (backend, res.loss)
