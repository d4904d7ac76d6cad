"""Sub-byte packing of integer codes.

Layout (the checkpoint's, see ``docs/checkpoint-format.md``):
- codes are unsigned levels ``0 .. 2^b - 1`` of a ``[N, K]`` weight (row = output channel);
- ``b <= 4`` (INT4, and INT3/INT2 in 4-bit containers): two codes per byte along K,
  ``packed[n, j] = codes[n, 2j] | (codes[n, 2j+1] << 4)`` (low nibble = even column);
  an odd K is padded with a zero code, so ``packed`` is ``[N, ceil(K/2)]`` uint8;
- ``b > 4``: one code per byte, ``[N, K]`` uint8.
"""

from __future__ import annotations

import numpy as np
import torch


def container_bits(bits: int) -> int:
    return 4 if bits <= 4 else 8


def packed_shape(n: int, k: int, bits: int) -> tuple[int, int]:
    return (n, (k + 1) // 2) if container_bits(bits) == 4 else (n, k)


def pack_codes(codes: torch.Tensor | np.ndarray, bits: int) -> torch.Tensor:
    """``[N, K]`` integer codes -> packed uint8 tensor (see module docstring)."""
    c = torch.as_tensor(codes)
    if c.dim() != 2:
        raise ValueError(f"codes must be 2-D [N, K], got shape {tuple(c.shape)}")
    if c.is_floating_point():
        c = torch.round(c)
    c = c.to(torch.int64)
    qmax = 2**bits - 1
    if c.numel() and (int(c.min()) < 0 or int(c.max()) > qmax):
        raise ValueError(f"codes out of range 0..{qmax} for {bits}-bit packing")
    c = c.to(torch.uint8)
    if container_bits(bits) == 8:
        return c.contiguous()
    n, k = c.shape
    if k % 2:
        c = torch.cat([c, torch.zeros(n, 1, dtype=torch.uint8)], dim=1)
    return (c[:, 0::2] | (c[:, 1::2] << 4)).contiguous()


def unpack_codes(packed: torch.Tensor, k: int, bits: int) -> torch.Tensor:
    """Packed uint8 -> ``[N, K]`` uint8 codes."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed codes must be uint8, got {packed.dtype}")
    if container_bits(bits) == 8:
        return packed[:, :k].contiguous()
    n = packed.shape[0]
    out = torch.empty(n, packed.shape[1] * 2, dtype=torch.uint8)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return out[:, :k].contiguous()
