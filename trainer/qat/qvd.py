"""QVD (seed 003, arXiv 2407.11585) as a fake-quant PyTorch PTQ baseline, for evaluation only.

Two parts, both calibrated on float-model activations at the sampler's timesteps:

- **HTDQ** for the skewed time-embedding ("temporal") features, i.e. the inputs of the linears
  matched by ``temporal_patterns`` (Wan: ``condition_embedder.time_embedder.*`` and ``time_proj``,
  whose inputs are SiLU outputs): a logarithmic quantizer with a relaxation coefficient alpha,
  ``x_hat = sign(x) * s * 2^(-k / alpha)``, ``k = clamp(round(-alpha * log2(|x| / s)), 0, kmax)``
  (``s`` = calibrated max |x|; codes beyond ``kmax`` flush to zero). alpha = 1 is the plain log2
  quantizer; larger alpha spends the levels on a narrower, finer-spaced range. alpha (or a plain
  uniform quantizer, which the search may also pick) is chosen per layer by the composite metric
  ``K = relative L2 error - beta * TDScore`` of the layer's outputs over the timesteps.
- **TDScore** (temporal discriminability; the seed names it without a formula, so this is our
  reading): for the layer outputs ``y_t`` (float) and ``q_t`` (quantized) at the calibration
  timesteps, ``mean_t [cos(q_t, y_t) - max_{0 < |j - t| <= n} cos(q_t, y_j)]``: how much closer each
  quantized feature stays to its own timestep's float feature than to its neighbours'.
- **SCRI** for every other linear: per-channel scaling ``m_c = (R / r_c)^a`` (``r_c`` = channel
  c's calibrated max |x|, ``R`` = the largest ``r_c``) widens each channel's range towards the
  overall one before a per-tensor static activation quantizer; the inverse is folded into the
  weight columns (``x W^T = (x * m) (W / m)^T``), which are then quantized per output channel
  (MSE-searched ranges). The strength ``a`` is picked per layer from a grid by output MSE.

Bit widths default to W8A8, the setting QVD targets. The result is a copy of the float model
with ``QVDLinear`` layers; it keeps diffusers' call signature, so the quality harness runs it.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qvgen_export.quant import functional as QF
from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.ptq import mse_search_weight


@dataclasses.dataclass(frozen=True)
class QVDConfig:
    weight_bits: int = 8
    act_bits: int = 8
    temporal_patterns: tuple[str, ...] = ("condition_embedder.time_embedder.*", "condition_embedder.time_proj")
    relax_grid: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
    scri_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    td_weight: float = 1.0  # beta in K = L2 - beta * TDScore
    td_neighbors: int = 2
    max_tokens: int = 2048  # calibration tokens kept per layer for the SCRI search

    def __post_init__(self) -> None:
        QuantConfig(weight_bits=self.weight_bits, act_bits=self.act_bits)  # validates the bit widths
        if not self.relax_grid or min(self.relax_grid) <= 0:
            raise ValueError(f"relax_grid must hold positive coefficients, got {self.relax_grid}")


def log_quant(x: torch.Tensor, s: torch.Tensor, alpha: float, bits: int) -> torch.Tensor:
    """Signed logarithmic fake quantization with relaxation ``alpha`` (1 sign bit, ``2^(b-1)`` levels)."""
    kmax = 2 ** (bits - 1) - 2  # one code of the magnitude range is kept for zero
    mag = x.abs().clamp_min(1e-30)
    k = torch.round(-alpha * torch.log2(mag / s))
    q = torch.sign(x) * s * torch.pow(2.0, -k.clamp(min=0) / alpha)
    return torch.where(k > kmax, torch.zeros_like(x), q)


def uniform_static(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-tensor static asymmetric fake quantization on a calibrated range ``[lo, hi]``."""
    qmax = 2**bits - 1
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / qmax, min=QF.ACT_SCALE_EPS)
    zp = torch.round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zp, 0, qmax) - zp) * scale


