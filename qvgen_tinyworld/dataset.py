"""Procedural text-to-video clips, generated on the fly and deterministic from a seed.

Each clip shows one or more flat-colored objects (circle, square, triangle; five colors) moving in
a straight line at constant speed over a static dark background with a faint vertical gradient.
Objects are placed so that they stay fully inside the frame for the whole clip and never overlap
each other (so every object is visible in every frame and the prompt is literally true of every
frame). Edges are anti-aliased by supersampling, which makes sub-pixel motion smooth.

Clip ``i`` of a dataset with seed ``s`` is drawn from ``numpy.random.default_rng([s, i])``: the
same (seed, index) always gives the same clip, on any machine, independent of batch order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from qvgen_tinyworld.grammar import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, ObjectPrompt, render_prompt


@dataclasses.dataclass(frozen=True)
class VideoConfig:
    """Clip geometry and the distribution of scenes."""

    frames: int = 8
    height: int = 32
    width: int = 32
    max_objects: int = 2
    # Probability of each object count 1..max_objects (None: 80% one object, rest spread evenly).
    object_count_probs: tuple[float, ...] | None = None
    # Objects of 10-13 px and motion below half a 4x4 patch per frame: large enough that the
    # three shapes differ in more than their edge pixels, slow enough that consecutive frames
    # overlap, which is what a tiny model's temporal attention needs to keep one object coherent.
    size_range: tuple[float, float] = (5.0, 6.5)  # half-extent in pixels
    speed_range: tuple[float, float] = (1.0, 1.75)  # pixels per frame
    gradient: float = 0.06  # static vertical background gradient amplitude
    supersample: int = 4

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width", "max_objects", "supersample"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2 to show motion, got {self.frames}")
        if self.max_objects > len(COLORS):
            raise ValueError(f"max_objects={self.max_objects} exceeds the {len(COLORS)} distinct colors")
        lo, hi = self.size_range
        if not 1.0 <= lo <= hi:
            raise ValueError(f"size_range must satisfy 1 <= lo <= hi, got {self.size_range}")
        slo, shi = self.speed_range
        if not 0.0 <= slo <= shi:
            raise ValueError(f"speed_range must satisfy 0 <= lo <= hi, got {self.speed_range}")
        travel = shi * (self.frames - 1) + 2 * (hi + 1)
        if travel > min(self.height, self.width):
            raise ValueError(
                f"an object of half-size {hi} at {shi} px/frame for {self.frames} frames does not fit in "
                f"{self.height}x{self.width}; lower speed_range/size_range or raise the resolution"
            )
        if self.object_count_probs is not None:
            p = self.object_count_probs
            if len(p) != self.max_objects or any(x < 0 for x in p) or abs(sum(p) - 1.0) > 1e-6:
                raise ValueError(f"object_count_probs must be {self.max_objects} non-negative numbers summing to 1")

    def count_probs(self) -> np.ndarray:
        if self.object_count_probs is not None:
            return np.asarray(self.object_count_probs, dtype=np.float64)
        if self.max_objects == 1:
            return np.ones(1)
        rest = 0.2 / (self.max_objects - 1)
        return np.asarray([0.8] + [rest] * (self.max_objects - 1))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoConfig:
        d = dict(d)
        for key in ("size_range", "speed_range", "object_count_probs"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class ObjectTrack:
    """One object and its straight-line path: center at frame f is ``(x0 + f*vx, y0 + f*vy)``."""

    color: str
    shape: str
    direction: str
    size: float
    x0: float
    y0: float
    speed: float

    @property
    def velocity(self) -> tuple[float, float]:
        dx, dy = DIRECTIONS[self.direction]
        return dx * self.speed, dy * self.speed

    def center(self, frame: int) -> tuple[float, float]:
        vx, vy = self.velocity
        return self.x0 + frame * vx, self.y0 + frame * vy

    def prompt(self) -> ObjectPrompt:
        return ObjectPrompt(self.color, self.shape, self.direction)


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip."""

    objects: tuple[ObjectTrack, ...]
    background: str

    @property
    def prompt(self) -> str:
        return render_prompt([o.prompt() for o in self.objects])


