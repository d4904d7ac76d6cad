"""The trainer's output is a Phi-free checkpoint whose fake-quant output equals the trained model's."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from qvgen_export.checkpoint import load_quantized_model, save_checkpoint
from trainer.qat.loop import train


def test_phi_free_checkpoint_matches_trained_model(make_config, tiny_teacher):
    res = train(make_config(method="qvgen", steps=3, save_every=10), *tiny_teacher)
    with safe_open(str(res.checkpoint), framework="pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if "phi" in k.lower() or k.endswith((".L", ".R", ".gamma"))]
    assert len(res.student.phis) == 0
    loaded, info = load_quantized_model(res.checkpoint)
    assert info.extra["method"] == "qvgen"
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 16, 16, generator=g)
    t = torch.tensor([900.0, 37.0])
    e = torch.randn(2, 16, 64, generator=g)
    with torch.no_grad():
        ours = res.qmodel(x, t, e, return_dict=False)[0]
        theirs = loaded(x, t, e, return_dict=False)[0]
    torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=1e-6)
    for name, layer in res.qmodel.quant_linears().items():
        assert torch.equal(layer.codes(), loaded.quant_linears()[name].codes())


def test_keep_phi_model_cannot_be_saved(make_config, tiny_teacher):
    res = train(make_config(method="qvgen_keep_phi", steps=1, save_every=10), *tiny_teacher)
    with pytest.raises(ValueError, match="weight delta"):
        save_checkpoint(res.qmodel, res.student and make_config().out_dir + "/x.safetensors")
