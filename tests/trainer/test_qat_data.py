"""Batches are a pure function of (seed, global sample index), whatever the number of ranks."""

from __future__ import annotations

import torch

from trainer.qat.data import BatchMaker, TinySource


def test_rank_slices_compose_the_global_batch():
    src = TinySource(seed=3, frames=4, height=16, width=16)
    maker = BatchMaker(src, seed=3, global_batch=4, caption_dropout=0.5)
    full = maker.batch(7)
    parts = [maker.batch(7, rank=r, world=2) for r in range(2)]
    for field in ("x0", "cond", "eps", "sigma"):
        torch.testing.assert_close(torch.cat([getattr(p, field) for p in parts]), getattr(full, field), atol=0, rtol=0)
    again = BatchMaker(TinySource(seed=3, frames=4, height=16, width=16), 3, 4, 0.5).batch(7)
    assert torch.equal(again.eps, full.eps) and torch.equal(again.cond, full.cond)
    assert not torch.equal(maker.batch(8).eps, full.eps)


def test_noising_and_timesteps():
    maker = BatchMaker(TinySource(seed=0, frames=4, height=16, width=16), 0, 64, 0.05)
    b = maker.batch(0)
    assert torch.all((b.sigma > 0) & (b.sigma <= 1))
    k = b.sigma * 1000
    torch.testing.assert_close(k, k.round())  # 1000-point grid
    torch.testing.assert_close(b.timestep, b.sigma * 1000)
    s = b.sigma.view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(b.noisy, (1 - s) * b.x0 + s * b.eps)
    null = maker.source.null()
    dropped = sum(bool(torch.equal(c, null)) for c in b.cond)
    assert 0 <= dropped <= 12  # 5% of 64 on average


def test_tiny_source_draws_from_the_teachers_world():
    import dataclasses

    from qvgen_tinyworld.dataset import VideoConfig

    world = dataclasses.replace(VideoConfig(), size_range=(6.0, 7.0), gradient=0.2)
    src = TinySource(0, world=world)
    assert src.dataset.config == world
    assert not torch.equal(src.clips([0])[0], TinySource(0).clips([0])[0])
    # a smaller test geometry shrinks the teacher's world, not the defaults
    small = TinySource(0, frames=4, height=16, width=16, world=world).dataset.config
    assert small.size_range == (3.0, 3.5) and small.gradient == 0.2
