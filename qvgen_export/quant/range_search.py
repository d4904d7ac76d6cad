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

Modes (``weight_ranges(w, config, method)``, ``qvgen-quantize --ranges``, ``ptq_quantize_folder``):

- ``"mse"``: every one of the 80 candidates (QVGen's search; the default). Its cost is 80
  evaluations of ``|.|^2.4`` per weight, and torch's float ``pow`` (~7.5 ns an element on one
  core of the 2-core dev machine) is most of it: 0.37-0.44 us a weight (wall, 2 threads, quiet
  machine). Wan 2.1 1.3B (1.42e9 quantized weights) streams through PTQ in 574 s measured at
  full depth (benchmarks/results/bench_scale_wan1_3b.json, the machine running nothing else;
  627 s extrapolated from 2 and 4 blocks in bench_scale_wan1_3b_ptq_ranges.json).
- ``"mse-fast"``: coarse to fine, 26 candidates instead of 80 (0.12-0.13 us a weight; Wan 2.1
  1.3B in 162 s measured at full depth, bench_scale_wan1_3b_ptq_msefast.json): every
  ``MSE_FAST_STEP``-th candidate (p = 1.00, 0.96, ..., 0.24), then the ``MSE_FAST_STEP - 1``
  candidates on each side of each row's best of those; the least error of all evaluated, the
  earliest p on ties. Every evaluated candidate's error is the one the exhaustive search
  computes, so a row's choice differs only where the exhaustive minimum lies outside the refined
  window (the error as a function of p is jagged, not unimodal). Documented difference, measured
  (tests/core/test_range_search.py asserts the looser bound on the tiny teacher):
  on the shipped tiny teacher (trained, 128-wide rows) 1.8% of rows (per channel, w4) and 1.1%
  of groups (w4, group 32) choose another p; a row's error is then at most +3.6% (per channel)
  or +13% (group 32), a layer's total at most +0.07%, the model's +0.015% (w4 per channel). On
  Wan-1.3B-wide random layers (1536x1536, 512x8960; Gaussian, Laplace, Student-t) per channel,
  at most 2 of 1536 rows differ, by at most +0.09% each (+1e-6 on the layer).
  The test asserts: <= 3% of row groups differ, each row <= +20%, each layer <= +0.15%.
"""

from __future__ import annotations

from typing import Literal

import torch

from qvgen_export.quant.config import QuantConfig

SHRINK_GRID = torch.arange(100, 20, -1, dtype=torch.float64) / 100.0  # 1.00 .. 0.21
MSE_POWER = 2.4

WeightRanges = Literal["mse", "mse-fast", "minmax"]
WEIGHT_RANGES: tuple[str, ...] = ("mse", "mse-fast", "minmax")
# "mse-fast": every MSE_FAST_STEP-th candidate, then the window around each row's best of them.
MSE_FAST_STEP = 4

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


def _candidate_errors(
    wg: torch.Tensor,
    s_all: torch.Tensor,
    z_all: torch.Tensor,
    zs_all: torch.Tensor,
    qmax: float,
    power: float,
    chunk_elements: int,
) -> torch.Tensor:
    """``sum |Qw(w) - w|^power`` ``[K, N, G]`` of candidates ``(s, z, z*s)`` ``[K, N, G]`` of ``wg``."""
    n, g, gs = wg.shape
    num_p = s_all.shape[0]
    rows = max(1, chunk_elements // max(num_p * g * gs, 1))
    err = torch.empty(num_p, n, g)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        x = wg[r0:r1].unsqueeze(0)  # [1, r, G, gs]
        s = s_all[:, r0:r1, :, None]
        # The reference's op order, in place: ((clamp(round(w/s + z)) * s - z*s) - w).abs()^power
        t = x / s
        t.add_(z_all[:, r0:r1, :, None]).round_().clamp_(0.0, qmax)
        t.mul_(s).sub_(zs_all[:, r0:r1, :, None]).sub_(x).abs_().pow_(power)
        torch.sum(t, dim=-1, out=err[:, r0:r1])
        del t
    return err


@torch.no_grad()
def mse_search_weight_fast(
    w: torch.Tensor,
    config: QuantConfig,
    grid: torch.Tensor | None = None,
    power: float | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
    coarse_step: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row (group) scale and float zero point ``[N, G]`` minimising ``|Qw(w) - w|^power``.

    ``coarse_step=1``: every candidate (the ``"mse"`` ranges). ``coarse_step=c > 1``: every
    ``c``-th candidate, then the ``c - 1`` on each side of each row's best of those (the
    ``"mse-fast"`` ranges, ``MSE_FAST_STEP``; see the module docstring for what that gives up).
    """
    grid = SHRINK_GRID if grid is None else grid
    power = MSE_POWER if power is None else power
    if coarse_step < 1:
        raise ValueError(f"coarse_step must be >= 1, got {coarse_step}")
    wg = _grouped(w, config)  # [N, G, group]
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
    if coarse_step == 1 or num_p <= coarse_step:
        # argmin returns the first minimum: the reference keeps the earliest p on ties (strict <).
        best_err, best = _candidate_errors(wg, s_all, z_all, zs_all, qmax, power, chunk_elements).min(dim=0)
    else:
        coarse = torch.arange(0, num_p, coarse_step)
        err_c = _candidate_errors(wg, s_all[coarse], z_all[coarse], zs_all[coarse], qmax, power, chunk_elements)
        best_c = coarse[err_c.argmin(dim=0)]  # [N, G], the earliest on ties
        offsets = [d for d in range(-(coarse_step - 1), coarse_step) if d != 0]
        idx = torch.stack([(best_c + d).clamp(0, num_p - 1) for d in offsets])  # [2(c-1), N, G]
        err_f = _candidate_errors(
            wg, s_all.gather(0, idx), z_all.gather(0, idx), zs_all.gather(0, idx), qmax, power, chunk_elements
        )
        # Among the coarse candidates and the refined window, the least error, the earliest p on ties.
        errs = torch.cat([err_c, err_f])
        cand_idx = torch.cat([coarse[:, None, None].expand_as(err_c), idx])
        best_err = errs.min(dim=0).values
        best = torch.where(errs == best_err, cand_idx, num_p).amin(dim=0)
    s_best = s_all.gather(0, best.unsqueeze(0)).squeeze(0)
    z_best = z_all.gather(0, best.unsqueeze(0)).squeeze(0)
    # The reference starts from s = 1, z = 0 and only moves on a finite error (inf < inf is false).
    stuck = ~torch.isfinite(best_err) | torch.isnan(best_err)
    if bool(stuck.any()):
        s_best = torch.where(stuck, torch.ones_like(s_best), s_best)
        z_best = torch.where(stuck, torch.zeros_like(z_best), z_best)
    return s_best, z_best


def weight_ranges(w: torch.Tensor, config: QuantConfig, method: str = "mse") -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero)`` ``[N, G]`` of a weight by ``method``: ``"mse"`` (QVGen, every candidate),
    ``"mse-fast"`` (coarse to fine, see the module docstring) or ``"minmax"``."""
    if method == "mse":
        return mse_search_weight_fast(w, config)
    if method == "mse-fast":
        return mse_search_weight_fast(w, config, coarse_step=MSE_FAST_STEP)
    if method == "minmax":
        return minmax_weight_ranges(w, config)
    raise ValueError(f"unknown weight range method {method!r}; expected one of {WEIGHT_RANGES}")
