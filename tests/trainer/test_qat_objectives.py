"""CFG-aware distillation, the LR floor, Phi rank as a fraction of width, EfficientDM's LoRA LR."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from trainer.qat.data import Batch
from trainer.qat.loop import load_teacher_model, lr_factor, make_optimizer, train
from trainer.qat.methods import build_student
from trainer.qat.objectives import distillation_loss
from trainer.qat.rank_decay import RankDecaySchedule


class Toy(torch.nn.Module):
    """A denoiser whose output depends on the prompt (so cond and uncond differ) and on t."""

    def __init__(self, gain: float, bias: float) -> None:
        super().__init__()
        self.gain, self.bias = gain, bias

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, return_dict: bool = False) -> Any:
        scale = c.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
        out = self.gain * x * (1 + scale) + self.bias * (t.view(-1, 1, 1, 1, 1) / 1000) + scale
        return (out,)


def _batch() -> tuple[Batch, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 3, 2, 4, 4, generator=g)
    eps = torch.randn(3, 3, 2, 4, 4, generator=g)
    cond = torch.randn(3, 5, 6, generator=g) + 0.5
    null = torch.randn(5, 6, generator=g) - 0.5
    return Batch(x0, cond, eps, torch.tensor([0.2, 0.5, 0.9])), null


def test_distillation_weights_match_hand_computation() -> None:
    batch, null = _batch()
    teacher, student = Toy(1.0, 0.3), Toy(1.2, -0.1)
    x, t = batch.noisy, batch.timestep
    un = null.expand(3, *null.shape)
    tc, tu = teacher(x, t, batch.cond)[0], teacher(x, t, un)[0]
    sc, su = student(x, t, batch.cond)[0], student(x, t, un)[0]

    def stu(*a: Any) -> torch.Tensor:
        return student(*a)[0]

    g = 4.0
    e_c, e_u = F.mse_loss(sc, tc), F.mse_loss(su, tu)
    e_g = F.mse_loss(su + g * (sc - su), tu + g * (tc - tu))
    assert float(e_c) != pytest.approx(float(e_u), rel=1e-2)  # the branches really differ
    # (1, 0, 0): today's objective, one call on the batch's prompt
    assert float(distillation_loss(stu, teacher, batch)) == pytest.approx(float(e_c), rel=1e-6)
    assert float(distillation_loss(stu, teacher, batch, (1, 0, 0), g, null)) == pytest.approx(float(e_c), rel=1e-6)
    assert float(distillation_loss(stu, teacher, batch, (0, 1, 0), g, null)) == pytest.approx(float(e_u), rel=1e-6)
    assert float(distillation_loss(stu, teacher, batch, (0, 0, 1), g, null)) == pytest.approx(float(e_g), rel=1e-6)
    mixed = distillation_loss(stu, teacher, batch, (0.5, 2.0, 0.25), g, null)
    assert float(mixed) == pytest.approx(float(0.5 * e_c + 2.0 * e_u + 0.25 * e_g), rel=1e-6)
    # the guided term follows the guidance scale
    e_g2 = F.mse_loss(su + 2.0 * (sc - su), tu + 2.0 * (tc - tu))
    assert float(distillation_loss(stu, teacher, batch, (0, 0, 1), 2.0, null)) == pytest.approx(float(e_g2), rel=1e-6)
    with pytest.raises(ValueError, match="empty-prompt"):
        distillation_loss(stu, teacher, batch, (1, 1, 0), g, None)


def test_lr_floor() -> None:
    total, warm = 100, 0.1
    # min_frac 0 is the original cosine to 0
    for s in (10, 40, 99):
        p = (s - 10) / 90
        assert lr_factor(s, total, warm) == pytest.approx(0.5 * (1 + math.cos(math.pi * p)))
    assert lr_factor(99, total, warm, 0.1) >= 0.1
    assert lr_factor(99, total, warm, 0.1) == pytest.approx(0.1 + 0.9 * lr_factor(99, total, warm))
    assert lr_factor(10, total, warm, 0.1) == pytest.approx(1.0)
    assert lr_factor(5, total, warm, 0.1) == lr_factor(5, total, warm)  # warm-up unchanged


def test_layer_rank_schedule() -> None:
    sched = RankDecaySchedule(total_steps=70, r0=32)  # T_d = 10, six stages, Phi gone at 60
    # a layer at the schedule's r0 gets exactly the old gamma
    for step in (0, 5, 10, 33, 55):
        assert torch.equal(sched.gamma(step, 32), sched.gamma(step))
        assert sched.layer_rank(step, 32) == sched.rank_at(step)
    ranks = [sched.layer_rank(s * 10, 8) for s in range(7)]
    assert ranks == [8, 4, 2, 1, 1, 1, 0]
    g = sched.gamma(5, 8)  # stage 0 of a rank-8 layer: 4 kept, 4 decaying
    assert g.shape == (8,) and torch.all(g[:4] == 1) and torch.all((g[4:] > 0) & (g[4:] < 1))
    g = sched.gamma(35, 8)  # held at rank 1 (next stage also rank 1): no decay
    assert float(g[0]) == 1 and torch.all(g[1:] == 0)
    g = sched.gamma(55, 8)  # last stage: the single column decays
    assert 0 < float(g[0]) < 1 and torch.all(g[1:] == 0)


def test_phi_rank_frac_sizes_each_layer(make_config) -> None:
    cfg = make_config(method="qvgen", phi_rank=4, phi_rank_frac=0.25, steps=14, stop_after=1)
    assert cfg.layer_phi_rank(32, 128) == 8 and cfg.layer_phi_rank(64, 64) == 16
    assert make_config(phi_rank=4, steps=14).layer_phi_rank(32, 128) == 4  # unset: phi_rank everywhere
    res = train(cfg)
    shapes = {name: phi.L.shape[1] for name, phi in res.student.phi_items().items()}
    layers = res.student.layers()
    for name, r in shapes.items():
        assert r == max(1, round(0.25 * min(layers[name].out_features, layers[name].in_features)))
    assert len(set(shapes.values())) > 1  # the tiny model has layers of different widths


def test_cfg_aware_run_and_efficientdm_lora_lr(make_config, tmp_path) -> None:
    res = train(make_config(method="qdm", distill_weights=(1.0, 1.0, 0.5), steps=2, out_dir=str(tmp_path / "a")))
    assert all(math.isfinite(r["loss"]) for r in res.history)
    cfg = make_config(method="efficientdm", steps=1, lora_lr_step_factor=1e-3, out_dir=str(tmp_path / "b"))
    teacher, _ = load_teacher_model(cfg)
    student, _ = build_student(teacher, cfg.method, cfg.quant_config(), 0, cfg.lora_rank, 1)
    opt = make_optimizer(student, cfg)
    lora = [g for g in opt.param_groups if g["name"].startswith("lora:")]
    layers = student.layers()
    assert len(lora) == len(layers)
    for g in lora:
        layer = layers[g["name"][len("lora:") :]]
        assert g["base_lr"] == pytest.approx(1e-3 * float(layer.w_scale.detach().mean()))
        assert {id(p) for p in g["params"]} == {
            id(layer.parametrizations.weight[0].A),
            id(layer.parametrizations.weight[0].B),
        }
    in_lora = {id(p) for g in lora for p in g["params"]}
    others = [id(p) for g in opt.param_groups if not g["name"].startswith("lora:") for p in g["params"]]
    assert others and not in_lora & set(others)  # each LoRA tensor in exactly its layer's group
