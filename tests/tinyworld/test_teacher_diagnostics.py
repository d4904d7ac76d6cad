"""benchmarks/teacher_diagnostics.py's --word-gain and --probe measurements: prompt-word swaps,
the loss-gain arithmetic, and a frame-index probe that reads the right tokens."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan
from qvgen_tinyworld.dataset import ClipSpec, ObjectTrack, TinyVideoDataset
from qvgen_tinyworld.teacher import ASSET_PATH, load_teacher
from qvgen_tinyworld.text_encoder import TinyTextEncoder


@pytest.fixture(scope="module")
def td(repo_script) -> ModuleType:
    return repo_script("benchmarks/teacher_diagnostics.py")


def _two_objects() -> ClipSpec:
    return ClipSpec(
        objects=(
            ObjectTrack("red", "circle", "left", 5.0, 20.0, 16.0, 1.0),
            ObjectTrack("blue", "square", "up", 5.0, 8.0, 20.0, 1.0),
        ),
        background="black",
    )


def test_swap_word_changes_one_word_of_the_first_clause(td: ModuleType) -> None:
    spec = _two_objects()
    assert spec.prompt == "a red circle moving left and a blue square moving up"
    assert td.swap_word(spec, "direction").prompt == "a red circle moving right and a blue square moving up"
    colors = {td.swap_word(spec, "color", index=i).objects[0].color for i in range(6)}
    assert colors == {"green", "yellow", "white"}  # every other color, never the second object's
    shapes = {td.swap_word(spec, "shape", index=i).prompt for i in range(4)}
    assert shapes == {
        "a red square moving left and a blue square moving up",
        "a red triangle moving left and a blue square moving up",
    }
    up = ClipSpec(objects=(ObjectTrack("red", "circle", "down", 5.0, 16.0, 8.0, 1.0),), background="gray")
    assert td.swap_word(up, "direction").prompt == "a red circle moving up"
    assert td.swapped_prompts([spec, up], "direction") == [
        "a red circle moving right and a blue square moving up",
        "a red circle moving up",
    ]
    with pytest.raises(ValueError, match="word_class"):
        td.swap_word(spec, "count")


@pytest.mark.skipif(not ASSET_PATH.is_file(), reason="embedded teacher not built yet")
def test_word_gain_zero_for_an_unchanged_prompt_and_positive_for_color(td: ModuleType) -> None:
    model, te, _ = load_teacher()
    data = TinyVideoDataset(seed=77)
    x0, prompts = data.batch(range(3))
    specs = [data.spec(i) for i in range(3)]
    # A "swap" that writes back the word already there: same prompt, so exactly the same loss.
    same = [td.swap_word(s, "color", new=s.objects[0].color).prompt for s in specs]
    assert same == prompts
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    swapped = {"same": same, "color": td.swapped_prompts(specs, "color")}
    (row,) = td.word_gain(model, te, x0, prompts, swapped, [0.9], eps)
    assert row["sigma"] == 0.9 and row["loss_true"] > 0
    assert row["same"]["gain_pct"] == 0.0 and row["same"]["loss"] == row["loss_true"]
    # The embedded teacher reads the color word: a wrong color costs loss.
    assert row["color"]["gain_pct"] > 5.0, row
    assert row["color"]["loss"] > row["loss_true"]


def test_ridge_r2_near_one_for_linear_features_and_near_zero_for_noise(td: ModuleType) -> None:
    g = torch.Generator().manual_seed(0)
    frame = torch.arange(8.0).repeat_interleave(64).repeat(8)  # 8 clips x 512 tokens, frame-major
    mix = torch.randn(1, 32, generator=g)
    linear = frame[:, None] * mix + 0.1 * torch.randn(frame.shape[0], 32, generator=g)
    noise = torch.randn(frame.shape[0], 32, generator=g)
    half = frame.shape[0] // 2
    for x, lo, hi in ((linear, 0.99, 1.0), (noise, -0.03, 0.03)):
        r2 = td.ridge_r2(x[:half], frame[:half], x[half:], frame[half:], 1e-3)
        assert lo <= r2 <= hi, r2


def test_frame_probe_reads_each_token_at_its_frame(td: ModuleType) -> None:
    """Clips whose pixels are their frame index: the patch embedding is linear in the pixels, so
    its tokens encode the frame exactly, and only if tokens are labelled in the model's order."""
    model = build_wan(TINY_WAN_CONFIG, seed=0).eval()
    te = TinyTextEncoder()
    g = torch.Generator().manual_seed(0)
    spatial = torch.randn(4, 3, 1, 32, 32, generator=g)  # a fixed picture per clip, the same in all frames
    ramp = torch.linspace(-1.0, 1.0, 8)[None, None, :, None, None]
    x0 = 0.5 * ramp + 0.1 * spatial
    prompts = ["a red circle moving left"] * 4
    eps = torch.zeros_like(x0)
    hs = td.hidden_states(model, x0, torch.full((4,), 500.0), te.encode(prompts))
    dim = TINY_WAN_CONFIG["num_attention_heads"] * TINY_WAN_CONFIG["attention_head_dim"]
    assert set(hs) == {"patch_embedding", "block0", "block1"}
    assert all(h.shape == (4, 512, dim) for h in hs.values())
    (row,) = td.frame_probe(model, te, x0, prompts, [0.5], eps)
    assert row["sigma"] == 0.5 and set(row["r2"]) == set(hs)
    assert row["r2"]["patch_embedding"] > 0.99, row
    # Pure-noise clips: nothing in the input says which frame a token is in.
    noise = torch.randn(x0.shape, generator=g)
    (row,) = td.frame_probe(model, te, torch.zeros_like(x0), prompts, [1.0], noise)
    assert abs(row["r2"]["patch_embedding"]) < 0.1, row
    with pytest.raises(ValueError, match="at least 2 clips"):
        td.frame_probe(model, te, x0[:1], prompts[:1], [0.5], eps[:1])


