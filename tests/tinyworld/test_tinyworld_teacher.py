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
