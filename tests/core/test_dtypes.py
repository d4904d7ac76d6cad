"""bf16 / fp16 across the PyTorch path: fake-quant, QAT-style backward, checkpoint and export inputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qvgen_export import QuantConfig
from qvgen_export.quant.modules import QUANTIZER_PARAMS, QuantContext, QuantLinear

LOW = (torch.bfloat16, torch.float16)


def _layer(seed: int = 0) -> QuantLinear:
    torch.manual_seed(seed)
    q = QuantLinear.from_linear(nn.Linear(64, 32), QuantConfig.preset("w4a4"), QuantContext())
    q.ctx.group = torch.tensor([3, 40])
    return q


@pytest.mark.parametrize("dtype", LOW)
def test_quant_linear_casts_keep_quantizer_params_float32(dtype):
    q = _layer()
    ref = {n: getattr(q, n).detach().clone() for n in QUANTIZER_PARAMS}
    q.to(dtype)
    assert q.weight.dtype == dtype and q.bias.dtype == dtype
    for n in QUANTIZER_PARAMS:  # float32 and bit-exact: moved, never round-tripped through dtype
        assert getattr(q, n).dtype == torch.float32 and torch.equal(getattr(q, n), ref[n])
    q.float()
    assert q.weight.dtype == torch.float32


@pytest.mark.parametrize("dtype", LOW)
def test_quant_linear_computes_in_float32_and_returns_input_dtype(dtype):
    q32 = _layer()
    ql = copy.deepcopy(q32).to(dtype)
    ql.ctx.group = q32.ctx.group
    x = torch.randn(2, 7, 64)
    y = ql(x.to(dtype))
    assert y.dtype == dtype
    # Same float32 math on the rounded weight and input: equal up to the output's own rounding.
    ref = copy.deepcopy(q32)
    with torch.no_grad():
        ref.weight.copy_(ql.weight.float())
        ref.bias.copy_(ql.bias.float())
    torch.testing.assert_close(y.float(), ref(x.to(dtype).float()).to(dtype).float(), rtol=0, atol=0)


def test_bf16_backward_reaches_weight_and_quantizer_params():
    q = _layer().to(torch.bfloat16)
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16, requires_grad=True)
    q(x).float().pow(2).mean().backward()
    assert q.weight.grad is not None and q.weight.grad.dtype == torch.bfloat16
    assert q.w_scale.grad is not None and q.w_scale.grad.dtype == torch.float32
    assert q.clip_upper.grad is not None and x.grad is not None and x.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", LOW)
def test_quantized_wan_in_low_precision(make_quantized, sample_inputs, dtype):
    q32 = make_quantized("w4a4")
    ql = copy.deepcopy(q32).to(dtype)
    assert ql.dtype == dtype
    x, t, e = sample_inputs
    with torch.no_grad():
        ref = q32(x, t, e, return_dict=False)[0]
        out = ql(x.to(dtype), t, e.to(dtype), return_dict=False)[0]
    assert out.dtype == dtype and torch.isfinite(out).all()
    cos = nn.functional.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0)
    assert cos > 0.98, cos


def test_bf16_model_saves_a_checkpoint_that_exports(make_quantized, sample_inputs, tmp_path):
    pytest.importorskip("onnxruntime")
    from qvgen_export.checkpoint import load_quantized_model, save_checkpoint
    from qvgen_export.export.pipeline import export_checkpoint
    from qvgen_export.runtime.backends import Denoiser, OrtBackend

    qb = make_quantized("w4a4").to(torch.bfloat16)
    ckpt = save_checkpoint(qb, tmp_path / "bf16.safetensors")
    loaded, _ = load_quantized_model(ckpt)
    layer = loaded.quant_linears()["blocks.0.attn1.to_q"]
    assert torch.equal(layer.codes(), qb.quant_linears()["blocks.0.attn1.to_q"].codes())
    export_checkpoint(ckpt, tmp_path / "onnx", target="onnx")
    den = Denoiser(OrtBackend(tmp_path / "onnx"))
    x, t, e = sample_inputs
    y = den(x.bfloat16(), t, e.bfloat16(), return_dict=False)[0]  # a bf16 pipeline's inputs
    assert y.dtype == torch.bfloat16
    with torch.no_grad():
        ref = loaded.float()(x.bfloat16().float(), t, e.bfloat16().float(), return_dict=False)[0]
    torch.testing.assert_close(y.float(), ref.bfloat16().float(), rtol=0.02, atol=0.02)