def _place(
    rng: np.random.Generator, cfg: VideoConfig, size: float, speed: float, direction: str
) -> tuple[float, float]:
    """A start center such that the object stays inside the frame (1 px margin) for the whole clip."""
    dx, dy = DIRECTIONS[direction]
    travel = speed * (cfg.frames - 1)
    m = size + 1.0

    def axis(extent: int, d: float) -> float:
        lo, hi = m, extent - m
        if d > 0:
            hi -= travel
        elif d < 0:
            lo += travel
        return float(rng.uniform(lo, hi))

    return axis(cfg.width, dx), axis(cfg.height, dy)


def _min_distance(a: ObjectTrack, b: ObjectTrack, frames: int) -> float:
    # Chebyshev distance: shapes are bounded by squares of half-extent `size`.
    return min(max(abs(a.center(f)[0] - b.center(f)[0]), abs(a.center(f)[1] - b.center(f)[1])) for f in range(frames))


def sample_clip_spec(rng: np.random.Generator, cfg: VideoConfig, num_objects: int | None = None) -> ClipSpec:
    """Draw a random scene: object count, distinct colors, shapes, directions, sizes, speeds."""
    if num_objects is None:
        num_objects = int(rng.choice(np.arange(1, cfg.max_objects + 1), p=cfg.count_probs()))
    if not 1 <= num_objects <= len(COLORS):
        raise ValueError(f"num_objects must be in 1..{len(COLORS)}, got {num_objects}")
    background = str(rng.choice(list(BACKGROUNDS)))
    colors = rng.choice(list(COLORS), size=num_objects, replace=False)
    objects: list[ObjectTrack] = []
    for color in colors:
        for _attempt in range(100):
            shape = str(rng.choice(SHAPES))
            direction = str(rng.choice(list(DIRECTIONS)))
            size = float(rng.uniform(*cfg.size_range))
            speed = float(rng.uniform(*cfg.speed_range))
            x0, y0 = _place(rng, cfg, size, speed, direction)
            track = ObjectTrack(str(color), shape, direction, size, x0, y0, speed)
            if all(_min_distance(track, o, cfg.frames) >= track.size + o.size + 2.0 for o in objects):
                objects.append(track)
                break
        else:
            # Crowded frame: keep the objects placed so far rather than loop forever.
            break
    return ClipSpec(objects=tuple(objects), background=background)


def shape_coverage(shape: str, cx: float, cy: float, size: float, h: int, w: int, supersample: int = 4) -> np.ndarray:
    """Fraction of each pixel ``[h, w]`` covered by ``shape`` centered at pixel coords ``(cx, cy)``.

    Pixel ``(i, j)`` spans ``[j, j+1) x [i, i+1)``; coverage is the mean of ``supersample^2``
    sub-pixel samples.
    """
    s = supersample
    offs = (np.arange(s) + 0.5) / s
    ys = (np.arange(h)[:, None] + offs[None, :]).reshape(-1) - cy  # [h*s]
    xs = (np.arange(w)[:, None] + offs[None, :]).reshape(-1) - cx  # [w*s]
    y, x = ys[:, None], xs[None, :]  # broadcast to [h*s, w*s]
    if shape == "circle":
        inside = x * x + y * y <= size * size
    elif shape == "square":
        inside = (np.abs(x) <= size) & (np.abs(y) <= size)
    elif shape == "triangle":
        # Apex up at (0, -size), base from (-size, size) to (size, size): |x| <= (y + size) / 2.
        inside = (y <= size) & (y >= -size) & (np.abs(x) <= (y + size) / 2.0)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")
    return inside.reshape(h, s, w, s).mean(axis=(1, 3))


def render_clip(spec: ClipSpec, cfg: VideoConfig) -> np.ndarray:
    """Frames ``[F, H, W, 3]`` float32 in ``[0, 1]``."""
    return render_clip_and_mask(spec, cfg)[0]


