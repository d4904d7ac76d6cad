"""QVGen's auxiliary module Phi: a low-rank float correction of the fake-quantized weight.

``y = Qa(x) @ (Qw(W) + (L * gamma) @ R)^T + b`` with ``L [N, r0]``, ``R [r0, K]`` and the decay
factors ``gamma [r0]`` (a buffer set by the rank-decay schedule). Phi is attached to a
``QuantLinear`` through its ``weight_delta`` hook, so it sees the quantized input and is never
quantized itself; it is never part of a checkpoint.

``L`` and ``R`` keep their full ``r0`` columns for the whole run (columns beyond the current rank
are zero and have gamma 0): parameter shapes never change, so neither DDP nor the optimizer has to
be rebuilt at a stage boundary; only the final deletion removes the parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qvgen_export.quant.modules import QuantLinear


class Phi(nn.Module):
    """``delta = (L * gamma) @ R`` restricted to the first ``rank`` columns (``[N, K]``, float32)."""

    def __init__(self, out_features: int, in_features: int, rank: int) -> None:
        super().__init__()
        self.L = nn.Parameter(torch.zeros(out_features, rank))
        self.R = nn.Parameter(torch.zeros(rank, in_features))
        self.register_buffer("gamma", torch.ones(rank))
        # Active columns; a plain int so the slice below is static (columns >= rank are zero anyway).
        self.rank = rank

    def forward(self) -> torch.Tensor:
        r = self.rank
        if r == 0:
            return torch.zeros(self.L.shape[0], self.R.shape[1], dtype=self.L.dtype, device=self.L.device)
        return (self.L[:, :r] * self.gamma[:r]) @ self.R[:r]

    @torch.no_grad()
    def init_from_error(self, error: torch.Tensor) -> torch.Tensor:
        """Rank-``r0`` SVD of the quantization error ``E = W - Qw(W)``; returns E's singular values.

        ``L = U[:, :r] * sqrt(S[:r])``, ``R = sqrt(S[:r])[:, None] * V^T[:r]`` (fp32).
        """
        u, s, vh = torch.linalg.svd(error.detach().float(), full_matrices=False)
        r = min(self.L.shape[1], s.numel())
        root = s[:r].sqrt()
        self.L.zero_()
        self.R.zero_()
        self.L[:, :r] = u[:, :r] * root
        self.R[:r] = root[:, None] * vh[:r]
        self.gamma.fill_(1.0)
        self.rank = self.L.shape[1]
        return s

    @torch.no_grad()
    def spectrum(self, rank: int | None = None) -> torch.Tensor:
        """Singular values of ``L[:, :rank] @ R[:rank]`` (descending), via two thin QRs.

        ``L = Qa Ra``, ``R^T = Qb Rb`` -> ``L R = Qa (Ra Rb^T) Qb^T``: the ``r x r`` core has the
        same singular values, so no ``N x K`` SVD is needed (real Wan layers are 5120 x 13824).
        """
        r = self.rank if rank is None else rank
        if r == 0:
            return torch.zeros(0)
        _, ra = torch.linalg.qr(self.L[:, :r].float())
        _, rb = torch.linalg.qr(self.R[:r].float().T)
        return torch.linalg.svdvals(ra @ rb.T)

    @torch.no_grad()
    def resvd(self, new_rank: int) -> torch.Tensor:
        """Keep ``L[:, :new_rank] @ R[:new_rank]``, re-decompose it by SVD in fp32, zero the rest.

        Returns the singular values of the kept product. The product is preserved exactly (up to
        float rounding); the columns are again ordered by singular value.
        """
        if new_rank == 0:
            self.L.zero_()
            self.R.zero_()
            self.gamma.zero_()
            self.rank = 0
            return torch.zeros(0)
        la, rr = self.L[:, :new_rank].float(), self.R[:new_rank].float()
        qa, ra = torch.linalg.qr(la)  # [N, r], [r, r]
        qb, rb = torch.linalg.qr(rr.T)  # [K, r], [r, r]
        uc, s, vhc = torch.linalg.svd(ra @ rb.T)  # core [r, r]
        root = s.sqrt()
        new_l = (qa @ uc) * root  # [N, r]
        new_r = root[:, None] * (vhc @ qb.T)  # [r, K]
        self.L.zero_()
        self.R.zero_()
        self.L[:, :new_rank] = new_l.to(self.L.dtype)
        self.R[:new_rank] = new_r.to(self.R.dtype)
        self.rank = new_rank
        return s


def phi_key(layer_name: str) -> str:
    """ModuleDict keys may not contain dots."""
    return layer_name.replace(".", "__")


def attach_phis(layers: dict[str, QuantLinear], rank: int | Callable[[QuantLinear], int]) -> dict[str, Phi]:
    """Create one Phi per layer, initialised from ``W - Qw(W)``, and hook it into ``weight_delta``.

    ``rank`` is every layer's r0, or a function of the layer giving its own (``phi_rank_frac``).
    Returns ``{layer name: Phi}`` (the caller registers them under its own module so that DDP and
    the optimizer see their parameters).
    """
    phis: dict[str, Phi] = {}
    for name, layer in layers.items():
        phi = Phi(layer.out_features, layer.in_features, rank(layer) if callable(rank) else rank)
        phi.init_from_error(quant_error(layer))
        # object.__setattr__: a plain attribute, so Phi does not become a submodule of the layer (it
        # must stay out of the quantized model's state_dict); calling it runs Phi.forward.
        object.__setattr__(layer, "weight_delta", phi)
        phis[name] = phi
    return phis


def detach_phis(layers: dict[str, QuantLinear]) -> None:
    """Remove every Phi hook: the layers compute plain ``Qa(x) @ Qw(W)^T + b`` again."""
    for layer in layers.values():
        layer.weight_delta = None


@torch.no_grad()
def quant_error(layer: QuantLinear) -> torch.Tensor:
    """``E = W - Qw(W)`` (fp32, detached): what Phi is initialised from."""
    return layer.weight.detach().float() - layer.quantized_weight().detach().float()


@torch.no_grad()
def error_spectrum(layer: QuantLinear) -> torch.Tensor:
    """Singular values of ``W - Qw(W)``, descending (all ``min(N, K)`` of them)."""
    return torch.linalg.svdvals(quant_error(layer))


def rank_energy_share(s: torch.Tensor, rank: int = 32) -> float:
    """Share of the energy (sum of sigma^2) in the top ``rank`` singular values of ``s`` (descending)."""
    total = float((s.double() ** 2).sum())
    return float((s[:rank].double() ** 2).sum()) / total if total > 0 else 0.0


def small_singular_share(s: torch.Tensor, ratio: float = 14.0) -> float:
    """Share of singular values below ``sigma_1 / ratio`` (the paper's statistic, ratio 14)."""
    if s.numel() == 0 or float(s[0]) <= 0:
        return 0.0
    return float((s < s[0] / ratio).float().mean())
