"""A loaded checkpoint holds packed codes, and computes what the latent-weight load computes."""

from __future__ import annotations

import pytest
import torch

from qvgen_export.checkpoint import format as ckpt_format
from qvgen_export.checkpoint import load_quantized_model, save_checkpoint
from qvgen_export.quant.modules import PackedQuantLinear, QuantLinear

SCHEMES = [("w4a4", {}), ("w3a3", {}), ("w8a8", {}), ("w4a4", {"weight_granularity": "per_group", "group_size": 32})]


def _outputs(model, inputs):
    with torch.no_grad():
        return model(*inputs, return_dict=False)[0]


@pytest.mark.parametrize("scheme,overrides", SCHEMES)
def test_packed_load_equals_latent_load_bit_for_bit(tmp_path, make_quantized, sample_inputs, scheme, overrides):
    path = save_checkpoint(make_quantized(scheme, **overrides), tmp_path / "m.safetensors")
    packed, _ = load_quantized_model(path)
    latent, _ = load_quantized_model(path, latent_weights=True)
    assert torch.equal(_outputs(packed, sample_inputs), _outputs(latent, sample_inputs))
    for name, lat in latent.quant_linears().items():
        pk = packed.quant_linears()[name]
        assert type(pk) is PackedQuantLinear and type(lat) is QuantLinear
        assert torch.equal(pk.codes(), lat.codes())
        assert torch.equal(pk.quantized_weight(), lat.quantized_weight())
        assert torch.equal(pk.weight, lat.weight)  # the dequantized weight the latent load stores
        # no float copy of the weight: the packed codes (as in the file) and the small qparams
        sd = pk.state_dict()
        assert "weight" not in sd and sd["qweight"].dtype == torch.uint8
        assert sd["qweight"].nbytes * 4 <= lat.weight.nbytes  # a byte per code at most, not 4


def test_packed_model_holds_the_checkpoint_not_float_weights(w4a4_ckpt):
    packed, info = load_quantized_model(w4a4_ckpt)
    latent, _ = load_quantized_model(w4a4_ckpt, latent_weights=True)

    def nbytes(m):
        return sum(t.numel() * t.element_size() for t in m.state_dict().values())

    weights = sum(e["in_features"] * e["out_features"] for e in info.layers)
    # 4-bit codes save 3.5 bytes per weight over float32; nothing else changes
    assert nbytes(latent) - nbytes(packed) == weights * 4 - weights // 2


def test_consumers_of_a_loaded_model_see_the_same_layers(w4a4_ckpt, sample_inputs):
    from qvgen_export.export.export_linear import ExportQuantLinear
    from qvgen_export.runtime.torch_int4 import Int4Linear

    packed, _ = load_quantized_model(w4a4_ckpt)
    latent, _ = load_quantized_model(w4a4_ckpt, latent_weights=True)
    for name, lat in list(latent.quant_linears().items())[:4]:
        pk = packed.quant_linears()[name]
        for form in (ExportQuantLinear, Int4Linear.from_quant_linear):
            a, b = form(pk).state_dict(), form(lat).state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_packed_model_cast_and_moved_keeps_its_codes(w4a4_ckpt, sample_inputs):
    packed, _ = load_quantized_model(w4a4_ckpt)
    ref = _outputs(packed, sample_inputs)
    layer = next(iter(packed.quant_linears().values()))
    codes = layer.codes()
    packed.to(torch.bfloat16)
    assert layer.qweight.dtype == torch.uint8 and torch.equal(layer.codes(), codes)
    assert layer.w_scale.dtype == torch.float32 and packed.dtype == torch.bfloat16
    x, t, e = sample_inputs
    out = _outputs(packed, (x.bfloat16(), t, e.bfloat16()))
    assert out.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0) > 0.98
    packed.float()
    assert torch.equal(layer.codes(), codes)


def test_loading_unmaps_the_file_as_it_goes(w4a4_ckpt, sample_inputs, monkeypatch):
    released = []
    original = ckpt_format.CheckpointTensors.release

    def release(self):
        released.append(1)
        original(self)

    monkeypatch.setattr(ckpt_format.CheckpointTensors, "release", release)
    monkeypatch.setattr(ckpt_format, "_RELEASE_BYTES", 1)  # unmap after every layer / tensor
    often, info = load_quantized_model(w4a4_ckpt)
    assert len(released) > len(info.layers)  # reads after an unmap reopen the file
    monkeypatch.undo()
    once, _ = load_quantized_model(w4a4_ckpt)
    assert torch.equal(_outputs(often, sample_inputs), _outputs(once, sample_inputs))
