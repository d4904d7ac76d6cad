"""CUDA kernels versus the C++ CPU reference: bit-exact codes, INT32 accumulators and outputs.

Skipped (with the reason) where torch sees no CUDA GPU or the CUDA library was not built.
"""

from __future__ import annotations

import ctypes

import native_npref as npref
import numpy as np
import pytest
import torch
from native_cases import CASES, F32_ONLY, make_case, make_weight

pytestmark = pytest.mark.gpu

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
# Cases in F32_ONLY overflow or underflow float16/bfloat16 inputs.
CASE_DTYPES = [(c, d) for c in CASES for d in DTYPES if d == "f32" or c not in F32_ONLY]
PATHS = ["auto", "mma_u4", "imma_u8", "simt"]


@pytest.mark.parametrize("path", [0, 1, 2, 3])
def test_selftest(cuda_ops, path: int) -> None:
    from qvgen_export.native import _lib

    lib = _lib.cuda_library()
    bad = ctypes.c_int64(-1)
    status = lib.qvgen_cuda_selftest(path, torch.cuda.current_stream().cuda_stream, bad)
    assert status == 0, lib.qvgen_cuda_last_error()
    assert bad.value == 0


@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize(("case", "dtype"), CASE_DTYPES)
def test_act_quant_cuda_equals_reference(cuda_ops, case: str, dtype: str, bits: int) -> None:
    x, clo, chi, t = make_case(case)
    xt = torch.from_numpy(x).to(DTYPES[dtype])
    lo, hi = torch.from_numpy(clo), torch.from_numpy(chi)
    ref = cuda_ops.act_quant(xt, lo, hi, bits, t)
    got = cuda_ops.act_quant(xt.cuda(), lo.cuda(), hi.cuda(), bits, t)
    for r, g, name in zip(ref, got, ("qx", "scale", "zero", "code_sum")):
        assert torch.equal(g.cpu(), r), name


def test_act_quant_cuda_strided_rows(cuda_ops) -> None:
    """Rows with a stride > K (a column slice) take the unaligned load path."""
    x = torch.randn(33, 100)
    xs = x[:, 3:83]  # [33, 80], stride 100, misaligned base
    ones = torch.ones(1)
    ref = cuda_ops.act_quant(xs.contiguous(), ones, ones, 4)
    got = cuda_ops.act_quant(x.cuda()[:, 3:83], ones.cuda(), ones.cuda(), 4)
    for r, g in zip(ref, got):
        assert torch.equal(g.cpu(), r)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("out", ["i32", "f32", "f16", "bf16"])
