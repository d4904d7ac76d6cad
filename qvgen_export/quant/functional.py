"""Quantization math shared by training, PTQ, the PyTorch runtime and (mirrored op for op) the
ONNX lowering. Formulas are written once here; the export translation copies their op order
so that ONNX Runtime reproduces the codes bit for bit.

Notations
---------
- ``x``: activations ``[B, ..., C]`` (tokens along every dim but the last).
- ``w``: weight ``[N, K]`` (out, in); ``s``/``z``: weight scale and float zero point ``[N, G]``
  with ``G = K // group_size`` (``G = 1`` per channel).
- Weight fake quant: ``q = clamp(round(w / s + z), 0, qmax)``; ``w_hat = q * s - z * s``.
  (``q*s - z*s`` rather than ``(q - z)*s`` so that ONNX ``DequantizeLinear(q, s) - zs`` with a
  precomputed ``zs = z*s`` gives the same float32 bits.)
- Activation fake quant, per token: ``lo = min(min_c x, 0) * clip_lo``,
  ``hi = max(max_c x, 0) * clip_hi``; ``s = max((hi - lo) / qmax, EPS)``;
  ``zp = round(-lo / s)`` (in ``[0, qmax]`` because ``lo <= 0 <= hi``);
  ``q = clamp(round(x / s) + zp, 0, qmax)``; ``x_hat = (q - zp) * s``.
  Rounding is half-to-even everywhere (``torch.round`` and ONNX agree).
"""

from __future__ import annotations

import math

import torch

ACT_SCALE_EPS = 1e-8


def timestep_group(timestep: torch.Tensor, num_groups: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The one mapping from diffusion timestep (0..num_train_timesteps) to a clip-table row.

    ``k = clamp(floor(t * G / T), 0, G - 1)`` as int64, same shape as ``timestep``. Used
    identically in training, PyTorch inference and inside the exported graph.
    """
    t = timestep.to(torch.float32)
    k = torch.floor(t * float(num_groups) / float(num_train_timesteps))
    return k.clamp(0, num_groups - 1).to(torch.int64)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward, identity gradient."""
    return (torch.round(x) - x).detach() + x


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Same value, gradient multiplied by ``factor`` (LSQ gradient scaling)."""
    return (x - x * factor).detach() + x * factor


def lsq_grad_factor(in_features: int, bits: int) -> float:
    return 1.0 / math.sqrt(in_features * (2**bits - 1))


def expand_groups(t: torch.Tensor, k: int) -> torch.Tensor:
    """``[N, G] -> [N, K]`` by repeating each group column ``K // G`` times."""
    _n, g = t.shape
    if g == 1:
        return t
    return t.repeat_interleave(k // g, dim=1)


def weight_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    """Integer codes of ``w`` (float tensor holding integers; STE gradient)."""
    s = expand_groups(scale, w.shape[1])
    z = expand_groups(zero, w.shape[1])
    return torch.clamp(round_ste(w / s + z), 0, qmax)


def weight_dequant(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    s = expand_groups(scale, q.shape[1])
    zs = expand_groups(zero * scale, q.shape[1])
    return q * s - zs


def fake_quant_weight(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    return weight_dequant(weight_codes(w, scale, zero, qmax), scale, zero)


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample ``[B]`` (or scalar) factor against ``x [B, ..., C]``."""
    if v.dim() == 0:
        return v
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1)))


def act_range(x: torch.Tensor, clip_lo: torch.Tensor, clip_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped per-token range ``(lo, hi)``, each ``[B, ..., 1]``; ``clip_*`` are ``[B]`` factors."""
    xmin = torch.clamp(x.amin(dim=-1, keepdim=True), max=0.0)
    xmax = torch.clamp(x.amax(dim=-1, keepdim=True), min=0.0)
    return xmin * _per_sample(clip_lo, x), xmax * _per_sample(clip_hi, x)


def act_qparams(lo: torch.Tensor, hi: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token scale and integer zero point (as float) from a clipped range."""
    scale = torch.clamp((hi - lo) / float(qmax), min=ACT_SCALE_EPS)
    zp = torch.clamp(round_ste(-lo / scale), 0, qmax)
    return scale, zp


def act_codes(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmax: int) -> torch.Tensor:
    return torch.clamp(round_ste(x / scale) + zp, 0, qmax)


def fake_quant_act(x: torch.Tensor, clip_lo: torch.Tensor, clip_hi: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per-token dynamic asymmetric fake quantization of ``x`` (STE)."""
    lo, hi = act_range(x, clip_lo, clip_hi)
    scale, zp = act_qparams(lo, hi, qmax)
    return (act_codes(x, scale, zp, qmax) - zp) * scale


def clip_tables(
    lower_logits: torch.Tensor, upper_logits: torch.Tensor, base: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip factor tables ``base * sigmoid(logits)`` ``[T]``, computed over the whole table.

    Always the whole table, then gathered: the exported graph stores these tables as constants
    (ONNX Runtime's Sigmoid differs from PyTorch's in the last bit, and torch's vectorised and
    scalar paths may too), so PyTorch must compute them the one way the exporter does.
    """
    return base * torch.sigmoid(lower_logits), base * torch.sigmoid(upper_logits)


def clip_factors(
    lower_logits: torch.Tensor, upper_logits: torch.Tensor, group: torch.Tensor, base: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample clip factors ``base * sigmoid(logit[k])`` for group indices ``group [B]``."""
    lo, hi = clip_tables(lower_logits, upper_logits, base)
    return lo[group], hi[group]