def td_score(q: torch.Tensor, y: torch.Tensor, neighbors: int) -> float:
    """TDScore of quantized features ``q [T, D]`` against float features ``y [T, D]`` (timestep-major)."""
    qn, yn = F.normalize(q.float(), dim=-1), F.normalize(y.float(), dim=-1)
    sim = qn @ yn.T  # [T, T]
    n = sim.shape[0]
    scores = []
    for t in range(n):
        nb = [j for j in range(max(0, t - neighbors), min(n, t + neighbors + 1)) if j != t]
        if nb:
            scores.append(float(sim[t, t] - sim[t, nb].max()))
    return sum(scores) / len(scores) if scores else 0.0


class QVDLinear(nn.Module):
    """``y = Qa(x * m) @ Qw(W / m)^T + b`` (SCRI) or ``y = LogQ_alpha(x) @ Qw(W)^T + b`` (HTDQ)."""

    def __init__(self, linear: nn.Linear, mode: str, params: dict[str, Any], config: QVDConfig) -> None:
        super().__init__()
        self.mode = mode
        self.act_bits = config.act_bits
        m = params.get("m")
        w = linear.weight.detach().float()
        if m is not None:
            w = w / m[None, :]
        qcfg = QuantConfig(weight_bits=config.weight_bits, act_bits=config.act_bits)
        if params.get("search", True):
            s, z = mse_search_weight(w, qcfg)
        else:  # plain per-channel min/max: a cheap stand-in while candidates are compared
            lo, hi = w.amin(dim=1, keepdim=True).clamp(max=0.0), w.amax(dim=1, keepdim=True).clamp(min=0.0)
            s = ((hi - lo) / qcfg.weight_qmax).clamp(min=1e-12)
            z = -lo / s
        # A frozen Parameter rather than a buffer: diffusers' Wan reads the dtype of the time
        # embedder's first parameter.
        self.w_hat = nn.Parameter(QF.fake_quant_weight(w, s, z, qcfg.weight_qmax), requires_grad=False)
        self.register_buffer("bias", linear.bias.detach().float().clone() if linear.bias is not None else None)
        self.register_buffer("m", m)
        self.register_buffer("lo", params.get("lo"))
        self.register_buffer("hi", params.get("hi"))
        self.register_buffer("s", params.get("s"))
        self.alpha = float(params.get("alpha", 1.0))
        self.choice = params.get("choice", "")

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.mode == "log":
            return log_quant(x, self.s, self.alpha, self.act_bits)
        if self.m is not None:
            x = x * self.m
        return uniform_static(x, self.lo, self.hi, self.act_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quant_input(x), self.w_hat, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.mode}, {self.choice}"


