"""Native W4A4 kernels for PyTorch, loaded lazily through ctypes (docs/native-kernels.md).

``import qvgen_export`` never imports this package. Importing it loads no library either: the
shared libraries are opened on first use, and a missing build raises
:class:`NativeLibraryNotFoundError` with the command that builds it. The custom op
``torch.ops.qvgen.w4a4_linear`` is registered when :mod:`qvgen_export.native.ops` is imported
(``from qvgen_export.native import ops``, or any attribute below that lives there).
"""

from __future__ import annotations

from typing import Any

from qvgen_export.native._lib import (
    NativeError,
    NativeLibraryNotFoundError,
    cuda_library,
    cuda_library_available,
    reference_available,
    reference_library,
)

_OPS_NAMES = ("act_quant", "code_sums", "gemm", "w4a4_linear", "packed_row_bytes", "repack_for_kernel")

__all__ = [
    "NativeError",
    "NativeLibraryNotFoundError",
    "act_quant",
    "code_sums",
    "cuda_library",
    "cuda_library_available",
    "gemm",
    "packed_row_bytes",
    "reference_available",
    "reference_library",
    "repack_for_kernel",
    "w4a4_linear",
]


def __getattr__(name: str) -> Any:
    if name in _OPS_NAMES:
        from qvgen_export.native import ops

        return getattr(ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
