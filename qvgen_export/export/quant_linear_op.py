"""The export-time linear op and its lowerings.

A quantized linear is exported as one call of ``qvgen::quant_linear``; its eager kernel is the
shared fake-quant math, and the ONNX translation table decides what it becomes in the graph:
QuantizeLinear/DequantizeLinear nodes (``--target onnx``) or one custom GEMM node per linear
(``--target trt`` uses its own op, see ``qvgen_export.targets.trt_plugin``).

Tensor arguments (``K`` in features, ``N`` out features, ``G = K // group_size``):
- ``x``: ``[B, ..., K]`` float32 activations;
- ``clip_lo``/``clip_hi``: per-sample clip factors, broadcastable to ``x`` (``[B, 1, ..., 1]``);
- ``codes_t``: ``[K, N]`` uint8 weight codes (transposed: ONNX MatMul wants ``[K, N]``);
- ``w_scale_t``/``w_zs_t``: ``[G, N]`` float32 scale and ``zero * scale``;
- ``bias``: ``[N]`` or None.
"""

from __future__ import annotations

import torch

from qvgen_export.quant import functional as QF

OP_NAMESPACE = "qvgen"
OP_NAME = "quant_linear"


def dequant_weight_t(
    codes_t: torch.Tensor, w_scale_t: torch.Tensor, w_zs_t: torch.Tensor, group_size: int
) -> torch.Tensor:
    """``[K, N]`` float weight ``q * s - z * s`` (same op order as ``functional.weight_dequant``)."""
    s = w_scale_t.repeat_interleave(group_size, dim=0) if w_scale_t.shape[0] > 1 else w_scale_t
    zs = w_zs_t.repeat_interleave(group_size, dim=0) if w_zs_t.shape[0] > 1 else w_zs_t
    return codes_t.to(torch.float32) * s - zs


@torch.library.custom_op(f"{OP_NAMESPACE}::{OP_NAME}", mutates_args=())
def quant_linear(
    x: torch.Tensor,
    clip_lo: torch.Tensor,
    clip_hi: torch.Tensor,
    codes_t: torch.Tensor,
    w_scale_t: torch.Tensor,
    w_zs_t: torch.Tensor,
    bias: torch.Tensor | None,
    w_bits: int,
    a_bits: int,
    group_size: int,
) -> torch.Tensor:
    xq = QF.fake_quant_act(x, clip_lo, clip_hi, 2**a_bits - 1)
    y = xq @ dequant_weight_t(codes_t, w_scale_t, w_zs_t, group_size)
    return y + bias if bias is not None else y


@quant_linear.register_fake
def _(x, clip_lo, clip_hi, codes_t, w_scale_t, w_zs_t, bias, w_bits, a_bits, group_size):  # type: ignore[no-untyped-def]
    return x.new_empty((*x.shape[:-1], codes_t.shape[1]))
