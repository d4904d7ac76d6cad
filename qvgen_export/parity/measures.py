"""The comparison measures every part of the project uses: cosine, PSNR, and strict-JSON output.

One implementation each (the parity check, the quality harness and the benchmarks import these),
so that two reports of the same pair of tensors can never disagree. Identical inputs give an
infinite PSNR; ``json_safe`` writes it as the string ``"inf"`` because strict JSON has no infinity.
numpy only, so the quality harness can import this without the parity stack.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of the flattened arrays (1.0 for two equal all-zero arrays)."""
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    den = np.linalg.norm(a64) * np.linalg.norm(b64)
    return float(a64 @ b64 / den) if den > 0 else float(np.array_equal(a64, b64))


def psnr(ref: np.ndarray, test: np.ndarray, peak: float | None = None) -> float:
    """PSNR in dB of ``test`` against ``ref``; ``peak`` defaults to the reference's value range
    (pass ``peak=1.0`` for images in [0, 1]). Infinite for identical inputs."""
    if ref.shape != test.shape:
        raise ValueError(f"psnr: shapes differ, {ref.shape} vs {test.shape}")
    ref64, test64 = ref.astype(np.float64), test.astype(np.float64)
    mse = float(np.mean((ref64 - test64) ** 2))
    if peak is None:
        peak = float(ref64.max() - ref64.min()) or 1.0
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def json_safe(v: Any) -> Any:
    """Strict JSON: non-finite floats (an identical pair's PSNR) become "inf" / "-inf" / "nan"."""
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v
