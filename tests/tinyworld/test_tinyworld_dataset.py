"""The procedural dataset and its grammar: determinism, validation, and prompts that are true."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qvgen_tinyworld.dataset import (
    ClipSpec,
    ObjectTrack,
    TinyVideoDataset,
    VideoConfig,
    frames_to_tensor,
    render_clip,
    tensor_to_frames,
)
from qvgen_tinyworld.grammar import COLORS, DIRECTIONS, ObjectPrompt, parse_prompt, render_prompt, tokenize


def test_prompt_round_trip_and_errors() -> None:
    objs = [ObjectPrompt("red", "circle", "left"), ObjectPrompt("blue", "square", "up")]
    text = render_prompt(objs)
    assert text == "a red circle moving left and a blue square moving up"
    assert parse_prompt(text) == objs
    assert parse_prompt("A Red circle, moving LEFT.") == objs[:1]
    assert parse_prompt("") == []
    with pytest.raises(ValueError, match="vocabulary"):
        tokenize("a purple circle moving left")
    with pytest.raises(ValueError, match="clause"):
        parse_prompt("a red circle left")
    with pytest.raises(ValueError, match="unknown color"):
        ObjectPrompt("purple", "circle", "left")


def test_same_seed_and_index_give_the_same_clip() -> None:
    a, b = TinyVideoDataset(seed=3), TinyVideoDataset(seed=3)
    for i in (0, 5, 1234):
        va, pa = a[i]
        vb, pb = b[i]
        assert pa == pb
        assert torch.equal(va, vb)
    # Batch order does not matter: clip 7 is clip 7.
    vids, prompts = a.batch([9, 7])
    assert torch.equal(vids[1], a[7][0]) and prompts[1] == a[7][1]
    assert a[0][1] != a[1][1] or not torch.equal(a[0][0], a[1][0])
    assert not torch.equal(TinyVideoDataset(seed=4)[0][0], a[0][0])


def test_clip_layout_and_range() -> None:
    video, prompt = TinyVideoDataset(seed=0)[0]
    assert video.shape == (3, 8, 32, 32) and video.dtype == torch.float32
    assert video.min() >= -1.0 and video.max() <= 1.0
    frames = tensor_to_frames(video)
    assert frames.shape == (8, 32, 32, 3)
    np.testing.assert_allclose(frames_to_tensor(frames), video, atol=1e-6)
    assert parse_prompt(prompt)


def test_prompt_matches_rendered_content() -> None:
    """Each named object is drawn in its color at its center and moves the named way."""
    ds = TinyVideoDataset(seed=11)
    cfg = ds.config
    counts = set()
    for i in range(40):
        spec = ds.spec(i)
        frames = render_clip(spec, cfg)
        objs = parse_prompt(spec.prompt)
        assert [(o.color, o.shape, o.direction) for o in objs] == [
            (t.color, t.shape, t.direction) for t in spec.objects
        ]
        assert len({o.color for o in objs}) == len(objs)  # colors are distinct
        counts.add(len(objs))
        for t in spec.objects:
            for f in range(cfg.frames):
                cx, cy = t.center(f)
                # Fully inside the frame (1 px margin) in every frame.
                assert t.size < cx < cfg.width - t.size and t.size < cy < cfg.height - t.size
                # The pixel under the shape's center of mass has the object's color.
                py = int(cy + (t.size / 3 if t.shape == "triangle" else 0))
                np.testing.assert_allclose(frames[f, py, int(cx)], COLORS[t.color], atol=1e-5)
            dx, dy = np.subtract(t.center(cfg.frames - 1), t.center(0))
            ux, uy = DIRECTIONS[t.direction]
            assert dx * ux + dy * uy >= cfg.speed_range[0] * (cfg.frames - 1) - 1e-6
    assert counts == {1, 2}


def test_render_custom_spec_and_config_validation() -> None:
    cfg = VideoConfig(max_objects=1)
    spec = ClipSpec((ObjectTrack("green", "square", "right", 5.0, 8.0, 16.0, 2.0),), "black")
    frames = render_clip(spec, cfg)
    assert spec.prompt == "a green square moving right"
    np.testing.assert_allclose(frames[0, 16, 8], COLORS["green"], atol=1e-6)
    np.testing.assert_allclose(frames[7, 16, 22], COLORS["green"], atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        VideoConfig(speed_range=(1.0, 5.0))
    with pytest.raises(ValueError, match="frames"):
        VideoConfig(frames=1)
    with pytest.raises(ValueError, match="seed"):
        TinyVideoDataset(seed=-1)
    assert VideoConfig.from_dict(cfg.to_dict()) == cfg
