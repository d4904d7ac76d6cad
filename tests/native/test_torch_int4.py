"""The torch-int4 runtime backend (Int4Linear) versus the fake-quant QuantLinear, on CPU (CI)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from qvgen_export.quant import functional as QF
from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.modules import QuantContext, QuantLinear
from qvgen_export.quant.packing import pack_codes
from qvgen_export.runtime.torch_int4 import Int4Linear, convert_to_int4


def _quant_linear(k: int, n: int, config: QuantConfig, bias: bool = True, seed: int = 0) -> QuantLinear:
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    q = QuantLinear.from_linear(lin, config, QuantContext(), init=True)
    with torch.no_grad():  # distinct clip logits per timestep group
        q.clip_lower.copy_(torch.linspace(-1.0, 3.0, config.timestep_groups))
        q.clip_upper.copy_(torch.linspace(2.0, 0.5, config.timestep_groups))
    return q


@pytest.mark.parametrize("scheme", ["w4a4", "w3a3"])
@pytest.mark.parametrize("shape", [(64, 48), (67, 33), (130, 20)])
def test_int4_linear_matches_quant_linear(ref_ops, scheme: str, shape: tuple[int, int]) -> None:
    k, n = shape
    cfg = QuantConfig.preset(scheme)
    q = _quant_linear(k, n, cfg)
    il = Int4Linear.from_quant_linear(q)
    assert il.ctx is q.ctx
    x = torch.randn(3, 29, k) * 2
    with torch.no_grad():
        q.ctx.group = torch.tensor([0, 17, 49])
        y_ref, y = q(x), il(x)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5 * float(y_ref.abs().max()))
        # Activation codes are identical to the fake quantizer's (the GEMM is exact in integers).
        lo, hi = q.act_clip()
        _qx, s, z, _ = ref_ops.act_quant(x.reshape(-1, k), lo.float(), hi.float(), cfg.act_bits)
        xs = s.reshape(3, 29, 1)
        xz = z.reshape(3, 29, 1).float()
        codes = QF.act_codes(x, xs, xz, cfg.act_qmax)
        lo3, hi3 = QF.act_range(x, lo, hi)
        scale_ref, zp_ref = QF.act_qparams(lo3, hi3, cfg.act_qmax)
        assert torch.equal(xs, scale_ref) and torch.equal(xz, zp_ref)
        assert codes.max() <= cfg.act_qmax
        # bf16 activations: same as QuantLinear up to one bf16 rounding step.
        xb = x.bfloat16()
        torch.testing.assert_close(il(xb).float(), q(xb).float(), rtol=1e-2, atol=1e-2 * float(y_ref.abs().max()))
        q.ctx.group = None


def test_int4_linear_from_checkpoint_codes(ref_ops) -> None:
    cfg = QuantConfig()
    q = _quant_linear(67, 21, cfg, bias=False)
    packed = pack_codes(q.codes(), cfg.weight_bits)  # the checkpoint layout [N, ceil(K/2)]
    il = Int4Linear(67, 21, packed, q.w_scale, q.w_zero, None, q.clip_lower, q.clip_upper, cfg, q.ctx)
    assert il.qweight.shape == (21, 48) and il.bias is None
    q.ctx.group = torch.tensor([5])
    x = torch.randn(1, 10, 67)
    with torch.no_grad():
        torch.testing.assert_close(il(x), q(x), rtol=1e-5, atol=1e-5)
    q.ctx.group = None
    with pytest.raises(RuntimeError, match="timestep group"):
        il(x)


def test_per_group_weights_are_rejected() -> None:
    cfg = QuantConfig(weight_granularity="per_group", group_size=16)
    q = QuantLinear(64, 8, True, cfg, QuantContext())
    with pytest.raises(NotImplementedError, match="per-channel"):
        Int4Linear.from_quant_linear(q)


def test_convert_tiny_wan(ref_ops) -> None:
    """End to end on the tiny Wan: every QuantLinear swapped, output statistically identical."""
    from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan
    from qvgen_export.quant.modules import QuantizedWan

    cfg = QuantConfig()
    qm = QuantizedWan.from_float(build_wan(TINY_WAN_CONFIG, seed=0), cfg, init=False)
    with torch.no_grad():  # cheap init instead of the MSE search: min/max ranges
        for m in qm.quant_linears().values():
            lo, hi = m.weight.amin(1, keepdim=True), m.weight.amax(1, keepdim=True)
            m.w_scale.copy_((hi - lo).clamp_min(1e-8) / cfg.weight_qmax)
            m.w_zero.copy_(-lo / m.w_scale)
    n_linear = len(qm.quant_linears())
    im = copy.deepcopy(qm)
    names = convert_to_int4(im)
    assert len(names) == n_linear and not any(isinstance(m, QuantLinear) for m in im.modules())
    torch.manual_seed(0)
    hs, t, enc = torch.randn(2, 3, 8, 32, 32), torch.tensor([950.0, 120.0]), torch.randn(2, 16, 64)
    with torch.no_grad():
        ref = qm(hs, t, enc, return_dict=False)[0]
        out = im(hs, t, enc, return_dict=False)[0]
    # Float rounding differences can flip an activation code at a rounding boundary, and flips
    # compound over layers: compare statistically (see shared platform notes).
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert cos > 0.9999, float(cos)
    off = ((out - ref).abs() > 1e-3 * float(ref.abs().max())).float().mean()
    assert off < 0.01, float(off)  # the vast majority of outputs agree to float rounding
    with pytest.raises(ValueError, match="no QuantLinear"):
        convert_to_int4(nn.Sequential(nn.Linear(2, 2)))


def test_load_int4_model_from_checkpoint(ref_ops, tmp_path) -> None:
    from qvgen_export.checkpoint.format import load_quantized_model, save_checkpoint
    from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan
    from qvgen_export.quant.modules import QuantizedWan
    from qvgen_export.runtime.torch_int4 import load_int4_model

    qm = QuantizedWan.from_float(build_wan(TINY_WAN_CONFIG, seed=1), QuantConfig(), init=False)
    with torch.no_grad():
        for m in qm.quant_linears().values():
            lo, hi = m.weight.amin(1, keepdim=True), m.weight.amax(1, keepdim=True)
            m.w_scale.copy_((hi - lo).clamp_min(1e-8) / 15)
            m.w_zero.copy_(-lo / m.w_scale)
    path = save_checkpoint(qm, tmp_path / "tiny.safetensors")
    ref, _ = load_quantized_model(path)
    im = load_int4_model(path)
    assert not any(isinstance(m, QuantLinear) for m in im.modules())
    torch.manual_seed(1)
    hs, t, enc = torch.randn(1, 3, 8, 32, 32), torch.tensor([400.0]), torch.randn(1, 16, 64)
    with torch.no_grad():
        a = ref(hs, t, enc, return_dict=False)[0]
        b = im(hs, t, enc, return_dict=False)[0]
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.9999


def test_import_qvgen_export_does_not_load_native() -> None:
    code = (
        "import sys, qvgen_export, qvgen_export.runtime.torch_int4\n"
        "bad = [m for m in sys.modules if m.startswith('qvgen_export.native')]\n"
        "assert not bad, bad\n"
        "import ctypes\n"
        "maps = open('/proc/self/maps').read()\n"
        "assert 'libqvgen_w4a4' not in maps\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
