"""The channel-spread testbed: function-preserving, deterministic, and it steepens W - Qw(W) of to_v."""

from __future__ import annotations

import copy

import pytest
import torch

from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan
from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.ptq import ptq_quantize
from qvgen_tinyworld.channel_spread import ChannelSpread, apply_channel_spread, attention_modules, channel_spread_of
from qvgen_tinyworld.teacher import ASSET_PATH, latent_shape, load_teacher
from trainer.qat.phi import error_spectrum, rank_energy_share, small_singular_share

needs_asset = pytest.mark.skipif(not ASSET_PATH.is_file(), reason="embedded teacher not built yet")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def teacher():
    if not ASSET_PATH.is_file():
        pytest.skip("embedded teacher not built yet")
    return load_teacher()


@needs_asset
def test_float_function_preserved(teacher) -> None:
    model, te, info = teacher
    spread = copy.deepcopy(model)
    record = apply_channel_spread(spread)
    # 4 blocks x (attn1, attn2), 8 channels each, factors around 32
    assert len(record) == 8 and all(len(r["channels"]) == 8 for r in record.values())
    # The weights did change (a no-op would pass the equality below trivially).
    v0, v1 = model.blocks[0].attn1.to_v.weight, spread.blocks[0].attn1.to_v.weight
    rows = record["blocks.0.attn1"]["channels"]
    assert (v1[rows].norm(dim=1) / v0[rows].norm(dim=1)).min() > 5
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *latent_shape(info), generator=g)
    t = torch.tensor([150.0, 850.0])
    cond = te.encode(["a red circle moving left", ""])
    with torch.no_grad():
        a = model(x, t, cond, return_dict=False)[0]
        b = spread(x, t, cond, return_dict=False)[0]
    assert float((a - b).norm() / a.norm()) < 1e-5


def test_deterministic_from_seed() -> None:
    base = build_wan(TINY_WAN_CONFIG, seed=0)
    runs = []
    for seed in (3, 3, 4):
        m = copy.deepcopy(base)
        runs.append((apply_channel_spread(m, ChannelSpread(channels=4, factor=16.0, seed=seed)), m.state_dict()))
    (r0, s0), (r1, s1), (r2, _) = runs
    assert r0 == r1 and all(torch.equal(s0[k], s1[k]) for k in s0)
    assert r0 != r2
    # Only V's rows/bias and O's columns change; log_sigma 0 gives every channel exactly `factor`.
    changed = {k for k in s0 if not torch.equal(s0[k], base.state_dict()[k])}
    assert changed and all(k.endswith(("to_v.weight", "to_v.bias", "to_out.0.weight")) for k in changed)
    m = copy.deepcopy(base)
    rec = apply_channel_spread(m, ChannelSpread(channels=2, factor=8.0, log_sigma=0.0))
    assert all(f == 8.0 for r in rec.values() for f in r["factors"])
    assert channel_spread_of(m) == ChannelSpread(channels=2, factor=8.0, log_sigma=0.0).to_dict()


def test_refusals() -> None:
    m = build_wan(TINY_WAN_CONFIG, seed=0)
    with pytest.raises(ValueError, match="channels requested"):
        apply_channel_spread(copy.deepcopy(m), ChannelSpread(channels=65))
    with pytest.raises(ValueError, match="channels must be"):
        ChannelSpread(channels=0)
    apply_channel_spread(m)
    with pytest.raises(ValueError, match="already carries"):
        apply_channel_spread(m)
    i2v = build_wan(TINY_WAN_CONFIG, seed=0)
    i2v.blocks[0].attn2.add_k_proj = torch.nn.Linear(64, 64)  # an I2V image-context K/V
    with pytest.raises(ValueError, match="added K/V"):
        apply_channel_spread(i2v)
    q = ptq_quantize(build_wan(TINY_WAN_CONFIG, seed=0), QuantConfig.preset("w4a4"), progress=False)
    with pytest.raises(TypeError, match="nn.Linear"):
        apply_channel_spread(q.transformer)
    assert len(attention_modules(m)) == 4


@needs_asset
def test_to_v_error_spectrum_steepens(teacher) -> None:
    """The paper's statistic on the spread rows' layers: 0% before, ~75% (8 of 32 above s_1/14) after."""
    model = teacher[0]
    spread = copy.deepcopy(model)
    apply_channel_spread(spread)
    cfg = QuantConfig.preset("w4a4", include=("*.to_v",))
    stats = {}
    for when, m in (("before", model), ("after", spread)):
        layers = ptq_quantize(copy.deepcopy(m), cfg, progress=False).quant_linears()
        assert len(layers) == 8
        spectra = [error_spectrum(layer) for layer in layers.values()]
        stats[when] = (
            [small_singular_share(s[:32]) for s in spectra],
            [rank_energy_share(s, 32) for s in spectra],
        )
    small_before, energy_before = stats["before"]
    small_after, energy_after = stats["after"]
    assert max(small_before) == 0.0 and max(energy_before) < 0.75
    assert min(small_after) >= 0.7 and min(energy_after) > 0.95
