"""A function-preserving channel-range spread for a Wan transformer: the representative QAT testbed.

Why: real DiT layers have a few output channels whose weight ranges are much larger than the rest.
With per-output-channel weight quantization the step, hence the error row of ``W - Qw(W)``, grows
with the row's range, so a few wide rows make the error spectrum steep (a few large singular
values, the rest small): the setting QVGen's Phi (a rank-r correction) and its rank decay are built
for (the paper: 73% of Phi's singular values below sigma_1/14 on Wan at step 0). The trained tiny
teacher has no such rows: its error spectrum is as flat as a Gaussian matrix's (rank 32 keeps
~61% of the energy). This module gives the teacher such rows without changing what it computes.

How: in every attention of every block (``attn1`` self-, ``attn2`` cross-attention), ``k`` seeded
output channels ``c`` of ``to_v`` (weight row and bias) are multiplied by ``a_c > 1`` and the
matching input columns of ``to_out.0`` are divided by ``a_c``. Between the two, diffusers'
``WanAttnProcessor`` (T2V) only reshapes V into heads, takes ``softmax(QK^T) V`` (linear in V,
channel by channel, bias included since the softmax rows sum to 1) and flattens the heads back:
no norm and no rotary embedding touches V (``norm_q``/``norm_k`` and RoPE act on Q and K). So
``to_out.0(attn(V'))`` equals ``to_out.0(attn(V))`` up to float rounding, and the float teacher,
its samples and every float reference are unchanged; only the quantization problem changes.
Refused: attention with added K/V projections (Wan I2V's image context, which is summed into the
same ``to_out`` input and would need ``add_v_proj`` scaled alike) and fused QKV/KV projections.

Factors: ``a_c = factor * exp(log_sigma * z_c)``, ``z_c ~ N(0, 1)``, channels drawn without
replacement; one ``torch.Generator`` seeded with ``seed`` walks the attentions in module order,
so the result is a function of ``(model structure, ChannelSpread)`` only.

What it does not model:
- Weight outliers outside V/O. The FFN (``ffn.net.0.proj -> GELU(tanh) -> ffn.net.2``) is left
  alone: GELU is not positively homogeneous, so a row scale cannot be undone after it. Q and K are
  left alone because ``rms_norm_across_heads`` normalises over all channels (a per-channel scale
  changes the RMS). The condition embedder (SiLU/GELU between its linears) and ``proj_out`` (its
  output is the model's output) are left alone too.
- The activations follow the weights: ``to_out.0``'s input carries the same ``k`` channels ``a_c``
  times larger (V's outliers), so per-token activation quantization of ``to_out.0`` also gets
  harder, as it does with the activation outlier channels of real DiTs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

# The attribute a reparametrised model carries (the ChannelSpread's fields), so that it is never
# spread twice and a trainer can check that its teacher and its config agree.
MARKER = "_qvgen_channel_spread"


@dataclasses.dataclass(frozen=True)
class ChannelSpread:
    """Which channels of each attention's V/O pair are scaled, and by how much.

    The defaults are the testbed's (docs/qat-trainer.md, "A representative testbed"): 8 of 128
    channels per attention, factors around 32 (log-normal spread 0.5), seed 0; chosen on a
    coarse grid by ``benchmarks/testbed_spectrum.py --sweep``.
    """

    channels: int = 8  # k: output channels of to_v scaled per attention
    factor: float = 32.0  # median factor a
    log_sigma: float = 0.5  # a_c = factor * exp(log_sigma * z_c), z_c ~ N(0, 1); 0: every a_c = factor
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.channels, int) or isinstance(self.channels, bool) or self.channels < 1:
            raise ValueError(f"channels must be a positive integer, got {self.channels!r}")
        if not self.factor > 0:
            raise ValueError(f"factor must be positive, got {self.factor!r}")
        if not self.log_sigma >= 0:
            raise ValueError(f"log_sigma must be >= 0, got {self.log_sigma!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: attention}`` of every block's ``attn1`` and ``attn2``, in module order."""
    return {
        name: mod
        for name, mod in model.named_modules()
        if name.rpartition(".")[2] in ("attn1", "attn2") and hasattr(mod, "to_v") and hasattr(mod, "to_out")
    }


def channel_spread_of(model: nn.Module) -> dict[str, Any] | None:
    """The ``ChannelSpread`` fields ``model`` was reparametrised with, or None."""
    return getattr(model, MARKER, None)


def _check_attention(name: str, attn: nn.Module) -> None:
    if getattr(attn, "add_k_proj", None) is not None or getattr(attn, "add_v_proj", None) is not None:
        raise ValueError(f"{name}: attention with added K/V projections (I2V) is not supported")
    if getattr(attn, "fused_projections", False):
        raise ValueError(f"{name}: fused QKV/KV projections are not supported (unfuse them first)")
    if not isinstance(attn.to_v, nn.Linear) or not isinstance(attn.to_out[0], nn.Linear):
        raise TypeError(f"{name}: to_v and to_out.0 must be float nn.Linear (apply before quantizing)")


@torch.no_grad()
def apply_channel_spread(model: nn.Module, spec: ChannelSpread | None = None) -> dict[str, dict[str, list[Any]]]:
    """Reparametrise ``model`` in place (see the module docstring); returns what was scaled.

    Returns ``{attention name: {"channels": [c, ...], "factors": [a_c, ...]}}``. The model is
    marked with ``spec`` (:func:`channel_spread_of`).

    Raises:
        ValueError: the model is already reparametrised, has no attention, has more channels
            requested than V has, or an attention this reparametrisation does not preserve.
        TypeError: ``to_v`` or ``to_out.0`` is not a float ``nn.Linear`` (e.g. already quantized).
    """
    spec = spec or ChannelSpread()
    if channel_spread_of(model) is not None:
        raise ValueError(f"the model already carries a channel spread ({channel_spread_of(model)})")
    attns = attention_modules(model)
    if not attns:
        raise ValueError("no attn1/attn2 attention modules with to_v and to_out found")
    for name, attn in attns.items():
        _check_attention(name, attn)
        if spec.channels > attn.to_v.out_features:
            raise ValueError(f"{name}: {spec.channels} channels requested, V has {attn.to_v.out_features}")
    gen = torch.Generator().manual_seed(spec.seed)
    record: dict[str, dict[str, list[Any]]] = {}
    for name, attn in attns.items():
        v, o = attn.to_v, attn.to_out[0]
        chans = torch.randperm(v.out_features, generator=gen)[: spec.channels].sort().values
        z = torch.randn(spec.channels, generator=gen, dtype=torch.float64)
        factors = spec.factor * torch.exp(spec.log_sigma * z)
        a = factors.to(v.weight.dtype)
        v.weight[chans] *= a[:, None]
        if v.bias is not None:
            v.bias[chans] *= a
        o.weight[:, chans] /= a.to(o.weight.dtype)[None, :]
        record[name] = {"channels": chans.tolist(), "factors": [float(x) for x in a]}
    setattr(model, MARKER, spec.to_dict())
    return record
