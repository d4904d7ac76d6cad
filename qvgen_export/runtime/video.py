"""Turning sampled latents into files: GIF/MP4 frames, a contact sheet, and raw latents."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from qvgen_export.utils.atomic import atomic_file

# Latents [B, C, F, H, W] -> float frames [B, F', H', W', 3] in [0, 1]. Pixel-space models (the
# tiny teacher) sample RGB in [-1, 1] directly (pixel_decode); latent-space models (real Wan)
# use their VAE (wan_vae_decoder).
Decoder = Callable[[torch.Tensor], torch.Tensor]


def pixel_decode(latents: torch.Tensor) -> torch.Tensor:
    """``[B, 3, F, H, W]`` in [-1, 1] -> float frames ``[B, F, H, W, 3]`` in [0, 1]."""
    if latents.shape[1] != 3:
        raise ValueError(f"pixel-space decoding needs 3 channels, got {latents.shape[1]}; pass a VAE decoder")
    return ((latents.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).contiguous()


def wan_vae_decoder(folder: str | Path, dtype: torch.dtype = torch.float32) -> Decoder:
    """The Wan VAE of a local diffusers folder (``AutoencoderKLWan``; a pipeline folder's ``vae/``
    is found) as a :data:`Decoder`, with ``WanPipeline``'s latent de-normalisation."""
    from diffusers import AutoencoderKLWan

    p = Path(folder)
    if (p / "vae" / "config.json").is_file():
        p = p / "vae"
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json (expected a local diffusers AutoencoderKLWan folder)")
    try:
        vae = AutoencoderKLWan.from_pretrained(str(p), torch_dtype=dtype, local_files_only=True).eval()
    except (OSError, TypeError, KeyError) as e:
        raise ValueError(f"{p}: not a loadable AutoencoderKLWan folder ({str(e).splitlines()[0]})") from None

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> torch.Tensor:
        c = vae.config.z_dim
        if latents.shape[1] != c:
            raise ValueError(f"the VAE in {p} decodes {c}-channel latents, the model samples {latents.shape[1]}")
        mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1)
        video = vae.decode((latents.float() * std + mean).to(dtype), return_dict=False)[0]
        return pixel_decode(video.float())

    return decode


def to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """Frames with values in [0, 1] (tensor or array; uint8 passes through) -> uint8 array,
    rounded half to even (the one conversion every video and contact sheet goes through)."""
    if isinstance(frames, np.ndarray):
        if frames.dtype == np.uint8:
            return frames
        frames = torch.from_numpy(np.asarray(frames, dtype=np.float32))
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def write_video(frames: np.ndarray, path: str | Path, fps: int = 8, scale: int = 4) -> Path:
    """Write ``[F, H, W, 3]`` frames (uint8, or float in [0, 1]) as GIF (``.gif``) or MP4 (``.mp4``,
    needs imageio-ffmpeg), upscaled ``scale`` times (nearest) so small clips stay visible."""
    import imageio.v3 as iio

    frames = to_uint8(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [F, H, W, 3], got shape {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    with atomic_file(path) as tmp:
        if path.suffix == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=int(1000 / fps), loop=0)
        else:
            iio.imwrite(tmp, frames, extension=path.suffix, fps=fps)
    return path


def contact_sheet(
    videos: np.ndarray | Sequence[np.ndarray],
    path: str | Path,
    scale: int = 2,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """``[B, F, H, W, 3]`` (uint8, or float in [0, 1]; or a list of ``[F, H, W, 3]``) -> one PNG,
    a row per video, a column per frame.

    ``labels`` (one per row, e.g. the prompts) are written above each row and ``title`` (e.g. the
    backend and scheme) above the sheet, in PIL's built-in font, so a sheet read on its own says
    what it shows.
    """
    from PIL import Image, ImageDraw

    if len(videos) == 0:
        raise ValueError("contact_sheet needs at least one video")
    videos = np.stack([to_uint8(np.asarray(v)) for v in videos])
    b, f, h, w, _ = videos.shape
    grid = np.full((b * (h + 2), f * (w + 2), 3), 255, dtype=np.uint8)
    for i in range(b):
        for j in range(f):
            grid[i * (h + 2) : i * (h + 2) + h, j * (w + 2) : j * (w + 2) + w] = videos[i, j]
    img = Image.fromarray(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if labels or title:
        line = 14  # the built-in bitmap font is ~11 px high
        row_h = (h + 2) * scale
        head = line if title else 0
        lab = line if labels else 0
        canvas = Image.new("RGB", (max(img.width, 8), head + b * (row_h + lab)), "white")
        draw = ImageDraw.Draw(canvas)
        if title:
            draw.text((2, 1), title, fill="black")
        for i in range(b):
            y = head + i * (row_h + lab)
            if labels and i < len(labels):
                draw.text((2, y + 1), labels[i], fill="black")
            canvas.paste(img.crop((0, i * row_h, img.width, (i + 1) * row_h)), (0, y + lab))
        img = canvas
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def save_latents(latents: torch.Tensor, path: str | Path, **meta: str) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_file(path) as tmp:
        save_file({"latents": latents.detach().float().cpu().contiguous()}, str(tmp), metadata=meta)
    return path
