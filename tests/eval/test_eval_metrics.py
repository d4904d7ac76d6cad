"""Every metric on synthetic clips whose right answer is known, including clips built to fail it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qvgen_eval import metrics as M
from qvgen_tinyworld.dataset import TinyVideoDataset, shape_coverage
from qvgen_tinyworld.grammar import BACKGROUNDS, COLORS

F, H, W = 8, 32, 32


def clip(
    objects: list[tuple[str, str, float, list[tuple[float, float]]]],
    background: str | list[tuple[float, float, float]] = "gray",
) -> np.ndarray:
    """Frames [F, H, W, 3]: each object is (color, shape, size, per-frame centers); the
    background is a palette name or one RGB color per frame (for flicker)."""
    bgs = [BACKGROUNDS[background]] * F if isinstance(background, str) else background
    out = np.zeros((F, H, W, 3), dtype=np.float32)
    for f in range(F):
        out[f] = bgs[f]
        for color, shape, size, centers in objects:
            a = shape_coverage(shape, *centers[f], size, H, W)[..., None]
            out[f] = out[f] * (1 - a) + np.asarray(COLORS[color]) * a
    return out


def line(x0: float, y0: float, vx: float, vy: float) -> list[tuple[float, float]]:
    return [(x0 + f * vx, y0 + f * vy) for f in range(F)]


GOOD = clip([("red", "circle", 5.0, line(24.0, 16.0, -2.0, 0.0))])
PROMPT = "a red circle moving left"


def test_correct_clip_scores_high() -> None:
    r = M.evaluate_video(GOOD, PROMPT)
    assert r["prompt_adherence"] == 100.0
    assert r["color"] == r["shape"] == r["direction"] == r["count"] == 100.0
    assert r["subject_consistency"] > 95
    assert r["motion_smoothness"] > 95
    assert r["dynamic_degree"] == 100.0
    assert r["background_consistency"] > 99
    assert r["speed"] == pytest.approx(2.0, abs=0.1)
    assert all(0.0 <= r[k] <= 100.0 for k in M.SCORE_KEYS)
    # uint8 input is accepted and gives (nearly) the same answer.
    r8 = M.evaluate_video((GOOD * 255 + 0.5).astype(np.uint8), PROMPT)
    assert r8["prompt_adherence"] == 100.0


def test_ground_truth_dataset_clips_score_high() -> None:
    ds = TinyVideoDataset(seed=5)
    rows = [M.evaluate_video(ds.frames(i), ds.spec(i).prompt) for i in range(24)]
    agg = M.aggregate(rows)
    assert agg["prompt_adherence"] >= 99
    assert agg["subject_consistency"] > 95 and agg["motion_smoothness"] > 95
    assert agg["dynamic_degree"] == 100 and agg["background_consistency"] > 99


def test_wrong_color_shape_direction_each_fail_their_part() -> None:
    r = M.evaluate_video(GOOD, "a blue circle moving left")
    # No blue object: color, shape and direction all fail; only the object count (one) is right.
    assert r["color"] == r["shape"] == r["direction"] == 0 and r["count"] == 100 and r["prompt_adherence"] == 25
    r = M.evaluate_video(GOOD, "a red square moving left")
    assert r["shape"] == 0 and r["color"] == r["direction"] == 100
    r = M.evaluate_video(GOOD, "a red triangle moving left")
    assert r["shape"] == 0
    r = M.evaluate_video(GOOD, "a red circle moving right")
    assert r["direction"] == 0 and r["color"] == r["shape"] == 100
    for shape in ("square", "triangle"):
        c = clip([("yellow", shape, 5.5, line(10.0, 10.0, 0.0, 2.0))], "navy")
        assert M.evaluate_video(c, f"a yellow {shape} moving down")["prompt_adherence"] == 100
        assert M.evaluate_video(c, "a yellow circle moving down")["shape"] == 0


def test_static_object_is_smooth_but_not_dynamic() -> None:
    c = clip([("green", "square", 5.0, line(16.0, 16.0, 0.0, 0.0))])
    r = M.evaluate_video(c, "a green square moving up")
    assert r["dynamic_degree"] == 0 and r["direction"] == 0 and r["speed"] < 0.1
    assert r["motion_smoothness"] > 99 and r["subject_consistency"] > 99
    assert r["color"] == r["shape"] == 100


def test_jittering_motion_is_not_smooth() -> None:
    rng = np.random.default_rng(0)
    centers = [(x + rng.choice([-2.5, 2.5]), y + rng.choice([-2.5, 2.5])) for x, y in line(24.0, 16.0, -2.0, 0.0)]
    r = M.evaluate_video(clip([("red", "circle", 5.0, centers)]), PROMPT)
    assert r["motion_smoothness"] < 40
    assert M.evaluate_video(GOOD, PROMPT)["motion_smoothness"] - r["motion_smoothness"] > 50


def test_flickering_background_is_not_consistent() -> None:
    bgs = [BACKGROUNDS["gray"] if f % 2 == 0 else BACKGROUNDS["black"] for f in range(F)]
    r = M.evaluate_video(clip([("red", "circle", 5.0, line(24.0, 16.0, -2.0, 0.0))], bgs), PROMPT)
    assert r["background_consistency"] < 30
    assert r["prompt_adherence"] == 100  # the object itself is fine
    noisy = GOOD + np.random.default_rng(1).normal(0, 0.05, GOOD.shape).astype(np.float32)
    assert 30 < M.background_consistency(noisy) < 90


def test_morphing_or_vanishing_subject_is_not_consistent() -> None:
    # The object changes shape every other frame.
    cs = line(24.0, 16.0, -2.0, 0.0)
    frames = [clip([("red", "circle" if f % 2 == 0 else "triangle", 5.0, cs)])[f] for f in range(F)]
    r = M.evaluate_video(np.stack(frames), PROMPT)
    assert r["subject_consistency"] < 85 and r["shape"] < 75
    # The object grows to twice its size.
    frames = [clip([("red", "circle", 3.0 + 0.5 * f, cs)])[f] for f in range(F)]
    assert M.evaluate_video(np.stack(frames), PROMPT)["subject_consistency"] < 85
    # The object is missing in half the frames.
    empty = clip([])
    frames = np.where((np.arange(F) % 2 == 0)[:, None, None, None], GOOD, empty)
    r = M.evaluate_video(frames, PROMPT)
    assert r["color"] == 50 and r["subject_consistency"] < 60 and r["motion_smoothness"] == 0
    # No object at all.
    r = M.evaluate_video(empty, PROMPT)
    assert r["prompt_adherence"] == 0 and r["subject_consistency"] == 0 and r["dynamic_degree"] == 0


def test_two_objects_and_extra_objects() -> None:
    two = clip([("red", "square", 5.0, line(8.0, 8.0, 0.0, 2.0)), ("blue", "circle", 5.0, line(24.0, 24.0, 0.0, -2.0))])
    r = M.evaluate_video(two, "a red square moving down and a blue circle moving up")
    assert r["prompt_adherence"] == 100 and r["objects_found"] == 2
    swapped = M.evaluate_video(two, "a red square moving up and a blue circle moving down")
    assert swapped["direction"] == 0
    # One object asked for, two drawn: the count part fails, the rest holds.
    r = M.evaluate_video(two, "a red square moving down")
    assert r["count"] == 0 and r["color"] == r["shape"] == r["direction"] == 100


def test_psnr_ssim() -> None:
    assert M.psnr(GOOD, GOOD) == math.inf and M.ssim(GOOD, GOOD) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    small = np.clip(GOOD + rng.normal(0, 0.01, GOOD.shape), 0, 1)
    big = np.clip(GOOD + rng.normal(0, 0.1, GOOD.shape), 0, 1)
    assert M.psnr(GOOD, small) == pytest.approx(40.0, abs=1.0)
    assert M.psnr(GOOD, small) > M.psnr(GOOD, big)
    assert 1.0 > M.ssim(GOOD, small) > M.ssim(GOOD, big)
    with pytest.raises(ValueError, match="shapes differ"):
        M.psnr(GOOD, GOOD[:4])


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        M.evaluate_video(np.zeros((8, 32, 32)), PROMPT)
    with pytest.raises(TypeError, match="uint8 or float"):
        M.evaluate_video(np.zeros((8, 32, 32, 3), dtype=np.int32), PROMPT)
    with pytest.raises(ValueError, match="at least one object"):
        M.evaluate_video(GOOD, "")
    with pytest.raises(ValueError, match="vocabulary"):
        M.evaluate_video(GOOD, "a purple circle moving left")
    with pytest.raises(ValueError, match="unknown color"):
        M.track_color(GOOD, "purple")


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_videos() -> None:
    from qvgen_eval.metrics import bootstrap_interval

    rng = np.random.default_rng(1)
    few = rng.choice([0.0, 100.0], size=12)
    many = rng.choice([0.0, 100.0], size=400)
    lo, hi = bootstrap_interval(few)
    assert lo <= few.mean() <= hi and hi - lo > 20  # 12 coin flips: wide
    lo2, hi2 = bootstrap_interval(many)
    assert lo2 <= many.mean() <= hi2 and hi2 - lo2 < (hi - lo) / 3  # ~sqrt(400/12) narrower
    assert bootstrap_interval([50.0]) == (50.0, 50.0)
    assert bootstrap_interval(few) == (lo, hi)  # seeded