@pytest.mark.parametrize("case", ["random", "batched", "one", "odd_k", "k_tile", "zero_rows", "multi_tile"])
def test_gemm_cuda_equals_reference(cuda_ops, case: str, out: str, path: str) -> None:
    x, clo, chi, t = make_case(case)
    k = x.shape[1]
    n = 131 if case == "multi_tile" else 45
    codes, ws, wz, bias = make_weight(n, k, 4)
    qw = torch.from_numpy(npref.pack(codes, cuda_ops.packed_row_bytes(k)))
    # Garbage beyond K in the weight rows must be ignored by every path.
    if k % 2:
        qw[:, k // 2] |= 0xA0
    if qw.shape[1] > (k + 1) // 2:
        qw[:, (k + 1) // 2 :] = 0x5B
    out_dtype = {"i32": torch.int32, "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[out]
    cpu = {
        "qw": qw,
        "w_scale": torch.from_numpy(ws),
        "w_zero": torch.from_numpy(wz),
        "w_sum": torch.from_numpy(codes.sum(1).astype(np.int32)),
        "bias": torch.from_numpy(bias),
    }
    qx, xs, xz, xsum = cuda_ops.act_quant(torch.from_numpy(x), torch.from_numpy(clo), torch.from_numpy(chi), 4, t)
    y_ref = cuda_ops.gemm(qx, xs, xz, xsum, k=k, out_dtype=out_dtype, **cpu)
    g = {name: v.cuda() for name, v in cpu.items()}
    y = cuda_ops.gemm(qx.cuda(), xs.cuda(), xz.cuda(), xsum.cuda(), k=k, out_dtype=out_dtype, path=path, **g)
    assert torch.equal(y.cpu(), y_ref)


def test_code_sums_cuda(cuda_ops) -> None:
    codes, *_ = make_weight(77, 1001, 4)
    qw = torch.from_numpy(npref.pack(codes, cuda_ops.packed_row_bytes(1001)))
    assert torch.equal(cuda_ops.code_sums(qw.cuda(), 1001).cpu(), cuda_ops.code_sums(qw, 1001))


def test_w4a4_linear_cuda_equals_cpu_on_side_stream(cuda_ops) -> None:
    x, clo, chi, t = make_case("batched")
    k = x.shape[1]
    codes, ws, wz, bias = make_weight(64, k, 4)
    qw = torch.from_numpy(npref.pack(codes, cuda_ops.packed_row_bytes(k)))
    args = [
        torch.from_numpy(x).reshape(3, t, k).bfloat16(),
        torch.from_numpy(clo),
        torch.from_numpy(chi),
        qw,
        torch.from_numpy(ws),
        torch.from_numpy(wz),
        torch.from_numpy(codes.sum(1).astype(np.int32)),
        torch.from_numpy(bias),
        k,
        4,
    ]
    y_ref = torch.ops.qvgen.w4a4_linear(*args)
    cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())  # the inputs were copied on the default stream
    with torch.cuda.stream(side):
        y = torch.ops.qvgen.w4a4_linear(*cuda_args)
    side.synchronize()
    assert torch.equal(y.cpu(), y_ref)


def test_int4_linear_cuda_matches_quant_linear(cuda_ops) -> None:
    from torch import nn

    from qvgen_export.quant.config import QuantConfig
    from qvgen_export.quant.modules import QuantContext, QuantLinear
    from qvgen_export.runtime.torch_int4 import Int4Linear

    torch.manual_seed(0)
    q = QuantLinear.from_linear(nn.Linear(256, 96), QuantConfig(), QuantContext(), init=True).cuda()
    il = Int4Linear.from_quant_linear(q)
    assert il.qweight.is_cuda
    q.ctx.group = torch.tensor([3, 40], device="cuda")
    x = torch.randn(2, 300, 256, device="cuda")
    with torch.no_grad():
        y_ref = q(x)
        y = il(x)
    q.ctx.group = None
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4 * float(y_ref.abs().max()))


def _wgmma_ready() -> bool:
    from qvgen_export.native import _lib

    return bool(_lib.cuda_library().qvgen_cuda_has_wgmma()) and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("case", ["random", "odd_k", "batched"])
def test_act_quant_u8_equals_packed(cuda_ops, case: str, bits: int) -> None:
    """INT8 containers: the same codes, one per byte, zero beyond K; same scales, zeros, sums."""
    x, clo, chi, t = make_case(case)
    xt, lo, hi = torch.from_numpy(x).cuda(), torch.from_numpy(clo).cuda(), torch.from_numpy(chi).cuda()
    k = x.shape[1]
    qx, *rest = cuda_ops.act_quant(xt, lo, hi, bits, t)
    qx8, *rest8 = cuda_ops.act_quant_u8(xt, lo, hi, bits, t)
    for a, b in zip(rest, rest8):
        assert torch.equal(a, b)
    assert torch.equal(qx8, cuda_ops.unpack_u8(qx, k))
    assert int(qx8[:, k:].abs().sum()) == 0


@pytest.mark.parametrize("out", ["i32", "f32", "f16", "bf16"])
@pytest.mark.parametrize(("m", "n", "k", "with_bias"), [(37, 48, 67, True), (300, 264, 1536, False), (129, 8, 1, True)])
def test_wgmma_u8_equals_reference(cuda_ops, m: int, n: int, k: int, with_bias: bool, out: str) -> None:
    """CUTLASS sm_90a path (prepared INT8 weights + byte activations, and from packed operands)."""
    if not _wgmma_ready():
        pytest.skip("the CUTLASS wgmma path needs an sm_90 GPU and a build with CUTLASS")
    rng = np.random.default_rng(m * n + k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    codes, ws, wz, bias = make_weight(n, k, 4)
    qw = torch.from_numpy(npref.pack(codes, cuda_ops.packed_row_bytes(k)))
    out_dtype = {"i32": torch.int32, "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[out]
    ones = torch.ones(1)
    qx, xs, xz, xsum = cuda_ops.act_quant(torch.from_numpy(x), ones, ones, 4)
    w = {
        "w_scale": torch.from_numpy(ws),
        "w_zero": torch.from_numpy(wz),
        "w_sum": torch.from_numpy(codes.sum(1).astype(np.int32)),
        "bias": torch.from_numpy(bias) if with_bias else None,
    }
    y_ref = cuda_ops.gemm(qx, xs, xz, xsum, qw, k=k, out_dtype=out_dtype, **w)
    g = {name: (v.cuda() if v is not None else None) for name, v in w.items()}
    qx8, xs8, xz8, xsum8 = cuda_ops.act_quant_u8(torch.from_numpy(x).cuda(), ones.cuda(), ones.cuda(), 4)
    qw8 = cuda_ops.unpack_u8(qw.cuda(), k)
    y = cuda_ops.gemm_u8(qx8, xs8, xz8, xsum8, qw8, k=k, out_dtype=out_dtype, **g)
    assert torch.equal(y.cpu(), y_ref)
    y2 = cuda_ops.gemm(qx.cuda(), xs.cuda(), xz.cuda(), xsum.cuda(), qw.cuda(), k=k, out_dtype=out_dtype,
                       path="wgmma_u8", **g)  # fmt: skip
    assert torch.equal(y2.cpu(), y_ref)


def test_w4a4_linear_u8_equals_cpu(cuda_ops) -> None:
    """The Hopper route of Int4Linear (prepared INT8 weights, byte activations) == the CPU op."""
    if not _wgmma_ready():
        pytest.skip("the CUTLASS wgmma path needs an sm_90 GPU and a build with CUTLASS")
    x, clo, chi, t = make_case("batched")
    k = x.shape[1]
    codes, ws, wz, bias = make_weight(64, k, 4)
    qw = torch.from_numpy(npref.pack(codes, cuda_ops.packed_row_bytes(k)))
    rest = [torch.from_numpy(ws), torch.from_numpy(wz), torch.from_numpy(codes.sum(1).astype(np.int32))]
    xb = torch.from_numpy(x).reshape(3, t, k).bfloat16()
    lo, hi, b = torch.from_numpy(clo), torch.from_numpy(chi), torch.from_numpy(bias)
    y_ref = torch.ops.qvgen.w4a4_linear(xb, lo, hi, qw, *rest, b, k, 4)
    qw8 = cuda_ops.unpack_u8(qw.cuda(), k)
    y = torch.ops.qvgen.w4a4_linear_u8(xb.cuda(), lo.cuda(), hi.cuda(), qw8, *[r.cuda() for r in rest], b.cuda(), k, 4)
    assert cuda_ops.wgmma_prepared_ok(xb.cuda(), 64)
    assert torch.equal(y.cpu(), y_ref)
