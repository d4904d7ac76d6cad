"""Sample videos with any denoiser and write them: GIF per prompt, contact sheet, latents.

Pixel-space models (3 channels, the tiny world) are their own frames. Latent-space models (real
Wan, 16 channels) need a decoder (``vae_decoder``: the Wan VAE from a local folder); without one
only the latents are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qvgen_export.runtime.sampler import sample_video
from qvgen_export.runtime.video import Decoder, contact_sheet, pixel_decode, save_latents, to_uint8, write_video


@dataclass
class GenerationSpec:
    prompts: list[str]
    negative_prompt: str = ""
    latent_shape: tuple[int, int, int, int] = (3, 8, 32, 32)
    num_steps: int = 20
    guidance_scale: float = 4.0
    scheduler: str = "unipc"
    shift: float = 3.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def slug(text: str, n: int = 40) -> str:
    s = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    return s[:n] or "empty"


def generate(
    denoiser: Any,
    spec: GenerationSpec,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor | None,
    out_dir: Path,
    tag: str,
    progress: bool = True,
    decoder: Decoder | None = None,
) -> dict[str, Any]:
    """Sample, then write ``{tag}_latents.safetensors`` and, when there are frames (a 3-channel
    model, or ``decoder``), ``{tag}_{i}_{prompt}.gif`` and the labelled ``{tag}_sheet.png``.

    Returns ``videos`` (paths), ``contact_sheet`` (path or None), ``latents`` (path), ``frames``
    (uint8 ``[B, F, H, W, 3]`` or None).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    latents = sample_video(
        denoiser,
        prompt_embeds,
        negative_embeds,
        latent_shape=spec.latent_shape,
        num_steps=spec.num_steps,
        guidance_scale=spec.guidance_scale,
        scheduler=spec.scheduler,  # type: ignore[arg-type]
        shift=spec.shift,
        seed=spec.seed,
        progress=progress,
    )
    lat = save_latents(
        latents, out_dir / f"{tag}_latents.safetensors", prompts="\n".join(spec.prompts), seed=str(spec.seed)
    )
    if decoder is None and latents.shape[1] != 3:
        return {"videos": [], "contact_sheet": None, "latents": str(lat), "frames": None}
    frames = to_uint8(decoder(latents) if decoder is not None else pixel_decode(latents))
    files = []
    for i, prompt in enumerate(spec.prompts):
        files.append(str(write_video(frames[i], out_dir / f"{tag}_{i}_{slug(prompt)}.gif")))
    title = f"{tag}: {spec.num_steps} steps, {spec.scheduler}, guidance {spec.guidance_scale:g}, seed {spec.seed}"
    sheet = contact_sheet(frames, out_dir / f"{tag}_sheet.png", labels=list(spec.prompts), title=title)
    return {"videos": files, "contact_sheet": str(sheet), "latents": str(lat), "frames": frames}
