"""ctypes loading of the native W4A4 libraries (C ABI: plugins/*/include/qvgen/*.h).

No torch C++ ABI is involved: the libraries take raw pointers, shapes, strides and a CUDA
stream, so any PyTorch build can call them. Libraries are found in, in order:
``$QVGEN_NATIVE_LIB_DIR`` (``os.pathsep``-separated folders) and ``<repo>/build/native/lib``
(where ``scripts/build_native.sh`` puts them).
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

ABI_VERSION = 2  # QVGEN_W4A4_ABI_VERSION in plugins/kernels/include/qvgen/w4a4_types.h
MAX_K = 74565  # QVGEN_MAX_K: |I| <= 225 K must convert to float32 exactly (<= 2^24)

# qvgen_dtype
DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_I32 = 0, 1, 2, 3
# qvgen_gemm_path
PATH_AUTO, PATH_MMA_U4, PATH_IMMA_U8, PATH_SIMT, PATH_WGMMA_U8 = 0, 1, 2, 3, 4
PATH_NAMES = {
    PATH_AUTO: "auto",
    PATH_MMA_U4: "mma_u4",
    PATH_IMMA_U8: "imma_u8",
    PATH_SIMT: "simt",
    PATH_WGMMA_U8: "wgmma_u8",
}
# qvgen_status
STATUS_NAMES = {0: "OK", 1: "INVALID_ARGUMENT", 2: "UNSUPPORTED", 3: "CUDA_ERROR", 4: "INTERNAL"}

REF_LIBRARY = "libqvgen_w4a4_ref.so"
CUDA_LIBRARY = "libqvgen_w4a4_cuda.so"

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_native.sh"


class NativeLibraryNotFoundError(RuntimeError):
    """The shared library was not built (or not found); the message says how to build it."""


class NativeError(RuntimeError):
    """A native call returned an error status; ``status`` is the qvgen_status code."""

    def __init__(self, function: str, status: int, message: str) -> None:
        super().__init__(f"{function} failed with {STATUS_NAMES.get(status, status)}: {message}")
        self.status = status


def library_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("QVGEN_NATIVE_LIB_DIR", "").split(os.pathsep) if p]
    dirs.append(REPO_ROOT / "build" / "native" / "lib")
    return dirs


def find_library(name: str) -> Path | None:
    for d in library_dirs():
        p = d / name
        if p.is_file():
            return p
    return None


def _not_built(name: str) -> NativeLibraryNotFoundError:
    where = ", ".join(str(d) for d in library_dirs())
    return NativeLibraryNotFoundError(
        f"native library {name} not found (searched: {where}). Build it with `bash {BUILD_SCRIPT}` "
        "(the CUDA library needs nvcc; the CPU reference only CMake and a C++17 compiler), "
        "or point QVGEN_NATIVE_LIB_DIR at the folder holding it."
    )


_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_INT = ctypes.c_int


def _declare(lib: ctypes.CDLL, prefix: str, cuda: bool) -> None:
    def fn(name: str, *argtypes: object) -> None:
        f = getattr(lib, f"{prefix}_{name}")
        f.argtypes = list(argtypes)
        f.restype = _INT

    lib_error = getattr(lib, f"{prefix}_last_error")
    lib_error.argtypes = []
    lib_error.restype = ctypes.c_char_p
    fn("abi_version")
    stream = (_P,) if cuda else ()
    # act_quant(x, x_dtype, M, K, ldx, clip_lo, clip_hi, T, bits, qx, ldq, scale, zero, code_sum[, stream])
    fn("act_quant", _P, _INT, _I64, _I64, _I64, _P, _P, _I64, _INT, _P, _I64, _P, _P, _P, *stream)
    # code_sums(qw, ldq, N, K, w_sum[, stream])
    fn("code_sums", _P, _I64, _I64, _I64, _P, *stream)
    # gemm(qx, ldqx, x_scale, x_zero, x_sum, qw, ldqw, w_scale, w_zero, w_sum, bias, M, N, K, y, y_dtype, ldy
    #      [, path, stream])
    gemm_tail = (_INT, _P) if cuda else ()
    fn("gemm", _P, _I64, _P, _P, _P, _P, _I64, _P, _P, _P, _P, _I64, _I64, _I64, _P, _INT, _I64, *gemm_tail)
    if cuda:
        fn("resolve_path", _INT, ctypes.POINTER(_INT))
        fn("selftest", _INT, _P, ctypes.POINTER(_I64))
        # ABI 2: byte containers and the CUTLASS wgmma path (Hopper)
        fn("act_quant_u8", _P, _INT, _I64, _I64, _I64, _P, _P, _I64, _INT, _P, _I64, _P, _P, _P, _P)
        fn("unpack_u8", _P, _I64, _I64, _I64, _P, _I64, _P)
        fn("gemm_u8", _P, _I64, _P, _P, _P, _P, _I64, _P, _P, _P, _P, _I64, _I64, _I64, _P, _INT, _I64, _P)
        fn("has_wgmma")
    else:
        for conv in ("float_to_half", "float_to_bf16"):
            f = getattr(lib, f"{prefix}_{conv}")
            f.argtypes = [ctypes.c_float]
            f.restype = ctypes.c_uint16


def _load(name: str, prefix: str, cuda: bool) -> ctypes.CDLL:
    path = find_library(name)
    if path is None:
        raise _not_built(name)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise NativeLibraryNotFoundError(f"cannot load {path}: {e}") from e
    _declare(lib, prefix, cuda)
    version = getattr(lib, f"{prefix}_abi_version")()
    if version != ABI_VERSION:
        raise NativeLibraryNotFoundError(
            f"{path} has ABI version {version}, this package expects {ABI_VERSION}: rebuild with `bash {BUILD_SCRIPT}`"
        )
    return lib


@functools.cache
def reference_library() -> ctypes.CDLL:
    """The C++ CPU reference (always buildable)."""
    return _load(REF_LIBRARY, "qvgen_ref", cuda=False)


@functools.cache
def cuda_library() -> ctypes.CDLL:
    """The CUDA kernel library (built only where nvcc was found)."""
    return _load(CUDA_LIBRARY, "qvgen_cuda", cuda=True)


def check(lib: ctypes.CDLL, prefix: str, function: str, status: int) -> None:
    if status != 0:
        msg = getattr(lib, f"{prefix}_last_error")().decode("utf-8", "replace")
        raise NativeError(f"{prefix}_{function}", status, msg)


def reference_available() -> bool:
    return find_library(REF_LIBRARY) is not None


def cuda_library_available() -> bool:
    return find_library(CUDA_LIBRARY) is not None
