"""The teacher-forced error: a quantized denoiser's velocity against the float teacher's, on the
float teacher's own sampling trajectory, for the conditional, unconditional and CFG-guided output.

This is the primary metric for ranking QAT methods on the tiny teacher (docs/qat-trainer.md).
Video metrics of sampled clips (PSNR/SSIM, adherence) compound every step's error along a
trajectory that diverges chaotically at low bit widths, so one seed x a dozen prompts flips the
ranking of methods whose per-call errors differ by ~1%; the per-call error on fixed inputs does
not. Measured here:

1. the float teacher samples every prompt x noise seed (the harness's sampler, UniPC, CFG); at
   every step the latents, timestep and both branches' velocities are recorded once
   (:func:`reference_trajectory`);
2. a model is called on exactly those latents and timesteps with the prompt and with the empty
   prompt, and for each (seed, step) the relative errors ``||v - v_ref|| / ||v_ref||`` (over the
   whole prompt batch) of the conditional, unconditional and guided ``v_u + g (v_c - v_u)``
   velocities are recorded (:func:`forced_errors`); the figures are their means over seeds and
   steps.

The guided error is the one sampling sees; the two branch errors show where it comes from (CFG
multiplies the branches' *difference*, so partly uncorrelated branch errors are amplified).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from qvgen_eval.harness import SamplingSettings, relative_error
from qvgen_export.runtime.sampler import DenoiseFn

TextEncode = Callable[[list[str]], torch.Tensor]
BRANCHES = ("cond", "uncond", "guided")


# The teacher-forced metric samples like the harness does (any prompts, no ground truth needed).
ForcedSettings = SamplingSettings


@dataclasses.dataclass
class Step:
    timestep: torch.Tensor  # [P]
    latents: torch.Tensor  # [P, C, F, H, W], the reference's input at this step
    v_cond: torch.Tensor
    v_uncond: torch.Tensor


@dataclasses.dataclass
class ReferenceTrajectory:
    settings: ForcedSettings
    cond: torch.Tensor  # [P, L, D]
    uncond: torch.Tensor  # [P, L, D]
    steps: dict[int, list[Step]]  # seed -> one record per sampling step


def guided(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """CFG as the sampler applies it; ``scale <= 1`` means no guidance (the conditional output)."""
    return v_cond if scale <= 1.0 else v_uncond + scale * (v_cond - v_uncond)


def _call(model: DenoiseFn, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return model(x, t, c, return_dict=False)[0].float()


class _Recorder:
    """Wraps the reference for ``sample_video``: on each conditional call it computes both branches
    and records them; the sampler's unconditional call (same latents) gets the cached output, so
    every step costs two reference calls, with or without CFG in the sampler."""

    def __init__(self, model: DenoiseFn, cond: torch.Tensor, uncond: torch.Tensor) -> None:
        self.model, self.cond, self.uncond = model, cond, uncond
        self.steps: list[Step] = []

    def __call__(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, **kw: Any
    ) -> tuple[torch.Tensor]:
        if encoder_hidden_states is self.uncond:
            return (self.steps[-1].v_uncond,)
        vc = _call(self.model, hidden_states, timestep, self.cond)
        vu = _call(self.model, hidden_states, timestep, self.uncond)
        self.steps.append(Step(timestep.detach().clone(), hidden_states.detach().clone(), vc, vu))
        return (vc,)


@torch.no_grad()
def reference_trajectory(
    reference: DenoiseFn,
    text_encode: TextEncode,
    latent_shape: tuple[int, int, int, int],
    settings: ForcedSettings,
) -> ReferenceTrajectory:
    """Sample every prompt x seed with ``reference`` and record each step's inputs and velocities."""
    prompts = list(settings.prompts)
    cond, uncond = text_encode(prompts), text_encode([""] * len(prompts))
    steps: dict[int, list[Step]] = {}
    for seed in settings.seeds:
        rec = _Recorder(reference, cond, uncond)
        settings.sample(rec, cond, uncond, latent_shape, seed)
        steps[seed] = rec.steps
    return ReferenceTrajectory(settings, cond, uncond, steps)


@torch.no_grad()
def forced_errors(model: DenoiseFn, ref: ReferenceTrajectory) -> dict[str, Any]:
    """Relative errors of ``model`` along ``ref``: ``{"cond", "uncond", "guided"}`` (means over
    seeds and steps), ``per_seed`` (``{seed: {branch: mean over steps}}``) and ``per_step``
    (``[{"timestep", branch: mean over seeds}]``)."""
    g = ref.settings.guidance_scale
    errs: dict[str, np.ndarray] = {b: np.zeros((len(ref.steps), ref.settings.num_steps)) for b in BRANCHES}
    timesteps: list[float] = []
    for i, (_seed, steps) in enumerate(ref.steps.items()):
        for j, st in enumerate(steps):
            vc = _call(model, st.latents, st.timestep, ref.cond)
            vu = _call(model, st.latents, st.timestep, ref.uncond)
            errs["cond"][i, j] = relative_error(vc, st.v_cond)
            errs["uncond"][i, j] = relative_error(vu, st.v_uncond)
            errs["guided"][i, j] = relative_error(guided(vc, vu, g), guided(st.v_cond, st.v_uncond, g))
            if i == 0:
                timesteps.append(float(st.timestep.reshape(-1)[0]))
    out: dict[str, Any] = {b: float(errs[b].mean()) for b in BRANCHES}
    out["per_seed"] = {str(s): {b: float(errs[b][i].mean()) for b in BRANCHES} for i, s in enumerate(ref.steps)}
    out["per_step"] = [
        {"timestep": t, **{b: float(errs[b][:, j].mean()) for b in BRANCHES}} for j, t in enumerate(timesteps)
    ]
    return out


def compare_forced(
    models: dict[str, DenoiseFn],
    reference: DenoiseFn,
    text_encode: TextEncode,
    latent_shape: tuple[int, int, int, int],
    settings: ForcedSettings,
) -> dict[str, Any]:
    """``{"settings", "models": {name: forced_errors(...)}}`` with one reference trajectory."""
    ref = reference_trajectory(reference, text_encode, latent_shape, settings)
    return {"settings": settings.to_dict(), "models": {n: forced_errors(m, ref) for n, m in models.items()}}
