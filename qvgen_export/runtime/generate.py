"""Sample videos with any denoiser and write them: GIF per prompt, contact sheet, latents."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qvgen_export.runtime.sampler import sample_video
from qvgen_export.runtime.video import contact_sheet, pixel_decode, save_latents, to_uint8, write_video


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
) -> dict[str, Any]:
    """Sample, then write ``{tag}_{i}_{prompt}.gif``, ``{tag}_sheet.png`` and ``{tag}_latents.safetensors``."""
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
    frames = to_uint8(pixel_decode(latents))
    files = []
    for i, prompt in enumerate(spec.prompts):
        files.append(str(write_video(frames[i], out_dir / f"{tag}_{i}_{slug(prompt)}.gif")))
    sheet = contact_sheet(frames, out_dir / f"{tag}_sheet.png")
    lat = save_latents(
        latents, out_dir / f"{tag}_latents.safetensors", prompts="\n".join(spec.prompts), seed=str(spec.seed)
    )
    return {"videos": files, "contact_sheet": str(sheet), "latents": str(lat), "frames": frames}
