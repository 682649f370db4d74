import math

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
