import math

import pytest
import torch

from engine import rng


def test_philox_known_answer():
    # Random123's published known-answer vectors for philox4x32-10.
    out = rng.philox4x32(torch.tensor(0), 0, 0, 0, seed=0)
    assert [int(o) for o in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    m = 0xFFFFFFFF
    out = rng.philox4x32(torch.tensor(m), m, m, m, seed=m | (m << 32))
    assert [int(o) for o in out] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    out = rng.philox4x32(torch.tensor(0x243F6A88), 0x85A308D3, 0x13198A2E, 0x03707344,
                         seed=0xA4093822 | (0x299F31D0 << 32))
    assert [int(o) for o in out] == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_mulhilo_matches_python_integers():
    g = torch.Generator().manual_seed(0)
    c = torch.randint(0, 2**32, (1000,), generator=g, dtype=torch.int64)
    hi, lo = rng._mulhilo(rng._ROUND_A, c)
    for ci, h, l in zip(c.tolist()[:200], hi.tolist(), lo.tolist()):
        p = ci * rng._ROUND_A
        assert (h, l) == (p >> 32, p & 0xFFFFFFFF)


def test_uniforms_statistics_and_independence():
    u = rng.uniforms(seed=7, instances=torch.arange(4), step=3, rows=4096, n=5)
    assert u.shape == (4, 4096, 5) and u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / u.numel())
    # Different instances and steps give different streams; the same key gives the same stream.
    assert not torch.equal(u[0], u[1])
    assert not torch.equal(u, rng.uniforms(7, torch.arange(4), 4, 4096, 5))
    assert torch.equal(u, rng.uniforms(7, torch.arange(4), 3, 4096, 5))
    # An instance's stream does not depend on which other instances are drawn with it.
    assert torch.equal(u[2:3], rng.uniforms(7, torch.tensor([2]), 3, 4096, 5))


def test_normals_are_standard():
    z = rng.normals(3, torch.arange(50), 40, 50)
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02


@pytest.mark.parametrize("K, rows, n", [(1, 37, 1), (3, 101, 2), (5, 33, 3), (2, 40, 9), (4, 7, 100)])
def test_uniforms_drawn_in_pieces_are_the_same_numbers(monkeypatch, K, rows, n):
    """uniforms draws PIECE Philox calls at a time (cache-sized temporaries): pieces of a few counters, of
    one, or one piece for everything give the same tensor, in both counter layouts (n <= 2, n >= 3)."""
    whole = rng.uniforms(9, torch.arange(10, 10 + K), 4, rows, n, stream=rng.STREAM_EVAL)
    assert whole.shape == (K, rows, n)
    for piece in (1, 5, 3 * K + 1):
        monkeypatch.setattr(rng, "PIECE", piece)
        assert torch.equal(rng.uniforms(9, torch.arange(10, 10 + K), 4, rows, n, stream=rng.STREAM_EVAL), whole)
    # the first and last counters against philox4x32 itself (n >= 3: a call per row, word f % 4 for feature f)
    if n >= 3:
        n4 = -(-n // 4)
        first = rng.philox4x32(torch.tensor(0), 4, 10, rng.STREAM_EVAL, 9)
        last = rng.philox4x32(torch.tensor((rows - 1) * n4 + (n - 1) // 4), 4, 10, rng.STREAM_EVAL, 9)
        assert whole[0, 0, 0] == rng.uint_to_uniform(first[0])
        assert whole[0, rows - 1, n - 1] == rng.uint_to_uniform(last[(n - 1) % 4])
