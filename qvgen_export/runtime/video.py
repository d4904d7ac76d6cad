"""Turning sampled latents into files: GIF/MP4 frames, a contact sheet, and raw latents."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from qvgen_export.utils.atomic import atomic_file

# Pixel-space models (the tiny teacher) sample RGB in [-1, 1] directly; latent-space models
# (real Wan) pass their VAE's decode here instead.
Decoder = Callable[[torch.Tensor], torch.Tensor]


def pixel_decode(latents: torch.Tensor) -> torch.Tensor:
    """``[B, 3, F, H, W]`` in [-1, 1] -> float frames ``[B, F, H, W, 3]`` in [0, 1]."""
    if latents.shape[1] != 3:
        raise ValueError(f"pixel-space decoding needs 3 channels, got {latents.shape[1]}; pass a VAE decoder")
    return ((latents.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).contiguous()


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def write_video(frames: np.ndarray, path: str | Path, fps: int = 8, scale: int = 4) -> Path:
    """Write ``[F, H, W, 3]`` uint8 frames as GIF (``.gif``) or MP4 (``.mp4``, needs imageio-ffmpeg)."""
    import imageio.v3 as iio

    path = Path(path)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    with atomic_file(path) as tmp:
        if path.suffix == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=int(1000 / fps), loop=0)
        else:
            iio.imwrite(tmp, frames, extension=path.suffix, fps=fps)
    return path


def contact_sheet(videos: np.ndarray, path: str | Path, scale: int = 2) -> Path:
    """``[B, F, H, W, 3]`` uint8 -> one PNG, a row per video, a column per frame."""
    from PIL import Image

    b, f, h, w, _ = videos.shape
    sheet = np.full((b * (h + 2), f * (w + 2), 3), 255, dtype=np.uint8)
    for i in range(b):
        for j in range(f):
            sheet[i * (h + 2) : i * (h + 2) + h, j * (w + 2) : j * (w + 2) + w] = videos[i, j]
    img = Image.fromarray(sheet)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    with atomic_file(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def save_latents(latents: torch.Tensor, path: str | Path, **meta: str) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_file(path) as tmp:
        save_file({"latents": latents.detach().float().cpu().contiguous()}, str(tmp), metadata=meta)
    return path