@torch.no_grad()
def _collect(model: nn.Module, batches: list[dict[str, torch.Tensor]], names: list[str], cfg: QVDConfig) -> Any:
    absmax: dict[str, torch.Tensor] = {}
    chmin: dict[str, torch.Tensor] = {}
    chmax: dict[str, torch.Tensor] = {}
    tokens: dict[str, list[torch.Tensor]] = defaultdict(list)
    per_t: dict[str, list[torch.Tensor]] = defaultdict(list)
    gen = torch.Generator().manual_seed(0)
    handles = []

    def hook(name: str) -> Any:
        def fn(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            x = inp[0].detach().float().reshape(-1, inp[0].shape[-1])  # [tokens, K]
            a = x.abs().amax(dim=0)
            absmax[name] = a if name not in absmax else torch.maximum(absmax[name], a)
            lo, hi = x.amin(dim=0), x.amax(dim=0)
            chmin[name] = lo if name not in chmin else torch.minimum(chmin[name], lo)
            chmax[name] = hi if name not in chmax else torch.maximum(chmax[name], hi)
            per_batch = max(1, cfg.max_tokens // max(1, len(batches)))
            idx = torch.randperm(x.shape[0], generator=gen)[:per_batch]
            tokens[name].append(x[idx])
            per_t[name].append(inp[0].detach().float().reshape(-1, inp[0].shape[-1])[0])

        return fn

    for n in names:
        handles.append(model.get_submodule(n).register_forward_hook(hook(n)))
    try:
        for b in batches:
            model(b["hidden_states"], b["timestep"], b["encoder_hidden_states"], return_dict=False)
    finally:
        for h in handles:
            h.remove()
    ranges = {n: (chmin[n], chmax[n]) for n in chmin}
    return absmax, ranges, {n: torch.cat(v) for n, v in tokens.items()}, {n: torch.stack(v) for n, v in per_t.items()}


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@torch.no_grad()
def qvd_quantize(
    model: nn.Module, calib_batches: Iterable[dict[str, torch.Tensor]], config: QVDConfig | None = None
) -> tuple[nn.Module, dict[str, str]]:
    """A QVD fake-quant copy of the float ``model`` and the choice made for each layer.

    ``calib_batches``: dicts of ``hidden_states``, ``timestep``, ``encoder_hidden_states``, one
    timestep per batch in sampling order (``qvgen_eval.harness.calibration_batches``).
    """
    cfg = config or QVDConfig()
    batches = list(calib_batches)
    if not batches:
        raise ValueError("QVD needs at least one calibration batch")
    qmodel = copy.deepcopy(model).float().eval()
    names = [n for n, m in qmodel.named_modules() if type(m) is nn.Linear]
    absmax, ranges, tokens, per_t = _collect(qmodel, batches, names, cfg)
    choices: dict[str, str] = {}
    for name in names:
        lin = qmodel.get_submodule(name)
        assert isinstance(lin, nn.Linear)
        y_ref = F.linear(tokens[name], lin.weight.float(), None)
        if any(fnmatch.fnmatchcase(name, p) for p in cfg.temporal_patterns):
            feats = per_t[name]  # [T, K], one row per calibration timestep
            y_t = F.linear(feats, lin.weight.float(), None)
            s = feats.abs().amax().clamp_min(1e-12)
            cands: list[tuple[str, dict[str, Any]]] = [
                (f"log alpha={a:g}", {"s": s.reshape(()), "alpha": a}) for a in cfg.relax_grid
            ]
            cands.append(("uniform", {"lo": feats.amin().reshape(()), "hi": feats.amax().reshape(())}))
            best, best_k = None, math.inf
            for label, params in cands:
                mode = "log" if "alpha" in params else "uniform"
                layer = QVDLinear(lin, mode, {**params, "choice": label}, cfg)
                q_t = F.linear(layer.quant_input(feats), layer.w_hat, None)
                k = _rel_l2(q_t, y_t) - cfg.td_weight * td_score(q_t, y_t, cfg.td_neighbors)
                if k < best_k:
                    best, best_k = layer, k
            assert best is not None
        else:
            r = absmax[name].clamp_min(1e-8)
            best, best_err, best_params = None, math.inf, {}
            for a in cfg.scri_grid:
                m = (r.max() / r) ** a
                # Static range of the scaled input over every calibration token (per-channel min/max * m).
                lo, hi = (ranges[name][0] * m).amin(), (ranges[name][1] * m).amax()
                params = {"m": m, "lo": lo.reshape(()), "hi": hi.reshape(()), "choice": f"scri a={a:g}"}
                layer = QVDLinear(lin, "uniform", {**params, "search": False}, cfg)
                err = float((F.linear(layer.quant_input(tokens[name]), layer.w_hat, None) - y_ref).pow(2).mean())
                if err < best_err:
                    best, best_err, best_params = layer, err, params
            assert best is not None
            best = QVDLinear(lin, "uniform", best_params, cfg)  # the chosen one with MSE-searched weights
        choices[name] = best.choice
        parent, _, child = name.rpartition(".")
        setattr(qmodel.get_submodule(parent) if parent else qmodel, child, best)
    return qmodel, choices
