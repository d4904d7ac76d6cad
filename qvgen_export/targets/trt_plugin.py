"""Lowering for target ``trt``: one plugin node per quantized linear (see ``trt_plugin.json``).

Each ``QuantLinear`` becomes a :class:`PluginLinear` whose forward is one call of the custom op
``qvgen::w4a4_plugin_linear``; the ONNX translation of that op is one ``QvgenW4A4Linear`` node
(activation quantization and the INT4 GEMM fused, as the kernels' C API does). Everything else
stays the float graph, including the per-sample clip factors: the layer's factor tables are
constants and the graph gathers their row for each sample's timestep group.

Plugin inputs rather than fields for the weights: TensorRT keeps constants as network weights
(external data above 2 GiB, refit, one copy in the engine) while a field is a host blob the
plugin would have to copy to the device itself; and the per-sample clip factors change every
call, so they must be tensors. Packed codes are typed int32 because TensorRT's INT8 constants
carry quantization semantics and UINT8 is an I/O type only; the bytes are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qvgen_export.export.export_linear import FrozenQuantLinear, replace_quant_linears
from qvgen_export.quant import functional as QF
from qvgen_export.quant.config import QuantConfig, WeightGranularity
from qvgen_export.quant.modules import QuantizedWan, QuantLinear
from qvgen_export.quant.packing import code_sums, kernel_words, pack_codes, to_kernel_layout, unpack_codes
from qvgen_export.targets.plugin_contract import load_contract

OP = "qvgen::w4a4_plugin_linear"


def check_config(config: QuantConfig) -> None:
    """Raise ``NotImplementedError`` for a scheme the W4A4 plugin cannot run."""
    if config.weight_granularity is not WeightGranularity.PER_CHANNEL:
        raise NotImplementedError(
            "target 'trt' needs per-channel weight scales: the W4A4 GEMM epilogue applies one scale and zero "
            f"point per output channel (this checkpoint uses groups of {config.group_size})"
        )
    if config.weight_bits > 4 or config.act_bits > 4:
        raise NotImplementedError(
            f"target 'trt' runs 2..4-bit codes (4-bit containers); this checkpoint is {config.name.upper()}. "
            "Use --target onnx"
        )


def words_to_codes(qweight: torch.Tensor, k: int) -> torch.Tensor:
    """Plugin weight words ``[N, LDW]`` int32 -> codes ``[N, K]`` (uint8)."""
    # [N, 4*LDW] uint8, little endian: the kernel rows, whose first ceil(K/2) bytes are the checkpoint's
    return unpack_codes(qweight.contiguous().view(torch.uint8), k, 4)


@torch.library.custom_op(OP, mutates_args=())
def w4a4_plugin_linear(
    x: torch.Tensor,
    clip_lo: torch.Tensor,
    clip_hi: torch.Tensor,
    qweight: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero: torch.Tensor,
    w_sum: torch.Tensor,
    bias: torch.Tensor,
    in_features: int,
    out_features: int,
    act_bits: int,
    weight_bits: int,
) -> torch.Tensor:
    """Eager meaning of the plugin node, in the fake-quant math (no native library needed).

    ``clip_*`` are per-sample ``[B]`` factors; tokens of sample ``b`` are ``x[b]``.
    """
    xf = x.float()
    shape = (-1,) + (1,) * (xf.dim() - 1)
    xq = QF.fake_quant_act(xf, clip_lo.reshape(shape), clip_hi.reshape(shape), 2**act_bits - 1)
    codes = words_to_codes(qweight, in_features).float()
    w = QF.weight_dequant(codes, w_scale.reshape(-1, 1), w_zero.reshape(-1, 1))
    return (torch.nn.functional.linear(xq, w) + bias).to(x.dtype)


@w4a4_plugin_linear.register_fake
def _(x, clip_lo, clip_hi, qweight, w_scale, w_zero, w_sum, bias, in_features, out_features, act_bits, weight_bits):  # type: ignore[no-untyped-def]
    return x.new_empty((*x.shape[:-1], out_features))


class PluginLinear(FrozenQuantLinear):
    """Frozen export form of a ``QuantLinear`` holding exactly the plugin node's constant inputs.

    Buffers: ``qweight [N, LDW]`` int32 (kernel-layout rows, ``quant/packing.py``), ``w_scale``,
    ``w_zero`` ``[N]`` float32, ``w_sum [N]`` int32, ``bias [N]`` float32 (zeros if the linear has
    none), ``clip_lo_table``/``clip_hi_table`` ``[timestep_groups]`` float32 factors.
    """

    def __init__(self, src: QuantLinear) -> None:
        super().__init__()
        cfg = src.config
        check_config(cfg)
        self.config: QuantConfig = cfg
        self.in_features, self.out_features = src.in_features, src.out_features
        with torch.no_grad():
            codes = src.codes()  # [N, K] uint8
            kernel = to_kernel_layout(pack_codes(codes, cfg.weight_bits), src.in_features)
            self.register_buffer("qweight", kernel_words(kernel))
            # A frozen Parameter, not a buffer: diffusers reads next(module.parameters()).dtype.
            self.w_scale = nn.Parameter(src.w_scale.detach().float().reshape(-1).contiguous(), requires_grad=False)
            self.register_buffer("w_zero", src.w_zero.detach().float().reshape(-1).contiguous())
            self.register_buffer("w_sum", code_sums(codes))
            bias = src.bias.detach().float() if src.bias is not None else torch.zeros(src.out_features)
            self.register_buffer("bias", bias.contiguous().clone())
            self._freeze_activation(src)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.clip_factors()
        return w4a4_plugin_linear(
            x,
            lo,
            hi,
            self.qweight,
            self.w_scale,
            self.w_zero,
            self.w_sum,
            self.bias,
            self.in_features,
            self.out_features,
            self.config.act_bits,
            self.config.weight_bits,
        )


def to_plugin_form(model: QuantizedWan) -> QuantizedWan:
    """Replace every ``QuantLinear`` of ``model`` (in place) by its :class:`PluginLinear`."""
    check_config(model.qconfig)
    return replace_quant_linears(model, PluginLinear)


def _register_schema() -> None:
    """torch.onnx needs an ONNX schema for a custom-domain node it emits (registered once)."""
    import onnx

    c = load_contract()
    if onnx.defs.has(c.op_type, c.onnx_domain):
        return
    onnx_type = {"float32": "tensor(float)", "int32": "tensor(int32)"}
    constraints = [("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "activations and output")]
    constraints += [(f"T_{n}", [onnx_type[d[0]]], n) for n, d in zip(c.inputs, c.input_dtypes) if n != "x"]
    schema = onnx.defs.OpSchema(
        c.op_type,
        c.onnx_domain,
        1,
        inputs=[onnx.defs.OpSchema.FormalParameter(n, "T" if n == "x" else f"T_{n}") for n in c.inputs],
        outputs=[onnx.defs.OpSchema.FormalParameter(n, "T") for n in c.outputs],
        type_constraints=constraints,
        attributes=[onnx.defs.OpSchema.Attribute(f.name, onnx.defs.OpSchema.AttrType.INT) for f in c.fields]
        + [
            onnx.defs.OpSchema.Attribute("plugin_version", onnx.defs.OpSchema.AttrType.STRING),
            onnx.defs.OpSchema.Attribute("plugin_namespace", onnx.defs.OpSchema.AttrType.STRING),
        ],
    )
    onnx.defs.register_schema(schema)


def translation_table() -> dict[Any, Any]:
    """``torch.onnx`` custom translation: ``qvgen::w4a4_plugin_linear`` -> one plugin node."""
    import onnxscript

    _register_schema()
    c = load_contract()
    plugin = onnxscript.values.Opset(c.onnx_domain, 1)

    def lower(
        x, clip_lo, clip_hi, qweight, w_scale, w_zero, w_sum, bias, in_features, out_features, act_bits, weight_bits
    ):  # type: ignore[no-untyped-def]
        attrs = c.attributes(
            in_features=in_features, out_features=out_features, act_bits=act_bits, weight_bits=weight_bits
        )
        return getattr(plugin, c.op_type)(x, clip_lo, clip_hi, qweight, w_scale, w_zero, w_sum, bias, **attrs)

    return {torch.ops.qvgen.w4a4_plugin_linear.default: lower}
