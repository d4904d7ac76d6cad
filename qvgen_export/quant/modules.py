"""Fake-quantized modules (QAT / PTQ / PyTorch reference inference) and model wrapping.

``QuantizedWan`` wraps a ``WanTransformer3DModel`` whose selected ``nn.Linear`` layers were
replaced by :class:`QuantLinear`. Its ``forward`` keeps diffusers' transformer call signature and
computes the timestep group once per call (``functional.timestep_group``); every
``QuantLinear`` reads it from the shared :class:`QuantContext`. The inner transformer computes
the group too when it is called directly (a forward pre-hook), so either object can be handed to
diffusers' ``WanPipeline``.

Dtypes: the model may be cast (``.to(torch.bfloat16)``); a ``QuantLinear`` keeps its quantizer
parameters (scale, zero point, clip logits) in float32 whatever the cast, computes the fake
quantization in float32 and returns the input's dtype, so the integer codes do not depend on the
compute dtype beyond the latent weight's own rounding.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qvgen_export.quant import functional as QF
from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.packing import packed_shape, unpack_codes
from qvgen_export.quant.range_search import WeightRanges, weight_ranges


class QuantContext:
    """Per-call state shared by the quantized linears of one model: the timestep groups ``[B]``."""

    def __init__(self) -> None:
        self.group: torch.Tensor | None = None


# Quantizer parameters stay float32 under ``.to(dtype)``: a bf16 scale would move codes.
QUANTIZER_PARAMS = ("w_scale", "w_zero", "clip_lower", "clip_upper")


class _TimestepGroupHook:
    """Forward pre/post hook of the inner transformer: sets the context's timestep group when the
    transformer is called directly (diffusers' pipeline holding ``qmodel.transformer``).

    A class, not a closure, so that ``copy.deepcopy`` of the model copies it together with (and
    pointing at) the copied context. It leaves a group set by ``QuantizedWan.forward`` alone.
    """

    def __init__(self, ctx: QuantContext, config: QuantConfig) -> None:
        self.ctx = ctx
        self.config = config
        self.owned = False

    def pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.ctx.group is not None:
            return
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if timestep is None:
            return  # QuantLinear raises its own clear error
        self.ctx.group = QF.timestep_group(timestep, self.config.timestep_groups, self.config.num_train_timesteps)
        self.owned = True

    def post(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self.owned:
            self.ctx.group = None
            self.owned = False


class QuantLinear(nn.Module):
    """``y = Qa(x) @ Qw(W)^T + b`` with STE fake quantization (see ``functional``).

    Parameters: ``weight [N, K]`` (latent float weight), ``bias [N]``, ``w_scale``/``w_zero``
    ``[N, G]`` (LSQ+ scale and float zero point), ``clip_lower``/``clip_upper`` ``[T]`` logits of
    the activation clip factors per timestep group. ``weight_delta`` is an optional callable
    returning a float ``[N, K]`` correction added to ``Qw(W)`` (the trainer's Phi); it is never
    part of a checkpoint.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        config: QuantConfig,
        ctx: QuantContext,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self._init_quantizer(in_features, out_features, bias, config, ctx)

    def _init_quantizer(
        self, in_features: int, out_features: int, bias: bool, config: QuantConfig, ctx: QuantContext
    ) -> None:
        """Everything but the weight storage (shared with :class:`PackedQuantLinear`)."""
        self.in_features = in_features
        self.out_features = out_features
        self.config = config
        g = config.weight_groups(in_features)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.w_scale = nn.Parameter(torch.ones(out_features, g))
        self.w_zero = nn.Parameter(torch.zeros(out_features, g))
        logit = math.log(config.act_clip_init / (1.0 - config.act_clip_init))
        self.clip_lower = nn.Parameter(torch.full((config.timestep_groups,), logit))
        self.clip_upper = nn.Parameter(torch.full((config.timestep_groups,), logit))
        # Plain attributes, not submodules: the context is shared, and the delta belongs to the
        # trainer, so neither may appear in state_dict.
        object.__setattr__(self, "ctx", ctx)
        self.weight_delta: Any = None
        self.lsq_grad_scaling = False
        if config.weight_symmetric:
            self.w_zero.requires_grad_(False)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "weight_delta":
            # Phi belongs to the trainer: even an nn.Module delta must not become a submodule
            # (it would leak into state_dict and the checkpoint).
            self.__dict__[name] = value
            return
        super().__setattr__(name, value)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantConfig, ctx: QuantContext, init: bool = True) -> QuantLinear:
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, config, ctx)
        with torch.no_grad():
            q.weight.copy_(linear.weight.detach().float())
            if linear.bias is not None and q.bias is not None:
                q.bias.copy_(linear.bias.detach().float())
        if init:
            q.init_weight_ranges()
        return q

    @torch.no_grad()
    def init_weight_ranges(self, method: WeightRanges = "mse") -> None:
        """Set the weight scale and zero point from the weight: ``"mse"`` search or ``"minmax"``."""
        s, z = weight_ranges(self.weight, self.config, method)
        self.w_scale.copy_(s)
        self.w_zero.copy_(z)

    # -- pieces ------------------------------------------------------------------------------
    def quant_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        s, z = self.w_scale, self.w_zero
        if self.lsq_grad_scaling and self.training:
            f = QF.lsq_grad_factor(self.in_features, self.config.weight_bits)
            s, z = QF.grad_scale(s, f), QF.grad_scale(z, f)
        return s, z

    def quantized_weight(self) -> torch.Tensor:
        """``Qw(W)`` in float32 (``.float()`` is a no-op for a float32 model and keeps the graph)."""
        s, z = self.quant_params()
        return QF.fake_quant_weight(self.weight.float(), s.float(), z.float(), self.config.weight_qmax)

    def codes(self) -> torch.Tensor:
        """Integer weight codes ``[N, K]`` (uint8) as the checkpoint stores them."""
        with torch.no_grad():
            return QF.weight_codes(
                self.weight.float(), self.w_scale.float(), self.w_zero.float(), self.config.weight_qmax
            ).to(torch.uint8)

    def act_clip(self) -> tuple[torch.Tensor, torch.Tensor]:
        group = self.ctx.group
        if group is None:
            raise RuntimeError("QuantLinear called without a timestep group: call the model through QuantizedWan")
        return QF.clip_factors(self.clip_lower.float(), self.clip_upper.float(), group, self.config.act_clip_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 inside whatever the model's dtype: the quantizer's rounding must not depend on it.
        lo, hi = self.act_clip()
        xq = QF.fake_quant_act(x.float(), lo, hi, self.config.act_qmax)
        w = self.quantized_weight()
        if self.weight_delta is not None:
            w = w + self.weight_delta().float()
        bias = None if self.bias is None else self.bias.float()
        return F.linear(xq, w, bias).to(x.dtype)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> QuantLinear:
        """``nn.Module._apply`` (behind ``.to``/``.half``/``.cuda``...), keeping quantizer params float32.

        A dtype cast is detected by applying ``fn`` to a one-element probe; the quantizer params
        then only follow the device (moved from their float32 originals, never round-tripped).
        """
        originals: dict[str, torch.Tensor] = {}
        for name in QUANTIZER_PARAMS:
            p = self._parameters.get(name)
            if p is None or p.dtype != torch.float32:
                continue
            probe = fn(torch.zeros(1, dtype=p.dtype, device=p.device))
            if probe.dtype != p.dtype:
                originals[name] = p.data
        super()._apply(fn, recurse)
        for name, old in originals.items():
            probe = fn(torch.zeros(1, dtype=old.dtype, device=old.device))
            self._parameters[name].data = old.to(probe.device)  # type: ignore[union-attr]
        return self

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.config.name}"


