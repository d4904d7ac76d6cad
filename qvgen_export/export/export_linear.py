"""Inference-form quantized linears: frozen integer codes, one ``qvgen::quant_linear`` call each."""

from __future__ import annotations

import torch
from torch import nn

from qvgen_export.export.quant_linear_op import quant_linear
from qvgen_export.quant import functional as QF
from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.modules import QuantContext, QuantizedWan, QuantLinear


class ExportQuantLinear(nn.Module):
    """Frozen quantized linear holding the codes exactly as the export writes them."""

    def __init__(self, src: QuantLinear) -> None:
        super().__init__()
        cfg = src.config
        self.config: QuantConfig = cfg
        self.in_features, self.out_features = src.in_features, src.out_features
        self.group_size = cfg.group_size or src.in_features
        with torch.no_grad():
            self.register_buffer("codes_t", src.codes().t().contiguous())  # [K, N] uint8
            # A frozen Parameter, not a buffer: diffusers reads next(module.parameters()).dtype.
            self.w_scale_t = nn.Parameter(src.w_scale.detach().float().t().contiguous(), requires_grad=False)  # [G, N]
            self.register_buffer("w_zs_t", (src.w_zero * src.w_scale).detach().float().t().contiguous())
            # Factor tables, not logits: the graph then only gathers (see functional.clip_tables).
            lo_t, hi_t = QF.clip_tables(
                src.clip_lower.detach().float(), src.clip_upper.detach().float(), cfg.act_clip_base
            )
            self.register_buffer("clip_lo_table", lo_t.contiguous())
            self.register_buffer("clip_hi_table", hi_t.contiguous())
            self.register_buffer("bias", None if src.bias is None else src.bias.detach().float().clone())
        object.__setattr__(self, "ctx", src.ctx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = self.ctx.group
        if group is None:
            raise RuntimeError("ExportQuantLinear called without a timestep group")
        lo, hi = self.clip_lo_table[group], self.clip_hi_table[group]
        shape = (-1,) + (1,) * (x.dim() - 1)  # per-sample factor against [B, ..., K]
        return quant_linear(
            x,
            lo.reshape(shape),
            hi.reshape(shape),
            self.codes_t,
            self.w_scale_t,
            self.w_zs_t,
            self.bias,
            self.config.weight_bits,
            self.config.act_bits,
            self.group_size,
        )


def to_export_form(model: QuantizedWan) -> QuantizedWan:
    """Replace every ``QuantLinear`` of ``model`` (in place) by its frozen export form."""
    for name, layer in list(model.quant_linears().items()):
        model.transformer.set_submodule(name, ExportQuantLinear(layer))
    return model.eval()


__all__ = ["ExportQuantLinear", "QuantContext", "to_export_form"]
