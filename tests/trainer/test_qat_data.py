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


def test_a_conditioned_teacher_gets_its_channels_after_the_noisy_latents():
    from qvgen_tinyworld.teacher import position_channels

    src = TinySource(seed=0, frames=4, height=16, width=16)
    plain = BatchMaker(src, 0, 2, 0.0).batch(0)
    b = BatchMaker(src, 0, 2, 0.0, condition="positions").batch(0)
    assert b.noisy.shape == (2, 6, 4, 16, 16) and b.velocity.shape == (2, 3, 4, 16, 16)
    assert torch.equal(b.noisy[:, :3], plain.noisy)
    assert torch.equal(b.noisy[1, 3:], position_channels(4, 16, 16))
    assert b.to("cpu").condition == "positions"


def test_qat_trains_a_student_of_a_conditioned_teacher(make_config):
    from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan
    from qvgen_tinyworld.text_encoder import TextEncoderConfig, TinyTextEncoder
    from trainer.qat.loop import train

    teacher = build_wan(dict(TINY_WAN_CONFIG, in_channels=6), seed=0)
    te = TinyTextEncoder(TextEncoderConfig(dim=64))
    res = train(make_config(steps=3, save_every=3), teacher, te, condition="positions")
    assert len(res.history) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in res.history)
