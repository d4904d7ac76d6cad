"""QVD W8A8 fake-quant baseline: the log quantizer, TDScore, and a calibrated tiny model."""

from __future__ import annotations

import torch

from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan
from trainer.qat.qvd import QVDConfig, QVDLinear, log_quant, qvd_quantize, td_score


def test_log_quant_levels():
    s = torch.tensor(1.0)
    x = torch.tensor([1.0, 0.5, -0.25, 0.3, 1e-9, 0.0])
    q = log_quant(x, s, alpha=1.0, bits=4)  # magnitudes 2^0 .. 2^-6, below flushes to 0
    assert q[:3].tolist() == [1.0, 0.5, -0.25]
    assert q[3].item() in (0.25, 0.5) and q[4].item() == 0.0 and q[5].item() == 0.0
    # alpha = 2: levels at 2^(-k/2), finer than log2.
    assert abs(log_quant(torch.tensor([0.7]), s, 2.0, 8).item() - 2**-0.5) < 1e-6


def test_td_score_prefers_discriminable_features():
    y = torch.eye(5) + 0.1
    assert td_score(y, y, 2) > 0.5
    assert td_score(torch.ones(5, 5), y, 2) < 1e-6


def test_qvd_w8a8_is_close_to_float():
    model = build_wan(TINY_WAN_CONFIG, seed=0)
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "hidden_states": torch.randn(2, 3, 4, 16, 16, generator=g),
            "timestep": torch.full((2,), t),
            "encoder_hidden_states": torch.randn(2, 16, 64, generator=g),
        }
        for t in (999.0, 700.0, 400.0, 100.0)
    ]
    qmodel, choices = qvd_quantize(model, batches, QVDConfig())
    layers = [m for m in qmodel.modules() if isinstance(m, QVDLinear)]
    assert len(layers) == len(choices) > 0
    assert any(m.mode == "log" or "uniform" == m.choice for m in layers)
    assert all(c.startswith(("log", "uniform", "scri")) for c in choices.values())
    b = batches[1]
    with torch.no_grad():
        ref = model(b["hidden_states"], b["timestep"], b["encoder_hidden_states"], return_dict=False)[0]
        out = qmodel(b["hidden_states"], b["timestep"], b["encoder_hidden_states"], return_dict=False)[0]
    assert float((out - ref).norm() / ref.norm()) < 0.05
