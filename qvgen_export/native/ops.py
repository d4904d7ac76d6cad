"""PyTorch entry points of the native W4A4 kernels, and the ``qvgen::w4a4_linear`` custom op.

Notations
---------
- ``x``: activations ``[..., K]`` (float32 / float16 / bfloat16); ``M`` = number of tokens.
- ``qx``/``qw``: packed 4-bit codes, uint8 ``[rows, ldq]`` with ``ldq = packed_row_bytes(K)``
  (``ceil(K/2)`` rounded up to 16 bytes); byte ``j`` = code ``2j`` (low nibble) | code ``2j+1``
  (high nibble), as the checkpoint (``quant/packing.py``) but with rows zero-padded to 16 bytes,
  which the CUDA kernels need for aligned 16-byte loads.
- ``x_scale [M]`` float32, ``x_zero [M]`` int32, ``x_sum [M]`` int32 (sum of a token's codes);
  ``w_scale``/``w_zero [N]`` float32 (float zero point), ``w_sum [N]`` int32; ``bias [N]`` float32.
- ``clip_lo``/``clip_hi``: per-sample clip factors ``[B]`` float32 (``functional.clip_factors``);
  token ``m`` belongs to sample ``m // (M // B)``.

CPU tensors go to the C++ reference library, CUDA tensors to the CUDA library (through ctypes,
with ``data_ptr()`` and the current stream); both produce the same bits.
"""

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

from qvgen_export.native import _lib
from qvgen_export.native._lib import DTYPE_BF16, DTYPE_F16, DTYPE_F32, DTYPE_I32
from qvgen_export.quant.packing import kernel_row_bytes, to_kernel_layout

_X_DTYPES = {torch.float32: DTYPE_F32, torch.float16: DTYPE_F16, torch.bfloat16: DTYPE_BF16}
_Y_DTYPES = {**_X_DTYPES, torch.int32: DTYPE_I32}
_PATHS = {name: code for code, name in _lib.PATH_NAMES.items()}


