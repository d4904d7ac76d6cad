"""The rank-decay schedule that shrinks Phi to nothing (QVGen section 3.3, pinned in qvgen-method.md).

Stages of ``T_d`` steps; stage ``s`` has rank ``r_s = r0 / 2^s`` (32 -> 16 -> 8 -> 4 -> 2 -> 1,
six stages for r0 = 32). Within a stage, with ``tau = step - s * T_d`` and
``u = (1 + cos(pi * tau / T_d)) / 2``, ``gamma = 1`` on the first ``r - ceil(lambda * r)`` columns
(``r/2`` for lambda = 1/2; the next stage's rank), ``u`` on the rest up to ``r``, 0 beyond. At the start of every stage
after the first, the surviving ``L[:, :r] @ R[:r]`` is re-decomposed by SVD. After the last stage
(r = 1 decays with u) Phi is deleted, and a final phase of ``final_phase_frac`` of the steps trains
without Phi. Everything here is a pure function of the step, which is what makes resume exact.
"""

from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass(frozen=True)
class RankDecaySchedule:
    total_steps: int
    r0: int = 32
    decay_lambda: float = 0.5
    final_phase_frac: float = 0.08

    def __post_init__(self) -> None:
        if self.r0 < 1:
            raise ValueError(f"r0 must be positive, got {self.r0}")
        if not 0.0 < self.decay_lambda <= 1.0:
            raise ValueError(f"decay_lambda must be in (0, 1], got {self.decay_lambda}")
        if self.stage_steps < 1:
            raise ValueError(
                f"{self.total_steps} steps leave no room for {self.num_stages} rank-decay stages "
                f"with a final phase of {self.final_phase_frac:.0%}"
            )

    @property
    def ranks(self) -> tuple[int, ...]:
        """Rank of each stage: ``r0``, then the kept columns of the previous stage (32, 16, ..., 1)."""
        out, r = [], self.r0
        while r > 0:
            out.append(r)
            r = self.num_kept(r)
        return tuple(out)

    @property
    def num_stages(self) -> int:
        return len(self.ranks)

    @property
    def final_steps(self) -> int:
        # At least final_phase_frac of the run; the rounding remainder of T_d goes here too.
        return self.total_steps - self.num_stages * self.stage_steps

    @property
    def stage_steps(self) -> int:
        """``T_d``: the steps before the final phase, split into equal stages."""
        decay_steps = self.total_steps - math.ceil(self.total_steps * self.final_phase_frac)
        return decay_steps // self.num_stages

    @property
    def phi_end(self) -> int:
        """First step without Phi (Phi is deleted before this step runs)."""
        return self.num_stages * self.stage_steps

    def stage(self, step: int) -> int:
        """Stage index of ``step``; ``num_stages`` in the final phase."""
        return min(step // self.stage_steps, self.num_stages)

    def rank_at(self, step: int) -> int:
        s = self.stage(step)
        return 0 if s >= self.num_stages else self.ranks[s]

    def is_resvd_step(self, step: int) -> bool:
        """Steps at which the rank halves and the kept product is re-decomposed."""
        return 0 < step < self.phi_end and step % self.stage_steps == 0

    def decay_factor(self, step: int) -> float:
        """``u`` at ``step`` (1 at a stage start, falling towards 0 at its end)."""
        tau = step % self.stage_steps
        return 0.5 * (1.0 + math.cos(math.pi * tau / self.stage_steps))

    def num_kept(self, rank: int) -> int:
        """Columns with gamma = 1 in a stage of rank ``rank`` (the rest decay)."""
        return rank - math.ceil(self.decay_lambda * rank)

    def layer_rank(self, step: int, layer_r0: int) -> int:
        """Rank at ``step`` of a layer whose Phi starts at ``layer_r0`` columns (``phi_rank_frac``):
        the schedule's ranks scaled by ``layer_r0 / r0``, rounded up (so >= 1 until Phi is gone)."""
        r = self.rank_at(step)
        return r if layer_r0 == self.r0 or r == 0 else math.ceil(layer_r0 * r / self.r0)

    def _layer_kept(self, step: int, layer_r0: int) -> int:
        s = self.stage(step)
        if layer_r0 == self.r0:
            return self.num_kept(self.ranks[s])
        nxt = self.ranks[s + 1] if s + 1 < self.num_stages else 0
        return math.ceil(layer_r0 * nxt / self.r0)

    def gamma(self, step: int, layer_r0: int | None = None) -> torch.Tensor:
        """Decay factors ``[layer_r0]`` (default ``[r0]``) at ``step`` (all zero once Phi is gone).

        A scaled layer keeps its next stage's rank at 1 and decays the rest with ``u``; when the
        next stage has the same rank (a narrow layer held at rank 1) nothing decays this stage.
        """
        n = self.r0 if layer_r0 is None else layer_r0
        g = torch.zeros(n)
        r = self.layer_rank(step, n)
        if r == 0:
            return g
        k = self._layer_kept(step, n)
        g[:k] = 1.0
        g[k:r] = self.decay_factor(step)
        return g