def test_ideal_word_gain_sees_what_the_data_makes_each_word_worth(td: ModuleType) -> None:
    g = td.ideal_word_gain(1000)
    assert g["error_bg_color_direction"] > 0
    # Colour changes every object pixel; direction moves where the object is on average (start
    # positions depend on it). (Shape, over 180 groups, needs thousands of clips: not asserted.)
    assert g["color"] > g["direction"] > 1.0
    assert "shape" in g


class _PositionCopy(torch.nn.Module):
    """Latents plus ``k`` times the position channels: a denoiser that uses where a pixel is (k != 0)."""

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, return_dict: bool = False) -> tuple:
        return (x[:, :3] + self.k * x[:, 3:6],)


def test_position_use_loses_when_the_channels_lie_only_if_they_are_used(td: ModuleType, capsys) -> None:
    from qvgen_tinyworld.teacher import position_channels

    g = torch.Generator().manual_seed(0)
    pos = position_channels(8, 32, 32)[None]
    x0 = -0.5 * pos + 0.05 * torch.randn(2, 3, 8, 32, 32, generator=g)  # the clean video is where you are
    eps = torch.randn(x0.shape, generator=g)
    ctx = torch.zeros(2, 4, 8)
    (used,) = td.position_use(_PositionCopy(0.5), ctx, x0, eps, [1.0])
    for lie in ("columns_mirrored", "frames_reversed", "zeroed"):
        assert used[lie]["pct"] > 100.0 and used[lie]["se_pct"] < used[lie]["pct"], (
            lie,
            used,
        )  # each lie costs more than the whole true loss
    assert used["output_change"] > 0.1
    (ignored,) = td.position_use(_PositionCopy(0.0), ctx, x0, eps, [1.0])
    assert all(ignored[k]["pct"] == 0.0 for k in ("columns_mirrored", "frames_reversed", "zeroed"))
    assert ignored["output_change"] == 0.0
    # The embedded asset has no position channels: one line, exit 2, before any work.
    assert td.main(["--skip-adherence", "--position-use", "--clips", "2"]) == 2
    assert "--position-use needs a positions teacher" in capsys.readouterr().err
