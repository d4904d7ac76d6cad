"""Every method runs a few steps of the shared loop with a finite loss; method-specific invariants."""

from __future__ import annotations

import math

import pytest
import torch

from qvgen_export.quant import functional as QF
from trainer.qat.config import Method, TrainConfig
from trainer.qat.loop import train
from trainer.qat.methods import build_student


@pytest.mark.parametrize(
    ("method", "scheme"),
    [
        ("qvgen", "w4a4"),
        ("qvgen", "w3a3"),
        ("qvgen_keep_phi", "w4a4"),
        ("lsq", "w4a4"),
        ("qdm", "w3a3"),
        ("efficientdm", "w4a4"),
    ],
)
def test_method_runs_with_finite_loss(make_config, tiny_teacher, method, scheme):
    cfg = make_config(method=method, scheme=scheme, steps=3, save_every=10)
    res = train(cfg, *tiny_teacher)
    assert res.completed and len(res.history) == 3
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in res.history)
    layers = res.qmodel.quant_linears()
    assert layers and all(layer.config.weight_bits == int(scheme[1]) for layer in layers.values())
    if method == "qvgen_keep_phi":
        assert res.checkpoint is None
        assert all(layer.weight_delta is not None for layer in layers.values())
        assert all(r["rank"] == 2 for r in res.history)
    else:
        assert res.checkpoint is not None and res.checkpoint.is_file()
        assert all(layer.weight_delta is None for layer in layers.values())
    if method == "qvgen":
        kinds = [e["event"] for e in res.events]
        assert kinds == ["phi_init", "resvd", "phi_deleted"]
        assert [r["rank"] for r in res.history] == [2, 1, 0]
    if method == "lsq":
        assert all(layer.clip_lower.numel() == 1 for layer in layers.values())  # not timestep-aware


def test_efficientdm_trains_lora_not_w(make_config, tiny_teacher):
    teacher, te = tiny_teacher
    cfg = make_config(method="efficientdm", steps=2, save_every=10, lr=1e-2)
    res = train(cfg, teacher, te)
    # The LoRA was merged into W: W moved away from the teacher's weight, only by a rank-4 term.
    name, layer = next(iter(res.qmodel.quant_linears().items()))
    w0 = teacher.get_submodule(name).weight.detach()
    diff = layer.weight.detach() - w0
    assert diff.abs().max() > 0
    assert torch.linalg.matrix_rank(diff, atol=1e-6) <= 4
    # Non-quantized float parameters stay frozen.
    for key, t in teacher.state_dict().items():
        if key.startswith("patch_embedding"):
            torch.testing.assert_close(res.qmodel.transformer.state_dict()[key], t)


def test_lsq_gradient_scaling_is_applied(tiny_teacher):
    teacher, _ = tiny_teacher
    qcfg = TrainConfig(method="qdm", teacher="random").quant_config()
    student, _ = build_student(teacher, Method.QDM, qcfg, 0, 4, 0)
    _name, layer = next(iter(student.layers().items()))
    assert all(q.lsq_grad_scaling for q in student.layers().values())
    layer.ctx.group = torch.tensor([3])
    x = torch.randn(1, 5, layer.in_features)

    def grads(flag: bool) -> torch.Tensor:
        layer.lsq_grad_scaling = flag
        layer.w_scale.grad = None
        layer(x).square().sum().backward()
        return layer.w_scale.grad.clone()

    g_scaled, g_plain = grads(True), grads(False)
    factor = QF.lsq_grad_factor(layer.in_features, layer.config.weight_bits)
    torch.testing.assert_close(g_scaled, g_plain * factor, rtol=1e-4, atol=1e-10)


def test_excluded_layers_stay_float(make_config, tiny_teacher):
    from torch import nn

    res = train(make_config(method="qdm", steps=1, save_every=10, exclude=["proj_out", "*.ffn.*"]), *tiny_teacher)
    names = set(res.qmodel.quant_linears())
    assert "proj_out" not in names and not any(".ffn." in n for n in names) and names
    assert type(res.qmodel.transformer.proj_out) is nn.Linear
