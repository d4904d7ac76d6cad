"""Weight range search for PTQ: QVGen's shrink search, vectorised, and plain min/max ranges.

:func:`mse_search_weight_fast` computes the same thing as ``ptq.mse_search_weight_reference``
(per row or row group, the shrink factor ``p`` of the grid minimising ``sum |Qw(w) - w|^2.4``,
first ``p`` on ties) but scores all candidates of a chunk of rows in one set of tensor ops,
in place, so the work runs in long vector loops over cache-sized chunks instead of 80 passes
over the whole layer with a fresh temporary per op.

Known difference (tested in tests/core/test_range_search.py): the error sums are the same
formula in the same order, but torch evaluates ``pow`` with a SIMD routine in the body of a
loop and the scalar libm one in its tail, and where a tail falls depends on the tensor's shape.
A candidate's error can therefore move by an ulp of one element, which changes the choice only
when two candidates' errors tie to within that (the chosen error then differs by < 1e-6 relative).
"""

from __future__ import annotations

from typing import Literal

import torch

from qvgen_export.quant.config import QuantConfig

SHRINK_GRID = torch.arange(100, 20, -1, dtype=torch.float64) / 100.0  # 1.00 .. 0.21
MSE_POWER = 2.4

WeightRanges = Literal["mse", "minmax"]
WEIGHT_RANGES: tuple[str, ...] = ("mse", "minmax")

# Elements of one chunk's [P, rows, G, group] error tensor: 2**20 floats = 4 MiB, whatever the
# layer, so memory stays bounded and the chunk stays near the caches.
CHUNK_ELEMENTS = 1 << 20


def scale_zero(lo: torch.Tensor, hi: torch.Tensor, config: QuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and float zero point of the range ``[lo, hi]`` (the one formula PTQ uses)."""
    qmax = config.weight_qmax
    if config.weight_symmetric:
        half = 2 ** (config.weight_bits - 1)
        s = torch.maximum(hi.abs(), lo.abs()) / max(half - 1, 1)
        return s.clamp(min=1e-12), torch.full_like(s, float(half))
    s = ((hi - lo) / qmax).clamp(min=1e-12)
    return s, -lo / s


def _grouped(w: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    n, k = w.shape
    g = config.weight_groups(k)
    return w.detach().float().reshape(n, g, k // g)


@torch.no_grad()
def minmax_weight_ranges(w: torch.Tensor, config: QuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain ranges: ``[min(w, 0), max(w, 0)]`` per row (group); the search's ``p = 1`` candidate."""
    wg = _grouped(w, config)
    return scale_zero(wg.amin(dim=-1).clamp(max=0.0), wg.amax(dim=-1).clamp(min=0.0), config)


@torch.no_grad()
def mse_search_weight_fast(
    w: torch.Tensor,
    config: QuantConfig,
    grid: torch.Tensor | None = None,
    power: float | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row (group) scale and float zero point ``[N, G]`` minimising ``|Qw(w) - w|^power``."""
    grid = SHRINK_GRID if grid is None else grid
    power = MSE_POWER if power is None else power
    wg = _grouped(w, config)  # [N, G, group]
    n, g, gs = wg.shape
    wmin = wg.amin(dim=-1).clamp(max=0.0)
    wmax = wg.amax(dim=-1).clamp(min=0.0)
    # Candidate scales and zero points [P, N, G], each computed exactly as the reference loop
    # does (a Python-float multiply per candidate: same rounding of p); they are tiny.
    cand = [scale_zero(wmin * p, wmax * p, config) for p in grid.tolist()]
    s_all = torch.stack([c[0] for c in cand])
    z_all = torch.stack([c[1] for c in cand])
    zs_all = z_all * s_all
    num_p = s_all.shape[0]
    qmax = float(config.weight_qmax)
    rows = max(1, chunk_elements // max(num_p * g * gs, 1))
    best = torch.empty(n, g, dtype=torch.int64)
    best_err = torch.empty(n, g)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        x = wg[r0:r1].unsqueeze(0)  # [1, r, G, gs]
        s = s_all[:, r0:r1, :, None]
        # The reference's op order, in place: ((clamp(round(w/s + z)) * s - z*s) - w).abs()^power
        t = x / s
        t.add_(z_all[:, r0:r1, :, None]).round_().clamp_(0.0, qmax)
        t.mul_(s).sub_(zs_all[:, r0:r1, :, None]).sub_(x).abs_().pow_(power)
        err = t.sum(dim=-1)  # [P, r, G]
        del t
        # argmin returns the first minimum: the reference keeps the earliest p on ties (strict <).
        best_err[r0:r1], best[r0:r1] = err.min(dim=0)
    s_best = s_all.gather(0, best.unsqueeze(0)).squeeze(0)
    z_best = z_all.gather(0, best.unsqueeze(0)).squeeze(0)
    # The reference starts from s = 1, z = 0 and only moves on a finite error (inf < inf is false).
    stuck = ~torch.isfinite(best_err) | torch.isnan(best_err)
    if bool(stuck.any()):
        s_best = torch.where(stuck, torch.ones_like(s_best), s_best)
        z_best = torch.where(stuck, torch.zeros_like(z_best), z_best)
    return s_best, z_best


def weight_ranges(w: torch.Tensor, config: QuantConfig, method: str = "mse") -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero)`` ``[N, G]`` of a weight by ``method``: ``"mse"`` (QVGen) or ``"minmax"``."""
    if method == "mse":
        return mse_search_weight_fast(w, config)
    if method == "minmax":
        return minmax_weight_ranges(w, config)
    raise ValueError(f"unknown weight range method {method!r}; expected one of {WEIGHT_RANGES}")
