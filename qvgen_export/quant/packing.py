"""Sub-byte packing of integer codes.

Layout (the checkpoint's, see ``docs/checkpoint-format.md``):
- codes are unsigned levels ``0 .. 2^b - 1`` of a ``[N, K]`` weight (row = output channel);
- ``b <= 4`` (INT4, and INT3/INT2 in 4-bit containers): two codes per byte along K,
  ``packed[n, j] = codes[n, 2j] | (codes[n, 2j+1] << 4)`` (low nibble = even column);
  an odd K is padded with a zero code, so ``packed`` is ``[N, ceil(K/2)]`` uint8;
- ``b > 4``: one code per byte, ``[N, K]`` uint8.

Kernel layout (the CUDA kernels, the C++ reference, the torch-int4 runtime and the TensorRT
plugin): the same bytes with every row zero-padded to ``KERNEL_ROW_ALIGN`` bytes, i.e.
``[N, kernel_row_bytes(K)]`` uint8, because the kernels load rows in aligned 16-byte vectors.
The plugin graph stores those rows typed int32 (``[N, kernel_row_bytes(K) // 4]``, little
endian: int32 word ``i`` holds codes ``8i .. 8i+7``, code ``8i+r`` in bits ``4r .. 4r+3``).
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
    qmax = 2**bits - 1
    if c.dtype == torch.uint8:  # already the container type (PTQ's codes): no int64 copy
        if c.numel() and int(c.max()) > qmax:
            raise ValueError(f"codes out of range 0..{qmax} for {bits}-bit packing")
    else:
        if c.is_floating_point():
            c = torch.round(c)
        c = c.to(torch.int64)
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
    out = torch.empty(n, packed.shape[1] * 2, dtype=torch.uint8, device=packed.device)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return out[:, :k].contiguous()


KERNEL_ROW_ALIGN = 16


def kernel_row_bytes(k: int) -> int:
    """Row stride (bytes) of packed 4-bit codes in the kernel layout: ``ceil(K/2)`` rounded up to 16."""
    return ((k + 1) // 2 + KERNEL_ROW_ALIGN - 1) // KERNEL_ROW_ALIGN * KERNEL_ROW_ALIGN


def to_kernel_layout(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Checkpoint packing ``[N, ceil(K/2)]`` uint8 -> kernel packing ``[N, kernel_row_bytes(K)]``.

    Same nibble order; rows are zero-padded (a copy even when no padding is needed, e.g. every
    Wan linear has ``K % 32 == 0``). An odd ``K``'s unused high nibble is zeroed as well.
    """
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"packed codes must be a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    kb = (k + 1) // 2
    if packed.shape[1] != kb:
        raise ValueError(f"packed codes have {packed.shape[1]} bytes per row, expected ceil(K/2)={kb} for K={k}")
    out = torch.zeros(packed.shape[0], kernel_row_bytes(k), dtype=torch.uint8, device=packed.device)
    out[:, :kb] = packed
    if k % 2:
        out[:, kb - 1] &= 0x0F
    return out


def kernel_words(kernel_packed: torch.Tensor) -> torch.Tensor:
    """Kernel-layout rows ``[N, ld]`` uint8 viewed as ``[N, ld / 4]`` int32 (same bytes, little endian)."""
    if kernel_packed.dtype != torch.uint8 or kernel_packed.dim() != 2 or kernel_packed.shape[1] % 4:
        raise ValueError(f"expected [N, 4j] uint8 rows, got {kernel_packed.dtype} {tuple(kernel_packed.shape)}")
    return kernel_packed.contiguous().view(torch.int32)


def code_sums(codes: torch.Tensor) -> torch.Tensor:
    """``[N]`` int32 sums of each row of unpacked ``[N, K]`` codes (the GEMM's zero-point term)."""
    return codes.to(torch.int32).sum(dim=1, dtype=torch.int32)
