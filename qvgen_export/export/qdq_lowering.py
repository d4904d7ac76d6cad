"""Lowering of ``qvgen::quant_linear`` to standard ONNX (opset 21) INT4 Q/DQ nodes.

Mirrors ``qvgen_export.quant.functional`` op for op, so ONNX Runtime reproduces PyTorch's
activation codes exactly (same divisions, half-to-even rounding, saturation):

    lo = Min(ReduceMin(x), 0) * clip_lo          hi = Max(ReduceMax(x), 0) * clip_hi
    s  = Max((hi - lo) / qmax, eps)              zp = Q(-lo / s, 1)   (rounds; in [0, qmax])
    x^ = DQ(Q(x, s, zp), s, zp)                  (per token: x reshaped to [T, K], axis 0)
    W^ = DQ(codes[K,N] uint4, s_w, axis=1 or blocked) - z_w*s_w
    y  = MatMul(x^, W^) + b

Container types: UINT4 for 2..4 bits, UINT8 for 5..8 bits; below the container width the
upper saturation is applied after DQ as ``Min(x^, (qmax - zp) * s)``, which equals clamping
the code because ``q -> (q - zp) * s`` is monotone and computed the same way.
The weight codes arrive as a uint8 initializer behind a ``Cast`` to the container type;
``qvgen_export.export.onnx_export`` folds that Cast into a true INT4 initializer.
"""

from __future__ import annotations

from onnxscript import ir
from onnxscript import opset21 as op

from qvgen_export.quant.functional import ACT_SCALE_EPS
from qvgen_export.quant.packing import container_bits


def _container(bits: int) -> ir.DataType:
    return ir.DataType.UINT4 if container_bits(bits) == 4 else ir.DataType.UINT8


def _zero(bits: int):  # type: ignore[no-untyped-def]
    return op.Cast(op.Constant(value_int=0), to=_container(bits))


def _f(v: float):  # type: ignore[no-untyped-def]
    return op.Constant(value_float=float(v))


def fake_quant_act(x, clip_lo, clip_hi, a_bits: int = 4):  # type: ignore[no-untyped-def]
    """Per-token activation fake quant ``x^`` (the activation half of every ``onnx`` lowering)."""
    a_qmax = float(2**a_bits - 1)
    axes = op.Constant(value_ints=[-1])
    lo = op.Mul(op.Min(op.ReduceMin(x, axes, keepdims=1), _f(0.0)), clip_lo)
    hi = op.Mul(op.Max(op.ReduceMax(x, axes, keepdims=1), _f(0.0)), clip_hi)
    scale = op.Max(op.Div(op.Sub(hi, lo), _f(a_qmax)), _f(ACT_SCALE_EPS))
    # zp = round(-lo/s) already lies in [0, qmax] because lo <= 0 <= hi, so PyTorch's clamp is a
    # no-op here; QuantizeLinear(., scale 1) rounds half-to-even and yields the integer type.
    # (No Clip node: ORT 1.31's Clip->QuantizeLinear fusion rejects UINT4 zero points, and the
    # exporter's optimiser turns Min/Max pairs into Clip.)
    zp_f = op.Div(op.Neg(lo), scale)
    k = op.Shape(x, start=-1)
    x2 = op.Reshape(x, op.Concat(op.Constant(value_ints=[-1]), k, axis=0))
    s1 = op.Reshape(scale, op.Constant(value_ints=[-1]))
    zp = op.QuantizeLinear(op.Reshape(zp_f, op.Constant(value_ints=[-1])), _f(1.0), _zero(a_bits))
    xq = op.DequantizeLinear(op.QuantizeLinear(x2, s1, zp, axis=0), s1, zp, axis=0)
    if a_bits != container_bits(a_bits):
        zp_r = op.Round(zp_f)
        xq = op.Min(
            xq,
            op.Mul(
                op.Sub(_f(a_qmax), op.Reshape(zp_r, op.Constant(value_ints=[-1, 1]))),
                op.Reshape(s1, op.Constant(value_ints=[-1, 1])),
            ),
        )
    return op.Reshape(xq, op.Shape(x))


def quant_linear_qdq(
    x, clip_lo, clip_hi, codes_t, w_scale_t, w_zs_t, bias=None, w_bits: int = 4, a_bits: int = 4, group_size: int = 0
):  # type: ignore[no-untyped-def]
    xq = fake_quant_act(x, clip_lo, clip_hi, a_bits)
    # -- weights ----------------------------------------------------------------------------
    codes = op.Cast(codes_t, to=_container(w_bits))
    if w_scale_t.shape is not None and w_scale_t.shape[0] == 1:
        w = op.DequantizeLinear(codes, op.Reshape(w_scale_t, op.Constant(value_ints=[-1])), axis=1)
        w = op.Sub(w, w_zs_t)
    else:
        w = op.DequantizeLinear(codes, w_scale_t, axis=0, block_size=group_size)
        # [K, N] -> [G, g, N] so the per-group z*s broadcasts, then back.
        kn = op.Shape(codes_t)
        g3 = op.Concat(op.Constant(value_ints=[-1, group_size]), op.Shape(codes_t, start=1), axis=0)
        w = op.Reshape(op.Sub(op.Reshape(w, g3), op.Unsqueeze(w_zs_t, op.Constant(value_ints=[1]))), kn)
    y = op.MatMul(xq, w)
    if bias is not None:
        y = op.Add(y, bias)
    return y


def check_config(config: object) -> None:
    """Every scheme of ``QuantConfig`` (2..8 bits, per channel or per group) lowers to Q/DQ."""


def translation_table() -> dict[object, object]:
    import torch

    import qvgen_export.export.quant_linear_op  # noqa: F401  (registers torch.ops.qvgen.quant_linear)

    return {torch.ops.qvgen.quant_linear.default: quant_linear_qdq}
