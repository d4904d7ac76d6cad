"""VBench-like video metrics with analytic detectors that know the tiny-video grammar.

Pure numpy. Every function takes frames ``[F, H, W, 3]``, float in ``[0, 1]`` or uint8, and every
score is in ``[0, 100]`` (higher is better). VBench scores real videos with learned networks
(DINO, CLIP, RAFT, AMT); here the world is procedural, so detectors with a known ground truth do
the same jobs:

- **prompt adherence**: per prompted object, is an object of the right *color* there (nearest
  palette color), of the right *shape* (the grammar shape whose rendered template, with the
  blob's area and centroid, best matches the blob's estimated coverage), moving in the right
  *direction* (least-squares velocity of the blob centroid, at least ``MIN_SPEED`` px/frame)? Plus whether the video shows as many objects
  as the prompt names (*count*). Adherence is the mean of these four.
- **subject consistency** (VBench: DINO features across frames): the object's appearance, an
  RGB crop re-centred on its sub-pixel centroid, compared with the first and the previous frame.
- **motion smoothness** (VBench: frame-interpolation error): the centroid's acceleration; a
  straight constant-speed path scores ~100, jitter scores low. A static object is smooth too,
  which is why dynamic degree exists.
- **dynamic degree** (VBench: RAFT flow above a threshold): the share of prompted objects that
  move at least ``MIN_SPEED`` px/frame.
- **background consistency** (VBench: CLIP features across frames): the mean absolute change of
  the pixels that no object ever covers, from frame to frame and from the first frame.

Plus PSNR and SSIM for comparing a quantized model's video with the float one (same noise).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np

from qvgen_export.parity.measures import psnr as _psnr
from qvgen_tinyworld.grammar import COLORS, DIRECTIONS, SHAPES, ObjectPrompt, parse_prompt

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
PALETTE = np.asarray([COLORS[c] for c in COLOR_NAMES], dtype=np.float32)  # [K, 3]
# A pixel belongs to a palette color if it is nearer to it than COLOR_TAU (RGB distance). The
# closest two object colors are ~0.75 apart and the backgrounds >= 0.7 from every object color,
# so 0.35 is unambiguous and keeps pixels with more than about half coverage.
COLOR_TAU = 0.35
MIN_AREA = 10  # pixels; the smallest object (triangle of half-size 5) covers ~50
MIN_SPEED = 0.5  # px/frame; half the slowest training speed
ACCEL_SCALE = 1.0  # px/frame^2 at which a step's smoothness is 1/2
BG_SCALE = 0.1  # mean absolute change at which background consistency is exp(-1) ~ 37
CROP_RADIUS = 8  # px; objects have half-size <= 6.5
SCORE_KEYS: tuple[str, ...] = (
    "prompt_adherence",
    "color",
    "shape",
    "direction",
    "count",
    "subject_consistency",
    "motion_smoothness",
    "dynamic_degree",
    "background_consistency",
)


def as_frames(frames: np.ndarray) -> np.ndarray:
    """Validate and convert to float32 ``[F, H, W, 3]`` in ``[0, 1]``."""
    a = np.asarray(frames)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"frames must have shape [F, H, W, 3], got {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 frames, got {a.shape[0]}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"frames must be uint8 or float, got {a.dtype}")
    return np.clip(a.astype(np.float32), 0.0, 1.0)


def palette_labels(frames: np.ndarray, tau: float = COLOR_TAU) -> np.ndarray:
    """Per pixel, the index of the nearest palette color, or -1 if none is within ``tau``; ``[F, H, W]``."""
    d = np.linalg.norm(frames[..., None, :] - PALETTE, axis=-1)  # [F, H, W, K]
    idx = d.argmin(axis=-1)
    return np.where(d.min(axis=-1) < tau, idx, -1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a 2-D boolean mask (empty mask -> empty)."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    best, best_size, cur = 0, 0, 0
    for sy, sx in zip(*np.nonzero(mask)):
        if labels[sy, sx]:
            continue
        cur += 1
        labels[sy, sx] = cur
        stack, size = [(sy, sx)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = cur
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = cur, size
    return labels == best if best else np.zeros_like(mask, dtype=bool)


@dataclasses.dataclass
class Track:
    """One colored object followed through the clip (entries for absent frames are NaN / None)."""

    color: str
    present: np.ndarray  # [F] bool
    area: np.ndarray  # [F] pixels of the hard blob
    centroid: np.ndarray  # [F, 2] (x, y), coverage-weighted, sub-pixel
    shapes: list[str | None]  # [F] best-matching shape template
    touches_border: np.ndarray  # [F] bool
    coverage: np.ndarray  # [F, H, W] estimated coverage of this object (0 outside its blob window)

    @property
    def velocity(self) -> np.ndarray | None:
        """Least-squares (vx, vy) in px/frame over present frames; None with fewer than 2."""
        f = np.nonzero(self.present)[0]
        if len(f) < 2:
            return None
        c = self.centroid[f]
        ff = f - f.mean()
        return (ff[:, None] * (c - c.mean(axis=0))).sum(axis=0) / (ff * ff).sum()


def _template(shape: str, cx: float, cy: float, area: float, h: int, w: int) -> np.ndarray:
    """Coverage of ``shape`` with the given area whose *centroid* is at ``(cx, cy)``."""
    from qvgen_tinyworld.dataset import shape_coverage

    if shape == "circle":
        return shape_coverage("circle", cx, cy, math.sqrt(area / math.pi), h, w)
    if shape == "square":
        return shape_coverage("square", cx, cy, math.sqrt(area) / 2.0, h, w)
    size = math.sqrt(area / 2.0)  # base 2s, height 2s; centroid s/3 below the box centre
    return shape_coverage("triangle", cx, cy - size / 3.0, size, h, w)


def match_shape(coverage: np.ndarray, cx: float, cy: float) -> str:
    """The grammar shape whose template (same area and centroid) is nearest in L1 to ``coverage [H, W]``."""
    h, w = coverage.shape
    area = float(coverage.sum())
    return min(SHAPES, key=lambda sh: float(np.abs(coverage - _template(sh, cx, cy, area, h, w)).sum()))


def track_color(frames: np.ndarray, color: str, labels: np.ndarray | None = None) -> Track:
    """Follow the largest blob of palette ``color`` in every frame.

    A pixel's coverage by the object is estimated from where its color lies between the frame's
    background (median color) and the object color: ``1 - |p - c| / |bg - c|``, clipped to [0, 1].
    """
    if color not in COLORS:
        raise ValueError(f"unknown color {color!r}; expected one of {list(COLOR_NAMES)}")
    fr = as_frames(frames)
    labels = palette_labels(fr) if labels is None else labels
    k = COLOR_NAMES.index(color)
    n, h, w, _ = fr.shape
    bg = np.median(fr.reshape(n, -1, 3), axis=1)  # [F, 3]
    dist = np.linalg.norm(fr - PALETTE[k], axis=-1)  # [F, H, W]
    span = np.maximum(np.linalg.norm(bg - PALETTE[k], axis=-1), 1e-3)[:, None, None]  # [F, 1, 1]
    soft = np.clip(1.0 - dist / span, 0.0, 1.0)
    present = np.zeros(n, dtype=bool)
    area = np.full(n, np.nan)
    centroid = np.full((n, 2), np.nan)
    shapes: list[str | None] = [None] * n
    border = np.zeros(n, dtype=bool)
    coverage = np.zeros((n, h, w), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for f in range(n):
        blob = largest_component(labels[f] == k)
        a = int(blob.sum())
        if a < MIN_AREA:
            continue
        ys, xs = np.nonzero(blob)
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        # Coverage is taken in the blob's box grown by 2 px, so anti-aliased edges count but
        # other objects of the same color elsewhere do not.
        win = np.zeros((h, w), dtype=bool)
        win[max(0, y0 - 2) : y1 + 3, max(0, x0 - 2) : x1 + 3] = True
        cov = soft[f] * win
        coverage[f] = cov
        present[f] = True
        area[f] = a
        centroid[f] = ((cov * (xx + 0.5)).sum() / cov.sum(), (cov * (yy + 0.5)).sum() / cov.sum())
        shapes[f] = match_shape(cov, *centroid[f])
        border[f] = y0 == 0 or x0 == 0 or y1 == h - 1 or x1 == w - 1
    return Track(color, present, area, centroid, shapes, border, coverage)


def classify_direction(velocity: np.ndarray | None) -> str | None:
    """Nearest of the four directions, or None when slower than ``MIN_SPEED``."""
    if velocity is None or float(np.hypot(*velocity)) < MIN_SPEED:
        return None
    return max(DIRECTIONS, key=lambda d: float(np.dot(velocity, DIRECTIONS[d])))


def _gaussian_filter(img: np.ndarray, sigma: float = 1.5, radius: int = 3) -> np.ndarray:
    """Separable Gaussian blur over axes (1, 2) of ``[N, H, W, C]``, 'valid' borders (the
    subject-consistency crops are compared blurred, so sub-pixel jitter does not count)."""
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    win = np.lib.stride_tricks.sliding_window_view(img, 2 * radius + 1, axis=1)  # [N, H', W, C, k]
    img = (win * k).sum(-1)
    win = np.lib.stride_tricks.sliding_window_view(img, 2 * radius + 1, axis=2)
    return (win * k).sum(-1)


def _bilinear_crop(img: np.ndarray, cx: float, cy: float, r: int) -> np.ndarray:
    """``[2r+1, 2r+1, C]`` crop of ``img [H, W, C]`` centred at pixel coords ``(cx, cy)``, edges replicated."""
    h, w = img.shape[:2]
    ys = np.clip(cy - 0.5 + np.arange(-r, r + 1), 0, h - 1)
    xs = np.clip(cx - 0.5 + np.arange(-r, r + 1), 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bot = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return top * (1 - wy) + bot * wy


def _l1_similarity(a: np.ndarray, b: np.ndarray) -> float:
    den = float(np.abs(a).sum() + np.abs(b).sum())
    return 1.0 if den == 0.0 else max(0.0, 1.0 - float(np.abs(a - b).sum()) / den)


def subject_consistency(frames: np.ndarray, track: Track) -> float:
    """Appearance of the tracked object vs the first and the previous frame; absent frames score 0."""
    fr = as_frames(frames)
    n = fr.shape[0]
    if not track.present[0]:
        first = int(np.argmax(track.present)) if track.present.any() else None
    else:
        first = 0
    if first is None:
        return 0.0
    # The appearance is the object alone: its estimated coverage times the pixel colors, so the
    # background (and its gradient) under a moving object does not count. Crops are blurred
    # (sigma 1 px) so that sub-pixel sampling of sharp edges, which differs from frame to frame
    # for a perfectly rigid object, does not count as a change of appearance either.
    look = fr * track.coverage[..., None]  # [F, H, W, 3]
    crops = [
        _gaussian_filter(_bilinear_crop(look[f], *track.centroid[f], CROP_RADIUS + 3)[None], 1.0, 3)[0]
        if track.present[f]
        else None
        for f in range(n)
    ]
    sims = []
    for f in range(1, n):
        if crops[f] is None:
            sims.append(0.0)
            continue
        s0 = _l1_similarity(crops[first], crops[f])
        prev = crops[f - 1]
        s1 = _l1_similarity(prev, crops[f]) if prev is not None else 0.0
        sims.append(0.5 * (s0 + s1))
    return 100.0 * float(np.mean(sims))


def motion_smoothness(track: Track) -> float:
    """Mean over frame triples of ``1 / (1 + (|accel| / ACCEL_SCALE)^2)``; absent triples score 0."""
    n = len(track.present)
    if n < 3:
        return 100.0 if track.present.all() else 0.0
    scores = []
    for f in range(1, n - 1):
        if not (track.present[f - 1] and track.present[f] and track.present[f + 1]):
            scores.append(0.0)
            continue
        acc = track.centroid[f + 1] - 2 * track.centroid[f] + track.centroid[f - 1]
        scores.append(1.0 / (1.0 + (float(np.hypot(*acc)) / ACCEL_SCALE) ** 2))
    return 100.0 * float(np.mean(scores))


def background_consistency(frames: np.ndarray, labels: np.ndarray | None = None) -> float:
    """``100 * mean_t exp(-MAD_t / BG_SCALE)`` over pixels no object covers in any frame, where
    ``MAD_t`` averages the change from frame ``t-1`` and from frame 0."""
    fr = as_frames(frames)
    labels = palette_labels(fr, tau=1.5 * COLOR_TAU) if labels is None else labels
    fg = (labels >= 0).any(axis=0)  # [H, W]
    # Grow by one pixel so that anti-aliased object edges are not counted as background.
    grown = fg.copy()
    grown[1:] |= fg[:-1]
    grown[:-1] |= fg[1:]
    grown[:, 1:] |= fg[:, :-1]
    grown[:, :-1] |= fg[:, 1:]
    bgmask = ~grown
    if bgmask.sum() < 0.05 * bgmask.size:
        bgmask = np.ones_like(bgmask)  # objects everywhere: fall back to the whole frame
    px = fr[:, bgmask]  # [F, P, 3]
    scores = []
    for f in range(1, fr.shape[0]):
        mad = 0.5 * (np.abs(px[f] - px[f - 1]).mean() + np.abs(px[f] - px[0]).mean())
        scores.append(math.exp(-float(mad) / BG_SCALE))
    return 100.0 * float(np.mean(scores))


def _objects(prompt: str | Sequence[ObjectPrompt]) -> list[ObjectPrompt]:
    objs = parse_prompt(prompt) if isinstance(prompt, str) else list(prompt)
    if not objs:
        raise ValueError("metrics need a prompt naming at least one object (the empty prompt has no ground truth)")
    return objs


def evaluate_video(frames: np.ndarray, prompt: str | Sequence[ObjectPrompt]) -> dict[str, float]:
    """All scores (each in ``[0, 100]``) of one generated clip against its prompt, plus
    ``speed`` (mean prompted-object speed, px/frame) and ``objects_found``."""
    fr = as_frames(frames)
    objs = _objects(prompt)
    labels = palette_labels(fr)
    color_s, shape_s, dir_s, subj_s, smooth_s, dyn_s, speeds = [], [], [], [], [], [], []
    n = fr.shape[0]
    for obj in objs:
        tr = track_color(fr, obj.color, labels)
        color_s.append(tr.present.mean())
        valid = tr.present & ~tr.touches_border
        shapes = [sh for sh, ok in zip(tr.shapes, valid) if ok]
        shape_s.append(float(np.mean([x == obj.shape for x in shapes])) if shapes else 0.0)
        v = tr.velocity if tr.present.sum() >= max(2, n // 2) else None
        dir_s.append(float(classify_direction(v) == obj.direction))
        speed = float(np.hypot(*v)) if v is not None else 0.0
        speeds.append(speed)
        dyn_s.append(float(speed >= MIN_SPEED))
        subj_s.append(subject_consistency(fr, tr))
        smooth_s.append(motion_smoothness(tr))
    # Count: palette colors that form an object in at least half of the frames.
    found = 0
    for k in range(len(COLOR_NAMES)):
        frames_with = sum(int(largest_component(labels[f] == k).sum() >= MIN_AREA) for f in range(n))
        found += int(frames_with >= max(1, n // 2))
    count = float(found == len(objs))
    color, shape, direction = (100.0 * float(np.mean(x)) for x in (color_s, shape_s, dir_s))
    return {
        "prompt_adherence": float(np.mean([color, shape, direction, 100.0 * count])),
        "color": color,
        "shape": shape,
        "direction": direction,
        "count": 100.0 * count,
        "subject_consistency": float(np.mean(subj_s)),
        "motion_smoothness": float(np.mean(smooth_s)),
        "dynamic_degree": 100.0 * float(np.mean(dyn_s)),
        "background_consistency": background_consistency(fr),
        "speed": float(np.mean(speeds)),
        "objects_found": float(found),
    }


def aggregate(results: Iterable[dict[str, float]]) -> dict[str, float]:
    """Mean of every key over videos."""
    rows = list(results)
    if not rows:
        raise ValueError("aggregate needs at least one result")
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


# Prompt-adherence keys whose spread over videos the reports give as bootstrap intervals.
INTERVAL_KEYS = ("prompt_adherence", "color", "shape", "direction", "count")


def bootstrap_interval(
    values: Sequence[float], resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (videos resampled with
    replacement; seeded, so a report is reproducible). One value gives a zero-width interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    a = (1.0 - level) / 2.0
    return float(np.quantile(means, a)), float(np.quantile(means, 1.0 - a))


# -- fidelity against a reference video ---------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two clips in [0, 1] (peak 1; infinite for identical clips): the project's one
    PSNR, ``qvgen_export.parity.measures.psnr``, on the clips as frames."""
    return _psnr(as_frames(b), as_frames(a), peak=1.0)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two clips in [0, 1], per frame over RGB, computed by torchmetrics with the
    standard settings of Wang et al. 2004 (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
    data range 1)."""
    x, y = as_frames(a), as_frames(b)
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ, {x.shape} vs {y.shape}")
    if min(x.shape[1:3]) < 11:
        raise ValueError(f"ssim needs frames of at least 11x11, got {x.shape[1:3]}")
    try:
        import torch
        from torchmetrics.functional.image import structural_similarity_index_measure
    except ImportError as e:  # the harness's extra; the compiler does not need it
        raise ImportError("SSIM needs torchmetrics: pip install 'qvgen-export[eval]'") from e

    def nchw(v: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)).permute(0, 3, 1, 2)

    return float(structural_similarity_index_measure(nchw(x), nchw(y), data_range=1.0))
