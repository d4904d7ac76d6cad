"""Training objectives on one noisy batch.

- distillation (QVGen, Q-DM, EfficientDM): MSE between the student's and the frozen float
  teacher's velocity on exactly the same noisy latent and timestep. With the default weights
  ``(1, 0, 0)`` this is ``mean((v_student - v_teacher)^2)`` on the batch's (possibly dropped)
  prompt, one call per sample. CFG-aware weights ``(w_c, w_u, w_g)`` run both branches per sample
  (the batch's prompt and the empty prompt, in one call of twice the batch) and add the error of
  the CFG-guided output ``v_u + g (v_c - v_u)``: sampling uses the guided velocity, which
  multiplies the unconditional branch's error by ``g - 1``, while the plain objective sees the
  empty prompt only through caption dropout.
- flow matching (LSQ): ``mean((v_student - (eps - x0))^2)``, no teacher.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .data import Batch

PLAIN_WEIGHTS = (1.0, 0.0, 0.0)


def guided(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance as the sampler applies it (``WanPipeline``)."""
    return v_uncond + scale * (v_cond - v_uncond)


def distillation_loss(
    student: Callable[..., torch.Tensor],
    teacher: torch.nn.Module,
    batch: Batch,
    weights: Sequence[float] = PLAIN_WEIGHTS,
    guidance: float = 4.0,
    null: torch.Tensor | None = None,
) -> torch.Tensor:
    """``w_c MSE(cond) + w_u MSE(uncond) + w_g MSE(guided)`` against the teacher.

    Args:
        weights: ``(w_c, w_u, w_g)``; ``(1, 0, 0)`` is the original single-branch objective.
        guidance: CFG scale ``g`` of the guided term.
        null: the empty-prompt embedding ``[L, D]``; needed unless ``w_u = w_g = 0``.
    """
    w_c, w_u, w_g = (float(w) for w in weights)
    x, t = batch.noisy, batch.timestep
    if w_u == 0.0 and w_g == 0.0:
        with torch.no_grad():
            target = teacher(x, t, batch.cond, return_dict=False)[0].float()
        return w_c * F.mse_loss(student(x, t, batch.cond).float(), target)
    if null is None:
        raise ValueError("CFG-aware distillation needs the empty-prompt embedding (null)")
    n = x.shape[0]
    uncond = null.to(batch.cond.device, batch.cond.dtype).expand(n, *null.shape)
    # One call on [cond; uncond]: per-sample timesteps and per-token activation quantization make
    # the halves independent, and one call of 2B is cheaper than two of B.
    xx, tt, cc = torch.cat([x, x]), torch.cat([t, t]), torch.cat([batch.cond, uncond])
    with torch.no_grad():
        tc, tu = teacher(xx, tt, cc, return_dict=False)[0].float().split(n)
    sc, su = student(xx, tt, cc).float().split(n)
    loss = sc.new_zeros(())
    if w_c:
        loss = loss + w_c * F.mse_loss(sc, tc)
    if w_u:
        loss = loss + w_u * F.mse_loss(su, tu)
    if w_g:
        loss = loss + w_g * F.mse_loss(guided(sc, su, guidance), guided(tc, tu, guidance))
    return loss


def flow_matching_loss(student: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor:
    return F.mse_loss(student(batch.noisy, batch.timestep, batch.cond).float(), batch.velocity.float())
