import pytest
import torch

from qvgen_export import QuantConfig
from qvgen_export.quant import functional as QF
from qvgen_export.quant.packing import pack_codes, packed_shape, unpack_codes
from qvgen_export.quant.ptq import mse_search_weight


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("k", [1, 2, 7, 64])
def test_pack_roundtrip(bits, k):
    g = torch.Generator().manual_seed(bits * 100 + k)
    codes = torch.randint(0, 2**bits, (5, k), generator=g, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert tuple(packed.shape) == packed_shape(5, k, bits)
    assert torch.equal(unpack_codes(packed, k, bits), codes)


def test_nibble_order_is_low_nibble_first():
    packed = pack_codes(torch.tensor([[1, 2, 3]], dtype=torch.uint8), 4)
    assert packed.tolist() == [[0x21, 0x03]]


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8])
def test_pack_rejects_out_of_range(dtype):
    with pytest.raises(ValueError, match="out of range"):
        pack_codes(torch.tensor([[1, 8]], dtype=dtype), 3)
    # uint8 codes (PTQ's) skip the int64 copy; they pack as the same integers in int64 would
    codes = torch.tensor([[0, 7, 3], [5, 1, 6]], dtype=dtype)
    assert torch.equal(pack_codes(codes, 3), pack_codes(codes.to(torch.int64), 3))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weight_bits": 1},
        {"act_bits": 9},
        {"weight_granularity": "per_group"},
        {"group_size": 32},
        {"timestep_groups": 0},
        {"act_clip_init": 1.0},
        {"weight_granularity": "rows"},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        QuantConfig(**kwargs)


def test_config_roundtrip_and_selection():
    cfg = QuantConfig(weight_bits=3, act_bits=3, exclude=("proj_out", "condition_embedder.*"))
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.selects("blocks.0.attn1.to_q")
    assert not cfg.selects("proj_out") and not cfg.selects("condition_embedder.time_proj")
    with pytest.raises(ValueError, match="unknown"):
        QuantConfig.from_dict({"bits": 4})


def test_timestep_group_boundaries():
    t = torch.tensor([0.0, 19.999, 20.0, 999.0, 1000.0, -5.0])
    assert QF.timestep_group(t, 50, 1000).tolist() == [0, 0, 1, 49, 49, 0]


def test_weight_fake_quant_error_within_half_step():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=g)
    cfg = QuantConfig()
    s, z = mse_search_weight(w, cfg)
    q = QF.weight_codes(w, s, z, cfg.weight_qmax)
    assert q.min() >= 0 and q.max() <= 15 and torch.equal(q, q.round())
    w_hat = QF.weight_dequant(q, s, z)
    inside = (w / s + z >= 0) & (w / s + z <= 15)
    assert ((w_hat - w).abs()[inside] <= (s.expand_as(w)[inside] / 2 + 1e-6)).all()


def test_mse_search_not_worse_than_full_range():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(32, 128, generator=g) * torch.linspace(0.1, 3, 128)
    w[0, 0] = 25.0  # an outlier makes clipping worthwhile
    cfg = QuantConfig()
    s, z = mse_search_weight(w, cfg)
    s1 = (w.amax(1, keepdim=True).clamp(min=0) - w.amin(1, keepdim=True).clamp(max=0)) / 15
    z1 = -w.amin(1, keepdim=True).clamp(max=0) / s1
    err = lambda s_, z_: (QF.fake_quant_weight(w, s_, z_, 15) - w).abs().pow(2.4).sum(1)
    assert (err(s, z) <= err(s1, z1) + 1e-5).all()
    assert err(s, z)[0] < err(s1, z1)[0]


def test_per_group_weights():
    cfg = QuantConfig(weight_granularity="per_group", group_size=16)
    w = torch.randn(8, 64)
    s, z = mse_search_weight(w, cfg)
    assert s.shape == (8, 4)
    w_hat = QF.fake_quant_weight(w, s, z, cfg.weight_qmax)
    assert (w_hat - w).abs().max() < (w.abs().max() / 7)


def test_activation_fake_quant_properties():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 10, 32, generator=g) * 3
    x[0, 0] = 0.0  # an all-zero token
    x[1, 1] = 2.5  # a constant positive token
    lo = torch.tensor([0.9, 0.8])
    hi = torch.tensor([0.9, 0.8])
    xq = QF.fake_quant_act(x, lo, hi, 15)
    assert torch.equal(xq[0, 0], torch.zeros(32))
    lo_r, hi_r = QF.act_range(x, lo, hi)
    s, zp = QF.act_qparams(lo_r, hi_r, 15)
    codes = QF.act_codes(x, s, zp, 15)
    assert codes.min() >= 0 and codes.max() <= 15 and torch.equal(codes, codes.round())
    # zero is exactly representable and at most 16 levels are used per token
    assert torch.equal(QF.fake_quant_act(torch.zeros(1, 4), lo[:1], hi[:1], 15), torch.zeros(1, 4))
    assert all(len(torch.unique(xq[b, i])) <= 16 for b in range(2) for i in range(10))
    # clipping: values beyond the clipped range saturate at its ends
    assert xq[0].max() <= x[0].amax(-1).max() * 0.9 + 1e-5


def test_ste_gradients():
    x = torch.tensor([-3.0, -0.2, 0.3, 1.0, 4.0], requires_grad=True)
    s, zp = torch.tensor(0.5), torch.tensor(4.0)
    q = QF.act_codes(x, s, zp, 7)  # codes: clamp(round(x/0.5)+4, 0, 7)
    assert q.tolist() == [0.0, 4.0, 5.0, 6.0, 7.0]
    q.sum().backward()
    # identity through rounding (1/s), zero where the code saturates
    assert x.grad.tolist() == [0.0, 2.0, 2.0, 2.0, 0.0]