class PackedQuantLinear(QuantLinear):
    """A ``QuantLinear`` loaded from a checkpoint for inference or export: packed weight codes.

    It holds the checkpoint's packed codes (``qweight``, uint8, ``quant/packing.py`` layout:
    half a byte per 4-bit weight) instead of a float32 latent weight (4 bytes per weight), so a
    loaded model takes about the checkpoint's size in memory. Each forward unpacks and
    dequantizes this layer's weight transiently (``functional.weight_dequant``, the formula
    ``QuantLinear.quantized_weight`` ends with), which gives the same float32 bits as a
    ``QuantLinear`` whose latent weight is the dequantized weight: its codes re-derive to the
    file's codes (the loader checks that), so both multiply the same ``q * s - z * s``.

    Parameters ``bias``, ``w_scale``, ``w_zero``, ``clip_lower``, ``clip_upper`` are as in
    ``QuantLinear`` (the quantizer params stay trainable tensors); there is no latent weight to
    train: QAT builds ``QuantLinear`` from float weights, or loads with ``latent_weights=True``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        config: QuantConfig,
        ctx: QuantContext,
    ) -> None:
        nn.Module.__init__(self)
        # On meta: the loader assigns the file's packed codes (no allocation of a placeholder).
        shape = packed_shape(out_features, in_features, config.weight_bits)
        self.register_buffer("qweight", torch.empty(shape, dtype=torch.uint8, device="meta"))
        self._init_quantizer(in_features, out_features, bias, config, ctx)

    @classmethod
    def from_tensors(
        cls,
        tensors: dict[str, torch.Tensor],
        in_features: int,
        config: QuantConfig,
        ctx: QuantContext,
        requires_grad: bool = True,
    ) -> PackedQuantLinear:
        """A layer holding one linear's checkpoint tensors as they are (suffix -> tensor:
        ``qweight``, ``w_scale``, ``w_zero``, ``clip_lower``, ``clip_upper``, optional ``bias``);
        no copy, no check (callers validate what they read)."""
        from qvgen_export.utils.meta_init import params_on_meta

        n = int(tensors["w_scale"].shape[0])
        with params_on_meta():
            layer = cls(in_features, n, "bias" in tensors, config, ctx)
        layer.qweight = tensors["qweight"]
        for attr in (*QUANTIZER_PARAMS, "bias"):
            if attr in tensors:
                grad = requires_grad and getattr(layer, attr).requires_grad
                setattr(layer, attr, nn.Parameter(tensors[attr], requires_grad=grad))
        return layer

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The dequantized weight ``[N, K]`` float32, computed on each access (not stored).

        The value a latent-weight load holds; read-only (assigning to it changes nothing).
        """
        with torch.no_grad():
            return QF.weight_dequant(self.codes().float(), self.w_scale.float(), self.w_zero.float())

    def codes(self) -> torch.Tensor:
        """Integer weight codes ``[N, K]`` (uint8): the checkpoint's, unpacked."""
        q = self.qweight
        # unpack_codes builds its output on the CPU; a model moved to another device gets its
        # codes back there (a copy per forward, as the dequantized weight is anyway).
        return unpack_codes(q.cpu(), self.in_features, self.config.weight_bits).to(q.device)

    def quantized_weight(self) -> torch.Tensor:
        """``Qw(W)`` in float32 from the stored codes (gradients reach ``w_scale``/``w_zero``)."""
        s, z = self.quant_params()
        return QF.weight_dequant(self.codes().float(), s.float(), z.float())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, packed"


