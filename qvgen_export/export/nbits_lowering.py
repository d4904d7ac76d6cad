"""Weight form ``nbits`` of target ``onnx``: ONNX Runtime's 4-bit ``com.microsoft.MatMulNBits``.

The QDQ form (``qdq_lowering.py``) feeds ``MatMul`` a float weight ``DQ(codes) - z*s``; ONNX
Runtime computes that float weight on every call and keeps each one alive until its MatMul
runs, so one forward of Wan 1.3B holds the whole model in fp32 (5.3 GiB) although the session
holds 0.77 GiB. Here a quantized linear's weight half is one MatMulNBits node instead, whose
weight input stays the packed 4-bit codes; only the activation half is the QDQ form's:

    x^ = per-token Q/DQ of x                          (qdq_lowering.fake_quant_act: same codes)
    y  = MatMulNBits(x^, B, scales, zero_points) + b  (bits=4, B [N, K/bs, bs/2] uint8)

- ``B`` is the checkpoint's packing (``quant/packing.py``: codes along K, two per byte) cut into
  blocks of ``bs`` codes: MatMulNBits reads B per output row and per block in that same order,
  so the bytes are ``pack_codes(codes)`` reshaped, never re-ordered here;
- ``scales``/``zero_points`` ``[N * K/bs]`` float32: each output channel's scale and *float*
  zero point repeated per block (per group: the group's, when ``bs`` is the group size). The
  checkpoint's zero points are not integers, so ORT's uint8 zero points could not hold them;
  ONNX Runtime 1.32's CPU kernel takes zero points of A's type (then without its prepacked fast
  path: per call it dequantizes one layer's weight into a transient buffer and runs SGEMM);
- ``accuracy_level=1`` (fp32 compute): level 4 would quantize x^ to int8 again.

Numerics: ORT dequantizes float zero points as ``q * s - z * s`` with ``z * s`` rounded first,
which is PyTorch's formula (``functional.weight_dequant``) and the QDQ form's
``DQ(q, s) - zs``: the weight MatMulNBits multiplies by is the reference's bit for bit (read
back through an identity A in ``tests/core/test_ort_nbits.py``), and on the tiny model the whole
graph's output equals the QDQ graph's exactly.

A weight is lowered this way when its codes fit 4 bits and a block size exists: a power of two
``>= 16`` dividing K (the largest such up to 256, MLAS's largest block, for per-channel scales; the
group size itself for per-group scales). Other linears keep the QDQ form in the same graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qvgen_export.export.export_linear import ExportQuantLinear, FrozenQuantLinear, replace_quant_linears
from qvgen_export.quant import functional as QF
from qvgen_export.quant.config import QuantConfig, WeightGranularity
from qvgen_export.quant.modules import QuantizedWan, QuantLinear
from qvgen_export.quant.packing import container_bits, pack_codes, unpack_codes

OP = "qvgen::quant_linear_nbits"
OP_TYPE, OP_DOMAIN = "MatMulNBits", "com.microsoft"
MIN_BLOCK, MAX_BLOCK = 16, 256
ACCURACY_FP32 = 1
PACKED_ATTR = "nbits_b"  # the MatMulNBits weight initializer is named ``<layer>.nbits_b``


def block_size(in_features: int, config: QuantConfig) -> int | None:
    """MatMulNBits block size for a linear with ``in_features`` inputs, or None (keep QDQ)."""
    if container_bits(config.weight_bits) != 4:
        return None
    if config.weight_granularity is WeightGranularity.PER_GROUP:
        g = int(config.group_size or 0)
        ok = g >= MIN_BLOCK and g & (g - 1) == 0 and in_features % g == 0
        return g if ok else None
    bs = MAX_BLOCK
    while bs >= MIN_BLOCK and in_features % bs:
        bs //= 2
    return bs if bs >= MIN_BLOCK else None


def dequant_nbits(b: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, k: int) -> torch.Tensor:
    """``[N, K]`` float weight of a MatMulNBits node (``q * s - z * s``: eager meaning of the node)."""
    n, blocks = b.shape[0], b.shape[1]
    q = unpack_codes(b.reshape(n, -1), k, 4).float()
    return QF.weight_dequant(q, scales.reshape(n, blocks), zero_points.reshape(n, blocks))


@torch.library.custom_op(OP, mutates_args=())
def quant_linear_nbits(
    x: torch.Tensor,
    clip_lo: torch.Tensor,
    clip_hi: torch.Tensor,
    b: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor,
    bias: torch.Tensor | None,
    a_bits: int,
    in_features: int,
    out_features: int,
    block: int,
) -> torch.Tensor:
    xq = QF.fake_quant_act(x, clip_lo, clip_hi, 2**a_bits - 1)
    y = xq @ dequant_nbits(b, scales, zero_points, in_features).t()
    return y + bias if bias is not None else y


@quant_linear_nbits.register_fake
def _(x, clip_lo, clip_hi, b, scales, zero_points, bias, a_bits, in_features, out_features, block):  # type: ignore[no-untyped-def]
    return x.new_empty((*x.shape[:-1], out_features))


class NbitsQuantLinear(FrozenQuantLinear):
    """Frozen export form holding exactly the MatMulNBits inputs of one quantized linear.

    Buffers: ``nbits_b [N, K/bs, bs/2]`` uint8, ``nbits_scales``/``nbits_zero_points``
    ``[N * K/bs]`` float32, ``clip_lo_table``/``clip_hi_table`` (as ``ExportQuantLinear``), ``bias``.
    """

    def __init__(self, src: QuantLinear, block: int) -> None:
        super().__init__()
        cfg = src.config
        self.config: QuantConfig = cfg
        self.in_features, self.out_features, self.block = src.in_features, src.out_features, block
        blocks = src.in_features // block
        with torch.no_grad():
            packed = pack_codes(src.codes(), cfg.weight_bits)  # [N, K/2]: K is a multiple of block
            self.register_buffer(PACKED_ATTR, packed.reshape(src.out_features, blocks, block // 2).contiguous())
            # [N, G] -> [N, blocks]: G is 1 (per channel: repeated) or blocks (groups of block inputs).
            s, z = (t.detach().float().expand(-1, blocks) for t in (src.w_scale, src.w_zero))
            # A frozen Parameter, not a buffer: diffusers reads next(module.parameters()).dtype.
            self.nbits_scales = nn.Parameter(s.reshape(-1).contiguous(), requires_grad=False)
            self.register_buffer("nbits_zero_points", z.reshape(-1).contiguous())
            self._freeze_activation(src)
            self.register_buffer("bias", None if src.bias is None else src.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.clip_factors()
        shape = (-1,) + (1,) * (x.dim() - 1)  # per-sample factor against [B, ..., K]
        return quant_linear_nbits(
            x,
            lo.reshape(shape),
            hi.reshape(shape),
            getattr(self, PACKED_ATTR),
            self.nbits_scales,
            self.nbits_zero_points,
            self.bias,
            self.config.act_bits,
            self.in_features,
            self.out_features,
            self.block,
        )


def layer_form(src: QuantLinear) -> nn.Module:
    """The ``nbits`` export form of one linear: MatMulNBits where a block size exists, QDQ otherwise."""
    bs = block_size(src.in_features, src.config)
    return NbitsQuantLinear(src, bs) if bs is not None else ExportQuantLinear(src)


def to_export_form(model: QuantizedWan) -> QuantizedWan:
    """Replace every ``QuantLinear`` of ``model`` (in place) by its ``nbits`` export form."""
    return replace_quant_linears(model, layer_form)


def _register_schema() -> None:
    """torch.onnx needs an ONNX schema for a custom-domain node it emits (ORT's, registered once)."""
    import onnx

    if onnx.defs.has(OP_TYPE, OP_DOMAIN):
        return
    P, A = onnx.defs.OpSchema.FormalParameter, onnx.defs.OpSchema.Attribute
    schema = onnx.defs.OpSchema(
        OP_TYPE,
        OP_DOMAIN,
        1,
        inputs=[P("A", "T1"), P("B", "T2"), P("scales", "T1"), P("zero_points", "T1")],
        outputs=[P("Y", "T1")],
        type_constraints=[("T1", ["tensor(float)"], "activations"), ("T2", ["tensor(uint8)"], "packed codes")],
        attributes=[A(a, onnx.defs.OpSchema.AttrType.INT) for a in ("K", "N", "bits", "block_size", "accuracy_level")],
    )
    onnx.defs.register_schema(schema)


def translation_table() -> dict[Any, Any]:
    """Both ops of an ``nbits`` graph: MatMulNBits linears and the QDQ ones kept (``layer_form``)."""
    import onnxscript
    from onnxscript import opset21 as op

    from qvgen_export.export.qdq_lowering import fake_quant_act
    from qvgen_export.export.qdq_lowering import translation_table as qdq_table

    _register_schema()
    msft = onnxscript.values.Opset(OP_DOMAIN, 1)

    def lower(x, clip_lo, clip_hi, b, scales, zero_points, bias, a_bits, in_features, out_features, block):  # type: ignore[no-untyped-def]
        xq = fake_quant_act(x, clip_lo, clip_hi, a_bits)
        y = getattr(msft, OP_TYPE)(
            xq,
            b,
            scales,
            zero_points,
            K=in_features,
            N=out_features,
            bits=4,
            block_size=block,
            accuracy_level=ACCURACY_FP32,
        )
        return y if bias is None else op.Add(y, bias)

    return {**qdq_table(), torch.ops.qvgen.quant_linear_nbits.default: lower}
