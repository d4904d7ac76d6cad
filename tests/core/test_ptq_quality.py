import torch
import torch.nn.functional as F

from qvgen_export.quant.modules import QuantLinear
from qvgen_export.quant.ptq import calibrate_act_clips


def _cos(a, b):
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_more_bits_track_the_float_model_better(float_model, make_quantized, sample_inputs):
    with torch.no_grad():
        ref = float_model(*sample_inputs, return_dict=False)[0]
        cos = {s: _cos(make_quantized(s)(*sample_inputs, return_dict=False)[0], ref) for s in ("w8a8", "w4a4", "w3a3")}
    assert cos["w8a8"] > cos["w4a4"] > cos["w3a3"] > 0.5, cos
    assert cos["w8a8"] > 0.995


def test_every_linear_is_quantized_by_default(make_quantized):
    q = make_quantized()
    assert not any(type(m) is torch.nn.Linear for m in q.transformer.modules())
    assert sum(isinstance(m, QuantLinear) for m in q.transformer.modules()) == 26


def test_exclude_patterns_keep_layers_float(make_quantized):
    q = make_quantized(exclude=("proj_out", "condition_embedder.*"))
    names = set(q.quant_linears())
    assert "proj_out" not in names and not any(n.startswith("condition_embedder") for n in names)
    assert type(q.transformer.proj_out) is torch.nn.Linear


def test_calibration_does_not_worsen_layer_error(make_quantized, sample_inputs):
    q = make_quantized()
    layer = q.quant_linears()["blocks.0.ffn.net.2"]
    seen = {}

    def grab(mod, args):
        seen.setdefault("x", (args[0].detach(), mod.ctx.group.clone()))

    h = layer.register_forward_pre_hook(grab)
    with torch.no_grad():
        q(*sample_inputs, return_dict=False)
    h.remove()
    x, group = seen["x"]

    def err():
        layer.ctx.group = group
        with torch.no_grad():
            return (layer(x) - F.linear(x, layer.weight, layer.bias)).pow(2).mean().item()

    before = err()
    batch = dict(zip(("hidden_states", "timestep", "encoder_hidden_states"), sample_inputs))
    calibrate_act_clips(q, [batch], progress=False)
    after = err()
    # strictly better: a calibration that changed nothing (or picked the initial clip) fails here
    assert after < before * 0.999, (before, after)


def test_weight_delta_never_enters_the_state_dict(make_quantized):
    q = make_quantized()
    layer = q.quant_linears()["proj_out"]

    class Delta(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lr = torch.nn.Parameter(torch.zeros(layer.out_features, layer.in_features))

        def forward(self):
            return self.lr

    layer.weight_delta = Delta()
    assert not any(k.endswith(".lr") for k in q.state_dict())
    assert layer.weight_delta is not None
