"""The text-to-video denoising loop, as diffusers' WanPipeline runs it, on any denoiser.

A denoiser is any callable with the call signature of diffusers' ``WanTransformer3DModel``:
``denoiser(hidden_states, timestep, encoder_hidden_states, return_dict=False)[0]`` returning the
flow-matching velocity. The loop is diffusers' scheduler (UniPC with flow sigmas, as Wan ships,
or flow-matching Euler), with classifier-free guidance as in ``WanPipeline.__call__``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

DenoiseFn = Callable[..., Any]  # anything with WanTransformer3DModel's call signature
SchedulerName = Literal["unipc", "euler"]


def make_scheduler(name: SchedulerName = "unipc", shift: float = 3.0, num_train_timesteps: int = 1000) -> Any:
    """Wan 2.1's schedulers: UniPC (flow_prediction, flow sigmas) or flow-matching Euler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if name == "unipc":
        return UniPCMultistepScheduler(
            num_train_timesteps=num_train_timesteps,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=shift,
        )
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    raise ValueError(f"unknown scheduler {name!r}; expected 'unipc' or 'euler'")


@torch.no_grad()
def sample_video(
    denoiser: DenoiseFn,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None,
    *,
    latent_shape: tuple[int, int, int, int],
    num_steps: int = 20,
    guidance_scale: float = 5.0,
    scheduler: SchedulerName = "unipc",
    shift: float = 3.0,
    seed: int = 0,
    generator_device: str = "cpu",
    progress: bool = True,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Sample latents ``[B, C, F, H, W]`` for ``prompt_embeds [B, L, D]``.

    Args:
        latent_shape: ``(C, F, H, W)`` of one sample.
        guidance_scale: CFG weight; ``<= 1`` or ``negative_prompt_embeds is None`` disables CFG.
        callback: called as ``callback(step_index, timestep, velocity)`` after each step's
            (guided) model output, e.g. to record per-timestep outputs for parity checks.
    """
    sched = make_scheduler(scheduler, shift)
    sched.set_timesteps(num_steps)
    b = prompt_embeds.shape[0]
    gen = torch.Generator(generator_device).manual_seed(seed)
    latents = torch.randn((b, *latent_shape), generator=gen, dtype=torch.float32)
    do_cfg = guidance_scale > 1.0 and negative_prompt_embeds is not None
    for i, t in enumerate(tqdm(sched.timesteps, desc="denoising", disable=not progress, leave=False)):
        timestep = t.expand(b).to(torch.float32)
        v = denoiser(latents, timestep, prompt_embeds, return_dict=False)[0]
        if do_cfg:
            v_uncond = denoiser(latents, timestep, negative_prompt_embeds, return_dict=False)[0]
            v = v_uncond + guidance_scale * (v - v_uncond)
        if callback is not None:
            callback(i, t, v)
        latents = sched.step(v, t, latents, return_dict=False)[0]
    return latents