def _install_group_hook(transformer: nn.Module, ctx: QuantContext, config: QuantConfig) -> None:
    """(Re)install the timestep-group hooks on ``transformer`` (one pair, bound to ``ctx``)."""
    for hooks in (transformer._forward_pre_hooks, transformer._forward_hooks):
        for key in [k for k, h in hooks.items() if isinstance(getattr(h, "__self__", None), _TimestepGroupHook)]:
            del hooks[key]
            transformer._forward_pre_hooks_with_kwargs.pop(key, None)
            transformer._forward_hooks_with_kwargs.pop(key, None)
    hook = _TimestepGroupHook(ctx, config)
    transformer.register_forward_pre_hook(hook.pre, with_kwargs=True)
    transformer.register_forward_hook(hook.post, with_kwargs=True, always_call=True)


def quantizable_linears(model: nn.Module, config: QuantConfig) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` that ``config`` selects, in module order."""
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and config.selects(n)]


class QuantizedWan(nn.Module):
    """A quantized Wan transformer with diffusers' ``WanTransformer3DModel`` call signature."""

    def __init__(self, transformer: nn.Module, config: QuantConfig, ctx: QuantContext | None = None) -> None:
        super().__init__()
        self.transformer = transformer
        self.qconfig = config
        object.__setattr__(self, "ctx", ctx or QuantContext())
        _install_group_hook(transformer, self.ctx, config)

    @classmethod
    def from_float(cls, transformer: nn.Module, config: QuantConfig, init: bool = True) -> QuantizedWan:
        """Replace the selected linears of ``transformer`` (in place) by ``QuantLinear``."""
        ctx = QuantContext()
        names = quantizable_linears(transformer, config)
        if not names:
            raise ValueError("the quantization config selects no nn.Linear of the model")
        for name in names:
            lin = transformer.get_submodule(name)
            assert isinstance(lin, nn.Linear)
            transformer.set_submodule(name, QuantLinear.from_linear(lin, config, ctx, init=init))
        return cls(transformer, config, ctx)

    # -- what diffusers' pipelines read from a transformer (ModelMixin's surface) -------------
    @property
    def config(self) -> Any:
        # diffusers pipelines read transformer.config (e.g. in_channels, patch_size).
        return self.transformer.config

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: that of the float (non-quantizer) parameters, as ModelMixin reports."""
        for name, p in self.transformer.named_parameters():
            if p.is_floating_point() and name.rpartition(".")[2] not in QUANTIZER_PARAMS:
                return p.dtype
        return torch.float32

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @contextlib.contextmanager
    def cache_context(self, name: str, **kwargs: Any) -> Iterator[None]:
        """diffusers' cache context (``WanPipeline`` enters it around every call), delegated."""
        inner = getattr(self.transformer, "cache_context", None)
        if inner is None:
            yield
            return
        with inner(name, **kwargs):
            yield

    def set_attention_backend(self, backend: str) -> None:
        """diffusers' attention backend switch, delegated (quantization does not touch attention)."""
        self.transformer.set_attention_backend(backend)

    def enable_cache(self, config: Any) -> None:
        self.transformer.enable_cache(config)

    def disable_cache(self) -> None:
        self.transformer.disable_cache()

    def quant_linears(self) -> dict[str, QuantLinear]:
        return {n: m for n, m in self.transformer.named_modules() if isinstance(m, QuantLinear)}

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        self.ctx.group = QF.timestep_group(timestep, self.qconfig.timestep_groups, self.qconfig.num_train_timesteps)
        try:
            return self.transformer(
                hidden_states=hidden_states,
                timestep=timestep,
                encoder_hidden_states=encoder_hidden_states,
                return_dict=return_dict,
                **kwargs,
            )
        finally:
            self.ctx.group = None
