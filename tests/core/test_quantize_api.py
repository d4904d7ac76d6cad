"""``quantize(model, config, forward_loop)``: a new model, the input untouched; ``ptq_quantize``
in place, leaving the original object working."""

from __future__ import annotations

import copy

import pytest
import torch

import qvgen_export
from qvgen_export import QuantConfig
from qvgen_export.quant.modules import QuantizedWan, QuantLinear
from qvgen_export.quant.ptq import ptq_quantize, quantize


def _run(m, inputs):
    with torch.no_grad():
        return m(*inputs, return_dict=False)[0]


def test_quantize_returns_new_model_and_leaves_input_untouched(float_model, sample_inputs):
    before = {k: v.clone() for k, v in float_model.state_dict().items()}
    ref = _run(float_model, sample_inputs)
    q = qvgen_export.quantize(float_model, "w4a4")
    assert isinstance(q, QuantizedWan) and q.transformer is not float_model
    assert not any(isinstance(m, QuantLinear) for m in float_model.modules())
    after = float_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(_run(float_model, sample_inputs), ref)
    assert not torch.equal(_run(q, sample_inputs), ref)  # and the new one is quantized
    # Same result as the in-place path on a copy.
    assert torch.equal(_run(q, sample_inputs), _run(ptq_quantize(copy.deepcopy(float_model), q.qconfig), sample_inputs))


def test_forward_loop_calibrates_clips(float_model, sample_inputs):
    calls = []

    def loop(m):
        calls.append(m)
        _run(m, sample_inputs)

    plain = quantize(float_model, QuantConfig.preset("w4a4"))
    q = quantize(float_model, QuantConfig.preset("w4a4"), forward_loop=loop)
    assert len(calls) == 1 and calls[0] is q
    layer, plain_layer = q.quant_linears()["blocks.0.ffn.net.2"], plain.quant_linears()["blocks.0.ffn.net.2"]
    # the two timestep groups of sample_inputs (t=937, 41) were calibrated; the others kept the init
    groups = {46, 2}
    changed = {i for i in range(layer.clip_upper.numel()) if layer.clip_upper[i] != plain_layer.clip_upper[i]}
    assert changed and changed <= groups


def test_config_forms(float_model, sample_inputs):
    cfg = QuantConfig.preset("w3a3")
    outs = [_run(quantize(float_model, c), sample_inputs) for c in (cfg, "w3a3", cfg.to_dict())]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    with pytest.raises(TypeError, match="QuantConfig"):
        quantize(float_model, 4)


def test_forward_loop_that_never_runs_the_model_is_an_error(float_model):
    with pytest.raises(ValueError, match="never called"):
        quantize(float_model, "w4a4", forward_loop=lambda m: None)


def test_quantize_refuses_a_quantized_model(make_quantized):
    with pytest.raises(ValueError, match="already quantized"):
        quantize(make_quantized("w4a4"), "w4a4")


def test_ptq_quantize_in_place_leaves_the_original_callable(float_model, sample_inputs):
    model = copy.deepcopy(float_model)
    q = ptq_quantize(model, QuantConfig.preset("w4a4"), progress=False)
    assert q.transformer is model
    # Called directly (as a pipeline holding it would), the original object runs the quantized model.
    assert torch.equal(_run(model, sample_inputs), _run(q, sample_inputs))
