"""Write generated clips for eyes: animated GIFs and contact-sheet PNGs (PIL only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Frames ``[F, H, W, 3]`` in ``[0, 1]`` (float) or uint8 -> uint8."""
    a = np.asarray(frames)
    if a.dtype == np.uint8:
        return a
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_gif(frames: np.ndarray, path: str | Path, scale: int = 4, duration_ms: int = 150) -> Path:
    """Save ``[F, H, W, 3]`` as a looping GIF, upscaled ``scale`` times (nearest) for visibility."""
    a = to_uint8(frames)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected frames [F, H, W, 3], got shape {a.shape}")
    imgs = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in a]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=duration_ms, loop=0)
    return path


def contact_sheet(
    videos: list[np.ndarray], labels: list[str] | None = None, path: str | Path | None = None, scale: int = 3
) -> Image.Image:
    """One row per video (frames left to right), label above each row; optionally saved as PNG."""
    if not videos:
        raise ValueError("contact_sheet needs at least one video")
    arrs = [to_uint8(v) for v in videos]
    f, h, w, _ = arrs[0].shape
    label_h = 12 if labels else 0
    pad = 2
    sheet = Image.new("RGB", (f * (w * scale + pad) + pad, len(arrs) * (h * scale + pad + label_h) + pad), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for r, a in enumerate(arrs):
        y = pad + r * (h * scale + pad + label_h)
        if labels:
            draw.text((pad, y), labels[r][:80], fill=(230, 230, 230))
        for c in range(a.shape[0]):
            img = Image.fromarray(a[c]).resize((w * scale, h * scale), Image.NEAREST)
            sheet.paste(img, (pad + c * (w * scale + pad), y + label_h))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(path)
    return sheet