# The kernel layout is owned by quant/packing.py; these names stay for the binding's callers.
packed_row_bytes = kernel_row_bytes
repack_for_kernel = to_kernel_layout


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _require(t: torch.Tensor, name: str, dtype: torch.dtype, shape: tuple[int, ...], device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


_cuda_paths: dict[int, int] = {}


def cuda_gemm_path(device: torch.device) -> int:
    """The GEMM path used on ``device``: ``$QVGEN_GEMM_PATH`` (auto, mma_u4, imma_u8, simt, wgmma_u8), default auto.

    ``auto`` runs the library's on-device self-test once per device (the path against expected
    outputs computed on the host, on awkward shapes). Should the auto path fail it (mismatches or
    an error status), the next path is tried with a warning: on sm_90 ``wgmma_u8`` -> ``imma_u8``,
    then the plain SIMT kernel, so that a wrong fragment layout or a CUTLASS launch problem can
    never give silently wrong outputs. ``QVGEN_GEMM_SELFTEST=0`` skips the check.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index in _cuda_paths:
        return _cuda_paths[index]
    name = os.environ.get("QVGEN_GEMM_PATH", "auto").lower()
    if name not in _PATHS:
        raise ValueError(f"QVGEN_GEMM_PATH={name!r}; expected one of {sorted(_PATHS)}")
    lib = _lib.cuda_library()
    path = _PATHS[name]
    with torch.cuda.device(index):
        resolved = _lib.ctypes.c_int(0)
        _lib.check(lib, "qvgen_cuda", "resolve_path", lib.qvgen_cuda_resolve_path(path, resolved))
        chosen = resolved.value
        if path == _lib.PATH_AUTO and os.environ.get("QVGEN_GEMM_SELFTEST", "1") != "0":
            candidates = [chosen]
            if chosen == _lib.PATH_WGMMA_U8:
                candidates.append(_lib.PATH_IMMA_U8)
            if _lib.PATH_SIMT not in candidates:
                candidates.append(_lib.PATH_SIMT)
            for i, cand in enumerate(candidates):
                bad = _lib.ctypes.c_int64(0)
                status = lib.qvgen_cuda_selftest(cand, _stream(device), bad)
                if status == 0 and bad.value == 0:
                    chosen = cand
                    break
                if i == len(candidates) - 1:
                    _lib.check(lib, "qvgen_cuda", "selftest", status)
                    raise RuntimeError(f"qvgen W4A4 GEMM: every path failed its self-test on cuda:{index}")
                why = (
                    f"{bad.value} mismatching outputs"
                    if status == 0
                    else lib.qvgen_cuda_last_error().decode("utf-8", "replace")
                )
                warnings.warn(
                    f"qvgen W4A4 GEMM path {_lib.PATH_NAMES[cand]} failed its self-test on cuda:{index} ({why}); "
                    f"falling back to {_lib.PATH_NAMES[candidates[i + 1]]}. Please report this.",
                    RuntimeWarning,
                    stacklevel=2,
                )
    _cuda_paths[index] = chosen
    return chosen


def _act_args(
    x: torch.Tensor, clip_lo: torch.Tensor, clip_hi: torch.Tensor, bits: int, tokens_per_sample: int | None
) -> tuple[torch.Tensor, int, int, int]:
    """Checks shared by both activation quantizers: ``(x row-contiguous, M, K, tokens_per_sample)``."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [M, K], got shape {tuple(x.shape)}")
    if x.dtype not in _X_DTYPES:
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if not isinstance(bits, int) or not 2 <= bits <= 4:
        raise ValueError(f"bits must be 2, 3 or 4 (4-bit containers), got {bits!r}")
    m, k = x.shape
    if x.stride(1) != 1 or (m > 1 and x.stride(0) < k):
        x = x.contiguous()
    b = clip_lo.numel()
    _require(clip_lo, "clip_lo", torch.float32, (b,), x.device)
    _require(clip_hi, "clip_hi", torch.float32, (b,), x.device)
    if b < 1:
        raise ValueError("clip_lo must hold at least one factor")
    if tokens_per_sample is None:
        if m % b:
            raise ValueError(f"{m} tokens cannot be split evenly over {b} samples")
        tokens_per_sample = max(m // b, 1)
    if tokens_per_sample < 1 or (m and (m - 1) // tokens_per_sample >= b):
        raise ValueError(f"tokens_per_sample={tokens_per_sample} needs more than {b} clip factors for {m} tokens")
    return x, m, k, tokens_per_sample


def _gemm_args(
    codes: tuple[tuple[str, torch.Tensor], tuple[str, torch.Tensor]],
    x_scale: torch.Tensor | None,
    x_zero: torch.Tensor | None,
    x_sum: torch.Tensor | None,
    w_scale: torch.Tensor | None,
    w_zero: torch.Tensor | None,
    w_sum: torch.Tensor | None,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> tuple[int, int, bool]:
    """Checks shared by both GEMMs: ``(M, N, raw)``; ``codes`` are the named activation and weight codes."""
    if out_dtype not in _Y_DTYPES:
        raise TypeError(f"out_dtype must be one of {list(_Y_DTYPES)}, got {out_dtype}")
    dev = codes[0][1].device
    for name, t in codes:
        if t.dtype != torch.uint8 or t.dim() != 2 or not t.is_contiguous() or t.device != dev:
            raise ValueError(f"{name} must be a contiguous 2-D uint8 tensor on {dev}")
    m, n = codes[0][1].shape[0], codes[1][1].shape[0]
    raw = out_dtype == torch.int32
    if not raw:
        for name, t, rows, dt in (
            ("x_scale", x_scale, m, torch.float32),
            ("x_zero", x_zero, m, torch.int32),
            ("x_sum", x_sum, m, torch.int32),
            ("w_scale", w_scale, n, torch.float32),
            ("w_zero", w_zero, n, torch.float32),
            ("w_sum", w_sum, n, torch.int32),
        ):
            if t is None:
                raise ValueError(f"{name} is required unless out_dtype is torch.int32")
            _require(t, name, dt, (rows,), dev)
        if bias is not None:
            _require(bias, "bias", torch.float32, (n,), dev)
    return m, n, raw


def _act_call(
    x: torch.Tensor,
    m: int,
    k: int,
    clip_lo: torch.Tensor,
    clip_hi: torch.Tensor,
    tokens_per_sample: int,
    bits: int,
    ldq: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[Any, ...]]:
    """Outputs ``(q [M, ldq], scale, zero, code_sum)`` of an activation quantizer and the C
    arguments both entry points (nibbles and bytes) take, in their order, before the stream."""
    dev = x.device
    q = torch.empty(m, ldq, dtype=torch.uint8, device=dev)
    scale = torch.empty(m, dtype=torch.float32, device=dev)
    zero = torch.empty(m, dtype=torch.int32, device=dev)
    code_sum = torch.empty(m, dtype=torch.int32, device=dev)
    ldx = x.stride(0) if m > 1 else k
    args = (x.data_ptr(), _X_DTYPES[x.dtype], m, k, ldx, clip_lo.data_ptr(), clip_hi.data_ptr(), tokens_per_sample,
            bits, q.data_ptr(), ldq, scale.data_ptr(), zero.data_ptr(), code_sum.data_ptr())  # fmt: skip
    return q, scale, zero, code_sum, args


def _gemm_call(
    qx: torch.Tensor,
    x_scale: torch.Tensor | None,
    x_zero: torch.Tensor | None,
    x_sum: torch.Tensor | None,
    qw: torch.Tensor,
    w_scale: torch.Tensor | None,
    w_zero: torch.Tensor | None,
    w_sum: torch.Tensor | None,
    bias: torch.Tensor | None,
    raw: bool,
    m: int,
    n: int,
    k: int,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, tuple[Any, ...]]:
    """The output ``y [M, N]`` of a GEMM and the C arguments both entry points (nibble and byte
    codes) take, in their order, before the path and stream."""
    y = torch.empty(m, n, dtype=out_dtype, device=qx.device)
    args = (qx.data_ptr(), qx.shape[1], _ptr(x_scale), _ptr(x_zero), _ptr(x_sum), qw.data_ptr(), qw.shape[1],
            _ptr(w_scale), _ptr(w_zero), _ptr(w_sum), None if raw else _ptr(bias), m, n, k, y.data_ptr(),
            _Y_DTYPES[out_dtype], n)  # fmt: skip
    return y, args


def act_quant(
    x: torch.Tensor, clip_lo: torch.Tensor, clip_hi: torch.Tensor, bits: int, tokens_per_sample: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token dynamic quantization of ``x [M, K]`` to packed ``bits``-bit codes.

    Returns ``(qx [M, ldq] uint8, scale [M] float32, zero [M] int32, code_sum [M] int32)``.
    ``tokens_per_sample`` defaults to ``M // B`` with ``B = clip_lo.numel()``.
    """
    x, m, k, tokens_per_sample = _act_args(x, clip_lo, clip_hi, bits, tokens_per_sample)
    dev = x.device
    qx, scale, zero, code_sum, args = _act_call(x, m, k, clip_lo, clip_hi, tokens_per_sample, bits, packed_row_bytes(k))
    if dev.type == "cpu":
        lib = _lib.reference_library()
        _lib.check(lib, "qvgen_ref", "act_quant", lib.qvgen_ref_act_quant(*args))
    elif dev.type == "cuda":
        lib = _lib.cuda_library()
        with torch.cuda.device(dev):
            _lib.check(lib, "qvgen_cuda", "act_quant", lib.qvgen_cuda_act_quant(*args, _stream(dev)))
    else:
        raise ValueError(f"unsupported device {dev}")
    return qx, scale, zero, code_sum


def code_sums(qw: torch.Tensor, k: int) -> torch.Tensor:
    """``[N] int32`` sums of the codes of each packed row ``qw [N, ld]`` over ``k < K``."""
    if qw.dtype != torch.uint8 or qw.dim() != 2 or not qw.is_contiguous():
        raise ValueError(f"qw must be a contiguous 2-D uint8 tensor, got {qw.dtype} {tuple(qw.shape)}")
    n, ld = qw.shape
    out = torch.empty(n, dtype=torch.int32, device=qw.device)
    if qw.device.type == "cpu":
        lib = _lib.reference_library()
        _lib.check(lib, "qvgen_ref", "code_sums", lib.qvgen_ref_code_sums(qw.data_ptr(), ld, n, k, out.data_ptr()))
    else:
        lib = _lib.cuda_library()
        with torch.cuda.device(qw.device):
            status = lib.qvgen_cuda_code_sums(qw.data_ptr(), ld, n, k, out.data_ptr(), _stream(qw.device))
            _lib.check(lib, "qvgen_cuda", "code_sums", status)
    return out


def gemm(
    qx: torch.Tensor,
    x_scale: torch.Tensor | None,
    x_zero: torch.Tensor | None,
    x_sum: torch.Tensor | None,
    qw: torch.Tensor,
    w_scale: torch.Tensor | None,
    w_zero: torch.Tensor | None,
    w_sum: torch.Tensor | None,
    bias: torch.Tensor | None,
    k: int,
    out_dtype: torch.dtype = torch.float32,
    path: str | None = None,
) -> torch.Tensor:
    """``y [M, N]`` = W4A4 GEMM + zero-point epilogue (see plugins/kernels/include/qvgen/w4a4_types.h).

    ``out_dtype=torch.int32`` returns the raw integer accumulator ``sum_k qx*qw`` (scales, zeros,
    sums and bias are then ignored and may be None). ``path`` (CUDA only) forces a GEMM path by
    name; default: :func:`cuda_gemm_path`.
    """
    dev = qx.device
    m, n, raw = _gemm_args((("qx", qx), ("qw", qw)), x_scale, x_zero, x_sum, w_scale, w_zero, w_sum, bias, out_dtype)
    y, args = _gemm_call(qx, x_scale, x_zero, x_sum, qw, w_scale, w_zero, w_sum, bias, raw, m, n, k, out_dtype)
    if dev.type == "cpu":
        lib = _lib.reference_library()
        _lib.check(lib, "qvgen_ref", "gemm", lib.qvgen_ref_gemm(*args))
    elif dev.type == "cuda":
        lib = _lib.cuda_library()
        if path is None:
            p = cuda_gemm_path(dev)
            # The auto choice WGMMA_U8 goes through AUTO, which keeps it where the output suits the
            # epilogue's TMA store (y 16-byte aligned, ldy a multiple of 16 bytes) and takes
            # IMMA_U8 elsewhere; passing 4 explicitly would refuse such outputs.
            if p == _lib.PATH_WGMMA_U8:
                p = _lib.PATH_AUTO
        elif path in _PATHS:
            p = _PATHS[path]
        else:
            raise ValueError(f"path must be one of {sorted(_PATHS)}, got {path!r}")
        with torch.cuda.device(dev):
            _lib.check(lib, "qvgen_cuda", "gemm", lib.qvgen_cuda_gemm(*args, p, _stream(dev)))
    else:
        raise ValueError(f"unsupported device {dev}")
    return y


def byte_row_bytes(k: int) -> int:
    """Row stride of the one-code-per-byte layout (Hopper wgmma path): ``K`` rounded up to 16."""
    return (k + 15) // 16 * 16


def act_quant_u8(
    x: torch.Tensor, clip_lo: torch.Tensor, clip_hi: torch.Tensor, bits: int, tokens_per_sample: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`act_quant` writing one code per byte (``qx8 [M, byte_row_bytes(K)]``), CUDA only.

    Same codes, scales, zero points and sums as :func:`act_quant`, bit for bit.
    """
    if x.device.type != "cuda":
        raise ValueError("act_quant_u8 is CUDA only (the CPU reference packs nibbles: use act_quant)")
    x, m, k, tokens_per_sample = _act_args(x, clip_lo, clip_hi, bits, tokens_per_sample)
    qx8, scale, zero, code_sum, args = _act_call(x, m, k, clip_lo, clip_hi, tokens_per_sample, bits, byte_row_bytes(k))
    lib = _lib.cuda_library()
    with torch.cuda.device(x.device):
        status = lib.qvgen_cuda_act_quant_u8(*args, _stream(x.device))
        _lib.check(lib, "qvgen_cuda", "act_quant_u8", status)
    return qx8, scale, zero, code_sum


def unpack_u8(q: torch.Tensor, k: int) -> torch.Tensor:
    """Packed codes ``[rows, ld]`` -> one code per byte ``[rows, byte_row_bytes(k)]`` (CUDA only).

    Run once per weight at load time for the Hopper wgmma path: twice the packed bytes.
    """
    if q.device.type != "cuda" or q.dtype != torch.uint8 or q.dim() != 2 or not q.is_contiguous():
        raise ValueError("q must be a contiguous 2-D uint8 CUDA tensor")
    ld8 = byte_row_bytes(k)
    out = torch.empty(q.shape[0], ld8, dtype=torch.uint8, device=q.device)
    lib = _lib.cuda_library()
    with torch.cuda.device(q.device):
        status = lib.qvgen_cuda_unpack_u8(
            q.data_ptr(), q.shape[1], q.shape[0], k, out.data_ptr(), ld8, _stream(q.device)
        )
        _lib.check(lib, "qvgen_cuda", "unpack_u8", status)
    return out


def gemm_u8(
    qx8: torch.Tensor,
    x_scale: torch.Tensor | None,
    x_zero: torch.Tensor | None,
    x_sum: torch.Tensor | None,
    qw8: torch.Tensor,
    w_scale: torch.Tensor | None,
    w_zero: torch.Tensor | None,
    w_sum: torch.Tensor | None,
    bias: torch.Tensor | None,
    k: int,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """:func:`gemm` over byte codes on the CUTLASS wgmma path (sm_90 build with CUTLASS only)."""
    dev = qx8.device
    if dev.type != "cuda":
        raise ValueError("gemm_u8 is CUDA only")
    codes = (("qx8", qx8), ("qw8", qw8))
    m, n, raw = _gemm_args(codes, x_scale, x_zero, x_sum, w_scale, w_zero, w_sum, bias, out_dtype)
    y, args = _gemm_call(qx8, x_scale, x_zero, x_sum, qw8, w_scale, w_zero, w_sum, bias, raw, m, n, k, out_dtype)
    lib = _lib.cuda_library()
    with torch.cuda.device(dev):
        status = lib.qvgen_cuda_gemm_u8(*args, _stream(dev))
        _lib.check(lib, "qvgen_cuda", "gemm_u8", status)
    return y


def tokens_per_sample(num_tokens: int, num_samples: int) -> int:
    """Token -> sample mapping of ``functional._per_sample``: ``B`` equal blocks of tokens."""
    if num_samples == 1:
        return max(num_tokens, 1)
    if num_samples < 1 or num_tokens % num_samples:
        raise ValueError(f"{num_tokens} tokens cannot be split evenly over {num_samples} samples")
    return max(num_tokens // num_samples, 1)


def _quant_linear(
    x: torch.Tensor,
    clip_lo: torch.Tensor,
    clip_hi: torch.Tensor,
    qweight: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero: torch.Tensor,
    w_sum: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    act_bits: int,
    quantize: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    matmul: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """The body both linear ops share: ``[..., K]`` -> tokens ``[M, K]`` -> per-token activation
    quant (``quantize``: nibbles or bytes) -> integer GEMM (``matmul``) -> ``[..., N]`` in x's dtype."""
    k = x.shape[-1]
    if k != in_features:
        raise ValueError(f"x has {k} features, the layer expects in_features={in_features}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.dtype not in _X_DTYPES:
        x2 = x2.float()
    m = x2.shape[0]
    n = qweight.shape[0]
    if m == 0:
        return x.new_empty((*lead, n))
    clip_lo = clip_lo.reshape(-1)
    clip_hi = clip_hi.reshape(-1)
    t = tokens_per_sample(m, clip_lo.numel())
    qx, xs, xz, xsum = quantize(x2, clip_lo, clip_hi, act_bits, t)
    y = matmul(qx, xs, xz, xsum, qweight, w_scale, w_zero, w_sum, bias, k, out_dtype=x2.dtype)
    return y.reshape(*lead, n).to(x.dtype)


@torch.library.custom_op("qvgen::w4a4_linear", mutates_args=(), device_types=("cpu", "cuda"))
def w4a4_linear(
    x: torch.Tensor,
    clip_lo: torch.Tensor,
    clip_hi: torch.Tensor,
    qweight: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero: torch.Tensor,
    w_sum: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    act_bits: int,
) -> torch.Tensor:
    """W4A4 linear ``[..., K] -> [..., N]``: dynamic per-token activation quant + integer GEMM.

    ``qweight [N, packed_row_bytes(K)]`` uint8; other arguments as in the module docstring.
    The output has ``x``'s dtype (float32/float16/bfloat16 directly; other float dtypes compute
    in float32 and are cast back, as ``QuantLinear`` does).
    """
    return _quant_linear(
        x, clip_lo, clip_hi, qweight, w_scale, w_zero, w_sum, bias, in_features, act_bits, act_quant, gemm
    )


@w4a4_linear.register_fake
def _w4a4_linear_fake(
    x: torch.Tensor,
    clip_lo: torch.Tensor,
    clip_hi: torch.Tensor,
    qweight: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero: torch.Tensor,
    w_sum: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    act_bits: int,
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


@torch.library.custom_op("qvgen::w4a4_linear_u8", mutates_args=(), device_types="cuda")
def w4a4_linear_u8(
    x: torch.Tensor,
    clip_lo: torch.Tensor,
    clip_hi: torch.Tensor,
    qweight_u8: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero: torch.Tensor,
    w_sum: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    act_bits: int,
) -> torch.Tensor:
    """:func:`w4a4_linear` on the Hopper wgmma path (CUDA, sm_90 build with CUTLASS only).

    ``qweight_u8 [N, byte_row_bytes(K)]``: the weight codes one per byte (:func:`unpack_u8` of
    ``qweight``, done once at load). Activations are quantized straight to bytes
    (:func:`act_quant_u8`) and :func:`gemm_u8` runs the CUTLASS GEMM; the same bits as
    :func:`w4a4_linear`. The output row (``N`` elements of the output dtype) must be a multiple of
    16 bytes (see :func:`wgmma_prepared_ok`).
    """
    return _quant_linear(
        x, clip_lo, clip_hi, qweight_u8, w_scale, w_zero, w_sum, bias, in_features, act_bits, act_quant_u8, gemm_u8
    )


@w4a4_linear_u8.register_fake
def _w4a4_linear_u8_fake(
    x: torch.Tensor,
    clip_lo: torch.Tensor,
    clip_hi: torch.Tensor,
    qweight_u8: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero: torch.Tensor,
    w_sum: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    act_bits: int,
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], qweight_u8.shape[0]))


def wgmma_prepared_ok(x: torch.Tensor, out_features: int) -> bool:
    """Whether :func:`w4a4_linear_u8` serves ``x`` (CUDA tensor): the device's auto GEMM path is
    ``wgmma_u8`` and an output row is a multiple of 16 bytes (the epilogue's TMA store)."""
    if x.device.type != "cuda" or cuda_gemm_path(x.device) != _lib.PATH_WGMMA_U8:
        return False
    elem = x.element_size() if x.dtype in _X_DTYPES else 4
    return (out_features * elem) % 16 == 0
