import numpy as np
import pytest
import torch

from engine import ModelSpec, TrainSpec, torch_backend
from engine.checkpoint import Checkpoint


def tup(result):
    """A tied model's train_chunk result ({"W", "b"}, loss, history) as (W, b, loss, history)."""
    params, loss, hist = result
    return params["W"], params["b"], loss, hist


def test_train_chunk_learns_and_is_deterministic():
    model = ModelSpec(5, 2)
    p = np.full((6, 5), 0.1)
    imp = np.tile(0.9 ** np.arange(5), (6, 1))
    train = TrainSpec(steps=300, batch_size=128, lr=1e-2)
    W, b, loss, hist = tup(torch_backend.train_chunk(model, p, imp, train, first_instance=0, history_every=50))
    assert W.shape == (6, 2, 5) and b.shape == (6, 5) and loss.shape == (6,) and hist.shape == (6, 6)
    assert (hist[-1] < hist[0]).all()
    W2, b2, loss2, _ = tup(torch_backend.train_chunk(model, p, imp, train, first_instance=0))
    assert torch.equal(W, W2) and torch.equal(loss, loss2)
    # Two dense-ish 5->2 models learn the two most important features (||W_i|| ~ 1 for i = 0, 1).
    dense = TrainSpec(steps=1500, batch_size=256, lr=1e-2)
    W, _, _, _ = tup(torch_backend.train_chunk(model, np.ones((2, 5)), imp[:2], dense, first_instance=0))
    norms = torch.linalg.vector_norm(W, dim=1)
    assert (norms[:, :2] > 0.8).all() and (norms[:, 3:] < 0.3).all()


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("history_every", [0, 7])
def test_resume_from_a_mid_chunk_checkpoint_gives_the_uninterrupted_result(tmp_path, history_every):
    model = ModelSpec(3, 2)
    p = np.full((4, 3), 0.3)
    imp = np.ones((4, 3))
    train = TrainSpec(steps=250, batch_size=16, lr=1e-2)  # reports (and may checkpoint) every 2 steps
    whole = tup(torch_backend.train_chunk(model, p, imp, train, 5, history_every=history_every))
    ckpt = Checkpoint(tmp_path / "c.safetensors", every_s=0)
    calls = []

    def stop_at_60th_report(k):
        calls.append(k)
        if len(calls) == 60:
            raise Interrupt

    with pytest.raises(Interrupt):
        torch_backend.train_chunk(model, p, imp, train, 5, history_every=history_every, on_step=stop_at_60th_report,
                                  checkpoint=ckpt)
    assert int(ckpt.load()["next_step"]) == 120
    done = []
    resumed = tup(torch_backend.train_chunk(model, p, imp, train, 5, history_every=history_every, on_step=done.append,
                                            checkpoint=Checkpoint(tmp_path / "c.safetensors", every_s=1e9)))
    assert sum(done) == train.steps  # progress counts the restored steps once
    for a, b in zip(whole, resumed):
        assert (a is None and b is None) or torch.equal(a, b)
