"""Activation / weight test cases shared by the CPU-reference and the CUDA tests.

Each case is ``(x [M, K] float32, clip_lo [B], clip_hi [B], tokens_per_sample)`` with
``M = B * tokens_per_sample``; adversarial ones target the edges of the quantizer and the GEMM
tiling (odd M, K not a multiple of 64, odd K, ties at .5, constant rows, zero rows, clip 0).
"""

from __future__ import annotations

import zlib

import numpy as np

F32 = np.float32

CASES = (
    "random",
    "batched",
    "one",
    "odd_k",
    "k_tile",
    "all_equal_pos",
    "all_equal_neg",
    "zero_rows",
    "extreme_clip",
    "ties",
    "outlier",
    "huge",
    "tiny",
    "multi_tile",
)
# Cases whose values overflow or underflow float16/bfloat16 inputs.
F32_ONLY = {"huge", "tiny"}


def make_case(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    rng = np.random.default_rng(zlib.crc32(name.encode()) + seed)  # str hash() is salted per process

    def clips(b: int) -> tuple[np.ndarray, np.ndarray]:
        return (rng.uniform(0.5, 0.95, b).astype(F32), rng.uniform(0.5, 0.95, b).astype(F32))

    if name == "random":
        lo, hi = clips(1)
        return rng.standard_normal((37, 67)).astype(F32), lo, hi, 37
    if name == "batched":
        lo, hi = clips(3)
        return (rng.standard_normal((33, 130)) * 2 + 0.3).astype(F32), lo, hi, 11
    if name == "one":
        return np.array([[0.7]], F32), np.array([0.9], F32), np.array([0.9], F32), 1
    if name == "odd_k":
        lo, hi = clips(5)
        return rng.standard_normal((5, 1001)).astype(F32), lo, hi, 1
    if name == "k_tile":
        lo, hi = clips(2)
        return rng.standard_normal((64, 128)).astype(F32), lo, hi, 32
    if name == "all_equal_pos":
        return np.full((6, 40), 3.25, F32), np.array([0.9], F32), np.array([0.8], F32), 6
    if name == "all_equal_neg":
        return np.full((6, 41), -2.0, F32), np.array([0.9], F32), np.array([0.8], F32), 6
    if name == "zero_rows":
        x = rng.standard_normal((9, 96)).astype(F32)
        x[[0, 4, 8]] = 0.0
        return x, np.array([0.9], F32), np.array([0.9], F32), 9
    if name == "extreme_clip":
        # sample 0: a tiny lower clip; sample 1: clip 1.0; sample 2: clip 0 (scale hits the 1e-8 floor)
        x = rng.standard_normal((6, 77)).astype(F32) * 5
        return x, np.array([1e-6, 1.0, 0.0], F32), np.array([1.0, 1.0, 0.0], F32), 2
    if name == "ties":
        # range [-7, 8] with clip 1 and qmax 15 -> scale 1, zero 7; x/scale = n + 0.5 hits every tie
        row = np.concatenate([[-7.0, 8.0], np.arange(-6.5, 8.0, 1.0)]).astype(F32)
        return np.tile(row, (4, 1)), np.array([1.0], F32), np.array([1.0], F32), 4
    if name == "outlier":
        x = rng.standard_normal((16, 200)).astype(F32)
        x[:, 17] = 3e4
        x[3, 5] = -5e3
        return x, np.array([0.95], F32), np.array([0.95], F32), 16
    if name == "huge":
        return (rng.standard_normal((4, 50)) * 1e30).astype(F32), np.array([0.9], F32), np.array([0.9], F32), 4
    if name == "tiny":
        return (rng.standard_normal((4, 50)) * 1e-30).astype(F32), np.array([0.9], F32), np.array([0.9], F32), 4
    if name == "multi_tile":
        lo, hi = clips(2)
        return rng.standard_normal((258, 320)).astype(F32), lo, hi, 129
    raise KeyError(name)


def make_weight(n: int, k: int, bits: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random weight codes ``[N, K]`` int64, scales ``[N]``, float zero points ``[N]``, bias ``[N]``."""
    rng = np.random.default_rng(seed + 7 * n + k)
    qmax = 2**bits - 1
    codes = rng.integers(0, qmax + 1, size=(n, k))
    scale = rng.uniform(1e-3, 2e-2, n).astype(F32)
    zero = rng.uniform(0, qmax, n).astype(F32)
    bias = rng.standard_normal(n).astype(F32)
    return codes, scale, zero, bias
