"""NumPy reference of the W4A4 math (independent of torch and of the C++ code).

Every float operation is a numpy float32 operation (IEEE, round to nearest even), in the order
of qvgen_export/quant/functional.py; integers are int64.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def act_quant(
    x: np.ndarray, clip_lo: np.ndarray, clip_hi: np.ndarray, tokens_per_sample: int, bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``x [M, K]`` float32 -> (codes [M, K] int64, scale [M] f32, zero [M] int64, sum [M] int64)."""
    x = np.asarray(x, dtype=F32)
    m, _k = x.shape
    qmax = F32(2**bits - 1)
    sample = np.arange(m) // tokens_per_sample
    lo = np.minimum(x.min(axis=1), F32(0)) * np.asarray(clip_lo, F32)[sample]
    hi = np.maximum(x.max(axis=1), F32(0)) * np.asarray(clip_hi, F32)[sample]
    scale = np.maximum((hi - lo) / qmax, F32(1e-8)).astype(F32)
    zero = np.clip(np.rint(-lo / scale), F32(0), qmax).astype(F32)
    with np.errstate(over="ignore"):
        codes = np.clip(np.rint(x / scale[:, None]) + zero[:, None], F32(0), qmax)
    codes = codes.astype(np.int64)
    return codes, scale, zero.astype(np.int64), codes.sum(axis=1)


def pack(codes: np.ndarray, ld: int | None = None) -> np.ndarray:
    """``[R, K]`` codes -> ``[R, ld]`` uint8, low nibble = even k, zero padding."""
    r, k = codes.shape
    kb = (k + 1) // 2
    ld = kb if ld is None else ld
    c = np.zeros((r, 2 * kb), dtype=np.uint8)
    c[:, :k] = codes
    out = np.zeros((r, ld), dtype=np.uint8)
    out[:, :kb] = c[:, 0::2] | (c[:, 1::2] << 4)
    return out


def unpack(packed: np.ndarray, k: int) -> np.ndarray:
    lo = packed & 0x0F
    hi = packed >> 4
    out = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.int64)
    out[:, 0::2] = lo
    out[:, 1::2] = hi
    return out[:, :k]


def gemm_int(qx: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """Exact ``sum_k qx[m,k] * qw[n,k]`` as int64."""
    return qx.astype(np.int64) @ qw.astype(np.int64).T


def gemm_epilogue_f64(
    acc: np.ndarray,
    x_scale: np.ndarray,
    x_zero: np.ndarray,
    x_sum: np.ndarray,
    w_scale: np.ndarray,
    w_zero: np.ndarray,
    w_sum: np.ndarray,
    bias: np.ndarray | None,
    k: int,
) -> np.ndarray:
    """The zero-point corrected epilogue in float64 (for tolerance checks of the float32 one)."""
    sx, zx, sumx = (np.asarray(a, np.float64)[:, None] for a in (x_scale, x_zero, x_sum))
    sw, zw, sumw = (np.asarray(a, np.float64)[None, :] for a in (w_scale, w_zero, w_sum))
    y = sx * sw * (acc - zw * sumx - zx * sumw + k * zx * zw)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)[None, :]
    return y
