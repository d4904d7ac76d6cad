"""Training objectives on one noisy batch.

- distillation (QVGen, Q-DM, EfficientDM): ``mean((v_student - v_teacher)^2)`` with the frozen
  float teacher called on exactly the same noisy latent, timestep and (possibly dropped) prompt;
- flow matching (LSQ): ``mean((v_student - (eps - x0))^2)``, no teacher.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .data import Batch


def distillation_loss(student: Callable[..., torch.Tensor], teacher: torch.nn.Module, batch: Batch) -> torch.Tensor:
    x, t = batch.noisy, batch.timestep
    with torch.no_grad():
        target = teacher(x, t, batch.cond, return_dict=False)[0].float()
    return F.mse_loss(student(x, t, batch.cond).float(), target)


def flow_matching_loss(student: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor:
    return F.mse_loss(student(batch.noisy, batch.timestep, batch.cond).float(), batch.velocity.float())
