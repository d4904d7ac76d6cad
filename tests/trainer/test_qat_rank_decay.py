"""The rank-decay schedule: stage boundaries, mid-stage gamma, halving 32 -> ... -> 1 -> 0."""

from __future__ import annotations

import math

import pytest

from trainer.qat.config import TrainConfig
from trainer.qat.rank_decay import RankDecaySchedule

# 128 steps, 1/16 final phase: 8 final steps, 120 decay steps, T_d = 20, Phi gone at step 120.
S = RankDecaySchedule(total_steps=128, r0=32, decay_lambda=0.5, final_phase_frac=0.0625)


def test_stage_structure():
    assert S.ranks == (32, 16, 8, 4, 2, 1)
    assert S.num_stages == 6 and S.stage_steps == 20 and S.phi_end == 120 and S.final_steps == 8
    assert [S.rank_at(s * 20) for s in range(7)] == [32, 16, 8, 4, 2, 1, 0]
    assert [s for s in range(128) if S.is_resvd_step(s)] == [20, 40, 60, 80, 100]
    assert S.rank_at(127) == 0


def test_gamma_at_stage_start_mid_stage_and_end():
    g = S.gamma(0)
    assert g[:16].tolist() == [1.0] * 16 and g[16:].tolist() == [1.0] * 16
    g = S.gamma(10)  # tau = T_d / 2 -> u = 0.5
    assert g[:16].tolist() == [1.0] * 16
    assert g[16:].tolist() == pytest.approx([0.5] * 16)
    u_last = 0.5 * (1 + math.cos(math.pi * 19 / 20))
    assert S.gamma(19)[16:].tolist() == pytest.approx([u_last] * 16)
    g = S.gamma(20)  # rank 16: 8 kept, 8 decaying (u = 1 at the boundary), 0 beyond
    assert g[:16].tolist() == [1.0] * 16 and g[16:].tolist() == [0.0] * 16
    g = S.gamma(45)  # rank 8, tau 5: u = (1 + cos(pi/4)) / 2
    assert g[:4].tolist() == [1.0] * 4
    assert g[4:8].tolist() == pytest.approx([0.5 * (1 + math.cos(math.pi / 4))] * 4)
    assert g[8:].tolist() == [0.0] * 24


def test_last_stage_decays_the_single_component_then_nothing():
    assert S.gamma(100)[0] == 1.0 and S.gamma(110)[0] == pytest.approx(0.5)
    assert S.gamma(110)[1:].sum() == 0
    assert S.gamma(120).sum() == 0 and S.gamma(127).sum() == 0


def test_default_recipe_final_phase_share():
    s = RankDecaySchedule(total_steps=300, r0=32, final_phase_frac=0.08)
    assert s.stage_steps == 46 and s.phi_end == 276
    assert s.final_steps / 300 >= 0.08


def test_too_few_steps_is_a_clear_error():
    with pytest.raises(ValueError, match="rank-decay stages"):
        RankDecaySchedule(total_steps=5, r0=32)
    with pytest.raises(ValueError, match="rank-decay stages"):
        TrainConfig(method="qvgen", steps=5, phi_rank=32)