def render_clip_and_mask(spec: ClipSpec, cfg: VideoConfig) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``[F, H, W, 3]`` in ``[0, 1]`` and the objects' pixel coverage ``[F, H, W]`` in ``[0, 1]``."""
    f_, h, w = cfg.frames, cfg.height, cfg.width
    bg = np.asarray(BACKGROUNDS[spec.background], dtype=np.float32)
    ramp = np.linspace(-cfg.gradient, cfg.gradient, h, dtype=np.float32)[:, None, None]  # [H, 1, 1]
    frame0 = np.clip(bg[None, None, :] + ramp, 0.0, 1.0) * np.ones((h, w, 1), dtype=np.float32)
    video = np.repeat(frame0[None], f_, axis=0)  # [F, H, W, 3]
    mask = np.zeros((f_, h, w), dtype=np.float32)
    for f in range(f_):
        for obj in spec.objects:
            cx, cy = obj.center(f)
            a = shape_coverage(obj.shape, cx, cy, obj.size, h, w, cfg.supersample)[..., None].astype(np.float32)
            col = np.asarray(COLORS[obj.color], dtype=np.float32)
            video[f] = video[f] * (1.0 - a) + col * a
            mask[f] = np.maximum(mask[f], a[..., 0])
    return video, mask


class TinyVideoDataset:
    """An endless, index-addressable dataset of ``(video, prompt)`` pairs.

    ``dataset[i]`` returns ``(video [3, F, H, W] float32 in [-1, 1], prompt)``; the video layout
    is the one ``WanTransformer3DModel`` takes (channels first, then frames).
    """

    def __init__(self, seed: int = 0, config: VideoConfig | None = None) -> None:
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        self.config = config or VideoConfig()

    def spec(self, index: int) -> ClipSpec:
        if index < 0:
            raise ValueError(f"index must be non-negative, got {index}")
        return sample_clip_spec(np.random.default_rng([self.seed, index]), self.config)

    def frames(self, index: int) -> np.ndarray:
        """Clip ``index`` as frames ``[F, H, W, 3]`` in ``[0, 1]``."""
        return render_clip(self.spec(index), self.config)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        spec = self.spec(index)
        return frames_to_tensor(render_clip(spec, self.config)), spec.prompt

    def batch(self, indices: list[int] | range) -> tuple[torch.Tensor, list[str]]:
        """``(videos [B, 3, F, H, W] in [-1, 1], prompts)``."""
        items = [self[i] for i in indices]
        return torch.stack([v for v, _ in items]), [p for _, p in items]

    def batch_with_masks(self, indices: list[int] | range) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """``(videos [B, 3, F, H, W], prompts, object coverage [B, 1, F, H, W] in [0, 1])``."""
        videos, prompts, masks = [], [], []
        for i in indices:
            spec = self.spec(i)
            frames, mask = render_clip_and_mask(spec, self.config)
            videos.append(frames_to_tensor(frames))
            prompts.append(spec.prompt)
            masks.append(torch.from_numpy(mask)[None])
        return torch.stack(videos), prompts, torch.stack(masks)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """``[F, H, W, 3]`` in ``[0, 1]`` -> ``[3, F, H, W]`` in ``[-1, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(3, 0, 1, 2))).float() * 2.0 - 1.0


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """``[3, F, H, W]`` (or ``[B, 3, F, H, W]``) in ``[-1, 1]`` -> ``[(B,) F, H, W, 3]`` in ``[0, 1]``."""
    if video.dim() not in (4, 5) or video.shape[-4] != 3:
        raise ValueError(f"expected a video [3, F, H, W] or [B, 3, F, H, W], got shape {tuple(video.shape)}")
    x = ((video.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)
    perm = (0, 2, 3, 4, 1) if x.dim() == 5 else (1, 2, 3, 0)
    return x.permute(*perm).numpy()
