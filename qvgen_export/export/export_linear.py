"""Inference-form quantized linears: frozen integer codes, one ``qvgen::quant_linear`` call each."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qvgen_export.export.quant_linear_op import quant_linear
from qvgen_export.quant import functional as QF
from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.modules import QuantContext, QuantizedWan, QuantLinear


class FrozenQuantLinear(nn.Module):
    """What every export form of a quantized linear shares: the activation clip factor tables
    (tables, not logits: the graph then only gathers; see ``functional.clip_tables``), the
    model's timestep context, and the lookup of the current group's factors."""

    def _freeze_activation(self, src: QuantLinear) -> None:
        lo_t, hi_t = QF.clip_tables(
            src.clip_lower.detach().float(), src.clip_upper.detach().float(), src.config.act_clip_base
        )
        self.register_buffer("clip_lo_table", lo_t.contiguous())
        self.register_buffer("clip_hi_table", hi_t.contiguous())
        object.__setattr__(self, "ctx", src.ctx)  # shared with the model, not a submodule

    def clip_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        group = self.ctx.group
        if group is None:
            raise RuntimeError(f"{type(self).__name__} called without a timestep group")
        return self.clip_lo_table[group], self.clip_hi_table[group]


def replace_quant_linears(model: QuantizedWan, form: Callable[[QuantLinear], nn.Module]) -> QuantizedWan:
    """Replace every ``QuantLinear`` of ``model`` (in place) by ``form(layer)``; eval mode."""
    for name, layer in list(model.quant_linears().items()):
        model.transformer.set_submodule(name, form(layer))
    return model.eval()


class ExportQuantLinear(FrozenQuantLinear):
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
            self._freeze_activation(src)
            self.register_buffer("bias", None if src.bias is None else src.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.clip_factors()
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
    return replace_quant_linears(model, ExportQuantLinear)


__all__ = ["ExportQuantLinear", "FrozenQuantLinear", "QuantContext", "replace_quant_linears", "to_export_form"]
