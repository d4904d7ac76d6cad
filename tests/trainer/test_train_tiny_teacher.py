"""The tiny-teacher trainer: resume is exact, the object-weighted loss and layout sampling do what
their flags say, and the dataset's masks mark the object pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from qvgen_tinyworld.dataset import TinyVideoDataset
from trainer.qat.state import latest_state, read_state
from trainer.train_tiny_teacher import flow_matching_batch, main, object_weighted_mse, state_path

ARGS = ["--steps", "4", "--batch-size", "1", "--save-every", "2", "--seed", "5", "--object-weight", "3"]
ARGS += ["--layout-frac", "0.5", "--threads", "1", "--warmup", "1"]


def _run(out: Path, *extra: str) -> int:
    return main(["--out", str(out), *ARGS, *extra])


def test_resume_equals_an_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The preview (20 sampler steps over 6 prompts) is not what this test is about.
    monkeypatch.setattr("trainer.train_tiny_teacher.preview", lambda *a, **k: None)
    straight, halves = tmp_path / "a" / "t.safetensors", tmp_path / "b" / "t.safetensors"
    assert _run(straight) == 0
    assert _run(halves, "--stop-after", "2") == 0
    mid = read_state(latest_state(state_path(halves)))[1]
    assert _run(halves, "--resume") == 0
    a, b = load_file(str(straight)), load_file(str(halves))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The resumed half really trained: its weights moved from the state it started from.
    moved = read_state(latest_state(state_path(halves)))[1]
    assert any(not torch.equal(mid[k], moved[k]) for k in mid if k.startswith("model/model."))


def test_resume_refuses_a_different_schedule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr("trainer.train_tiny_teacher.preview", lambda *a, **k: None)
    out = tmp_path / "t.safetensors"
    assert _run(out, "--stop-after", "2") == 0
    assert main(["--out", str(out), *ARGS, "--lr", "3e-4", "--resume"]) == 2
    assert "--lr" in capsys.readouterr().err
    # The layout range shapes the objective too; a state from before the flag had the default.
    assert main(["--out", str(out), *ARGS, "--layout-range", "0.8,0.95", "--resume"]) == 2
    assert "layout" in capsys.readouterr().err


def test_layout_range_flag_is_checked(capsys) -> None:
    for bad in ("0.9", "0.9,0.8", "0,0.5", "a,b"):
        with pytest.raises(SystemExit):
            main(["--out", "unused.safetensors", "--layout-range", bad])
        assert "--layout-range" in capsys.readouterr().err


def test_object_weighted_mse() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 2, 4, 4, generator=g), torch.randn(2, 3, 2, 4, 4, generator=g)
    mask = (torch.rand(2, 1, 2, 4, 4, generator=g) > 0.7).float()
    plain = torch.nn.functional.mse_loss(pred, target)
    assert torch.equal(object_weighted_mse(pred, target, mask, 0.0), plain)
    assert torch.allclose(object_weighted_mse(pred, target, torch.zeros_like(mask), 4.0), plain)
    # An error only on object pixels costs more than under plain MSE; only on background, less.
    on_obj = target + mask
    on_bg = target + (1 - mask)
    w = 4.0
    assert object_weighted_mse(on_obj, target, mask, w) > torch.nn.functional.mse_loss(on_obj, target)
    assert object_weighted_mse(on_bg, target, mask, w) < torch.nn.functional.mse_loss(on_bg, target)


def test_layout_fraction_draws_sigma_in_the_layout_range() -> None:
    x0 = torch.zeros(4000, 1, 1, 1, 1)
    _, t, _ = flow_matching_batch(x0, torch.Generator().manual_seed(0), "shift3", layout_frac=1.0)
    assert float(t.min()) >= 700 and float(t.max()) <= 980  # t = 1000 sigma on the integer grid
    _, t, _ = flow_matching_batch(x0, torch.Generator().manual_seed(0), "shift3", layout_frac=0.5)
    inside = ((t >= 700) & (t <= 980)).float().mean()
    _, t0, _ = flow_matching_batch(x0, torch.Generator().manual_seed(0), "shift3")
    base = ((t0 >= 700) & (t0 <= 980)).float().mean()
    assert abs(float(inside) - (0.5 + 0.5 * float(base))) < 0.04
    _, t, _ = flow_matching_batch(x0, torch.Generator().manual_seed(0), "shift3", 1000, 1.0, (0.85, 0.95))
    assert float(t.min()) >= 850 and float(t.max()) <= 950 and float(t.max() - t.min()) > 90


def test_masks_mark_the_object_pixels() -> None:
    data = TinyVideoDataset(seed=3)
    videos, prompts, masks = data.batch_with_masks(range(3))
    v2, p2 = data.batch(range(3))
    assert torch.equal(videos, v2) and prompts == p2
    assert masks.shape == (3, 1, *videos.shape[2:])
    for i in range(3):
        frames = data.frames(i)  # [F, H, W, 3]
        spec = data.spec(i)
        # Background is a function of the row only: where no object covers a pixel, the pixel
        # equals the background at that row (taken from a fully uncovered column of frame 0).
        m = masks[i, 0].numpy()
        assert np.all((m > 0).any(axis=(1, 2)))  # every frame shows an object
        free = m[0].sum(axis=0) == 0
        col = int(np.flatnonzero(free)[0])
        bg = frames[0][:, col]  # [H, 3]
        diff = np.abs(frames - bg[None, :, None, :]).max(axis=-1)
        assert np.all(diff[m == 0] < 1e-6)
        assert np.all(diff[m > 0.5] > 0.05), spec.prompt


def test_positions_teacher_trains_from_a_plain_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qvgen_tinyworld.teacher import ASSET_PATH, latent_shape, load_teacher

    monkeypatch.setattr("trainer.train_tiny_teacher.preview", lambda *a, **k: None)
    out = tmp_path / "p.safetensors"
    assert main(["--out", str(out), *ARGS, "--positions", "--init", str(ASSET_PATH), "--stop-after", "2"]) == 0
    model, _, info = load_teacher(out)
    assert info["condition"] == "positions" and model.config.in_channels == 6
    assert latent_shape(info)[0] == 3
    w = model.patch_embedding.weight
    assert float(w[:, 3:].detach().abs().max()) > 0  # the position channels' weights trained away from zero
