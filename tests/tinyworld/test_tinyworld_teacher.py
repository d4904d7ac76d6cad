"""The teacher file format and the embedded trained teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan
from qvgen_tinyworld.dataset import VideoConfig
from qvgen_tinyworld.teacher import ASSET_PATH, latent_shape, load_teacher, read_teacher_info, save_teacher
from qvgen_tinyworld.text_encoder import TextEncoderConfig, TinyTextEncoder


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = build_wan(TINY_WAN_CONFIG, seed=1)
    te = TinyTextEncoder(TextEncoderConfig(dim=64, max_len=12))
    path = tmp_path / "t.safetensors"
    save_teacher(path, model, te, VideoConfig(frames=6), training={"steps": 3})
    loaded, te2, info = load_teacher(path)
    assert info["training"] == {"steps": 3} and info["video"]["frames"] == 6
    assert latent_shape(info) == (3, 6, 32, 32)
    assert te2.config == te.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert (tmp_path / "t.json").is_file()


def test_foreign_or_missing_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    p = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(1)}, str(p), metadata={"format": "something-else"})
    with pytest.raises(ValueError, match="not a tiny-teacher file"):
        read_teacher_info(p)
    with pytest.raises(FileNotFoundError):
        load_teacher(tmp_path / "missing.safetensors")


@pytest.mark.skipif(not ASSET_PATH.is_file(), reason="embedded teacher not built yet")
def test_embedded_teacher_loads_and_denoises() -> None:
    model, te, info = load_teacher()
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n <= 10_000_000
    assert ASSET_PATH.stat().st_size <= 20 * 2**20
    assert info["training"]["steps"] > 0 and info["sampling"]["shift"] == 3.0
    c, f, h, w = latent_shape(info)
    x = torch.randn(1, c, f, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        v = model(x, torch.tensor([500.0]), te.encode(["a red circle moving left"]), return_dict=False)[0]
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_position_channels() -> None:
    from qvgen_tinyworld.teacher import position_channels, with_condition

    p = position_channels(8, 4, 6)
    assert p.shape == (3, 8, 4, 6)
    assert torch.equal(p[0, :, 0, 0], torch.linspace(-1, 1, 8))  # frame index, first to last
    assert torch.all(p[1, :, :, 1:] > p[1, :, :, :-1])  # column grows left to right
    assert torch.all(p[2, :, 1:, :] > p[2, :, :-1, :])  # row grows top to bottom
    assert float(p[1].min()) > -1 and float(p[1].max()) < 1  # pixel centres
    x = torch.randn(2, 3, 8, 4, 6)
    assert with_condition(x, None) is x
    y = with_condition(x, "positions")
    assert y.shape == (2, 6, 8, 4, 6) and torch.equal(y[:, :3], x) and torch.equal(y[1, 3:], p)


def test_conditioned_teacher_round_trip_and_checks(tmp_path: Path) -> None:
    from qvgen_tinyworld.teacher import ConditionedDenoiser, teacher_denoiser

    te = TinyTextEncoder(TextEncoderConfig(dim=64, max_len=12))
    model = build_wan(dict(TINY_WAN_CONFIG, in_channels=6), seed=1)
    path = tmp_path / "c.safetensors"
    save_teacher(path, model, te, VideoConfig(), condition="positions")
    loaded, _, info = load_teacher(path)
    assert info["condition"] == "positions" and latent_shape(info) == (3, 8, 32, 32)
    den = teacher_denoiser(loaded, info)
    assert isinstance(den, ConditionedDenoiser)
    x = torch.randn(1, *latent_shape(info), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        v = den(x, torch.tensor([500.0]), te.encode(["a red circle moving left"]), return_dict=False)[0]
    assert v.shape == x.shape
    plain = build_wan(TINY_WAN_CONFIG, seed=1)
    assert teacher_denoiser(plain, {"diffusers_config": {}}) is plain
    with pytest.raises(ValueError, match="in_channels = out_channels \\+ 3"):
        save_teacher(tmp_path / "bad.safetensors", plain, te, VideoConfig(), condition="positions")
    with pytest.raises(ValueError, match="unknown teacher condition"):
        save_teacher(tmp_path / "bad.safetensors", model, te, VideoConfig(), condition="depth")
    assert not (tmp_path / "bad.safetensors").exists()


@pytest.mark.skipif(not ASSET_PATH.is_file(), reason="embedded teacher not built yet")
def test_widened_init_computes_what_the_plain_teacher_did() -> None:
    # --positions --init PLAIN: the position channels start with zero weights, so training starts
    # from exactly the plain teacher's function.
    from qvgen_tinyworld.teacher import TEACHER_CONFIG, ConditionedDenoiser
    from trainer.train_tiny_teacher import widened_state

    plain, te, info = load_teacher()
    wide = build_wan(dict(TEACHER_CONFIG, in_channels=6), seed=0)
    wide.load_state_dict(widened_state(plain.state_dict(), wide.state_dict()))
    x = torch.randn(2, *latent_shape(info), generator=torch.Generator().manual_seed(0))
    t, c = torch.tensor([900.0, 300.0]), te.encode(["a red circle moving left", ""])
    with torch.no_grad():
        a = plain(x, t, c, return_dict=False)[0]
        b = ConditionedDenoiser(wide, "positions")(x, t, c, return_dict=False)[0]
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="cannot widen"):
        widened_state(wide.state_dict(), plain.state_dict())
