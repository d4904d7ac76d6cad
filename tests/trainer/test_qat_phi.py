"""Phi: SVD initialisation, re-SVD at a stage boundary, the hook into QuantLinear."""

from __future__ import annotations

import torch
from torch import nn

from qvgen_export.quant import functional as QF
from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.modules import QuantContext, QuantLinear
from trainer.qat.phi import Phi, attach_phis, detach_phis, small_singular_share


def _layer(n: int = 40, k: int = 48, scheme: str = "w4a4") -> QuantLinear:
    torch.manual_seed(0)
    return QuantLinear.from_linear(nn.Linear(k, n), QuantConfig.preset(scheme), QuantContext())


def test_full_rank_init_reconstructs_quantization_error():
    q = _layer()
    err = (q.weight - q.quantized_weight()).detach()
    phi = Phi(q.out_features, q.in_features, rank=min(q.out_features, q.in_features))
    s = phi.init_from_error(err)
    torch.testing.assert_close(phi(), err, atol=1e-5, rtol=0)
    assert torch.all(s[:-1] >= s[1:])


def test_rank_r_init_is_the_truncated_svd_and_splits_sqrt_sigma():
    q = _layer()
    err = (q.weight - q.quantized_weight()).detach()
    phi = Phi(q.out_features, q.in_features, rank=8)
    phi.init_from_error(err)
    u, s, vh = torch.linalg.svd(err)
    torch.testing.assert_close(phi(), (u[:, :8] * s[:8]) @ vh[:8], atol=1e-5, rtol=0)
    # L and R carry sqrt(sigma) each: column norms of L equal row norms of R.
    torch.testing.assert_close(phi.L.norm(dim=0), phi.R.norm(dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(phi.spectrum(), s[:8], atol=1e-5, rtol=1e-4)


def test_resvd_preserves_the_kept_product_and_orders_columns():
    torch.manual_seed(1)
    phi = Phi(24, 30, rank=8)
    with torch.no_grad():
        phi.L.copy_(torch.randn(24, 8))
        phi.R.copy_(torch.randn(8, 30))
    kept = (phi.L[:, :4] @ phi.R[:4]).detach().clone()
    s = phi.resvd(4)
    assert phi.rank == 4
    torch.testing.assert_close(phi(), kept, atol=1e-4, rtol=1e-5)
    assert torch.all(s[:-1] >= s[1:])
    torch.testing.assert_close(phi.L[:, :4].norm(dim=0) ** 2, s, atol=1e-4, rtol=1e-5)
    assert torch.count_nonzero(phi.L[:, 4:]) == 0 and torch.count_nonzero(phi.R[4:]) == 0
    phi.resvd(0)
    assert phi.rank == 0 and torch.count_nonzero(phi()) == 0


def test_gamma_scales_columns():
    phi = Phi(6, 5, rank=2)
    with torch.no_grad():
        phi.L.copy_(torch.ones(6, 2))
        phi.R.copy_(torch.ones(2, 5))
        phi.gamma.copy_(torch.tensor([1.0, 0.25]))
    torch.testing.assert_close(phi(), torch.full((6, 5), 1.25))


def test_attached_phi_is_added_to_the_fake_quantized_weight():
    q = _layer()
    x = torch.randn(3, 7, q.in_features)
    group = torch.tensor([0, 10, 49])
    q.ctx.group = group
    phis = attach_phis({"l": q}, rank=8)
    lo, hi = q.act_clip()
    xq = QF.fake_quant_act(x, lo, hi, q.config.act_qmax)
    expect = nn.functional.linear(xq, q.quantized_weight() + phis["l"](), q.bias)
    torch.testing.assert_close(q(x), expect)
    detach_phis({"l": q})
    assert q.weight_delta is None
    torch.testing.assert_close(q(x), nn.functional.linear(xq, q.quantized_weight(), q.bias))


def test_small_singular_share():
    assert small_singular_share(torch.tensor([14.0, 2.0, 0.9, 0.5])) == 0.5
    assert small_singular_share(torch.zeros(0)) == 0.0
