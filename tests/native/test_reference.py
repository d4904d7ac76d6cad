"""C++ CPU reference of the W4A4 ops versus NumPy and versus qvgen_export.quant.functional (CI)."""

from __future__ import annotations

import ctypes

import native_npref as npref
import numpy as np
import pytest
import torch
from native_cases import CASES, F32, F32_ONLY, make_case, make_weight

from qvgen_export.quant import functional as QF

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
# Cases in F32_ONLY overflow or underflow float16/bfloat16 inputs.
CASE_DTYPES = [(c, d) for c in CASES for d in DTYPES if d == "f32" or c not in F32_ONLY]


def _as_input(x: np.ndarray, dtype: torch.dtype) -> tuple[torch.Tensor, np.ndarray]:
    """``x`` in ``dtype`` and its exact float32 value (the kernels upcast exactly)."""
    t = torch.from_numpy(x).to(dtype)
    return t, t.float().numpy()


@pytest.mark.parametrize("bits", [4, 3, 2])
@pytest.mark.parametrize(("case", "dtype"), CASE_DTYPES)
def test_act_quant_matches_numpy(ref_ops, case: str, dtype: str, bits: int) -> None:
    x, clo, chi, t = make_case(case)
    xt, x32 = _as_input(x, DTYPES[dtype])
    qx, scale, zero, csum = ref_ops.act_quant(xt, torch.from_numpy(clo), torch.from_numpy(chi), bits, t)
    codes, s_ref, z_ref, sum_ref = npref.act_quant(x32, clo, chi, t, bits)
    k = x.shape[1]
    assert qx.shape == (x.shape[0], ref_ops.packed_row_bytes(k))
    np.testing.assert_array_equal(npref.unpack(qx.numpy(), k), codes)
    # Padding (odd K's high nibble, bytes beyond ceil(K/2)) is written as zero.
    np.testing.assert_array_equal(qx.numpy(), npref.pack(codes, qx.shape[1]))
    np.testing.assert_array_equal(scale.numpy().view(np.int32), s_ref.view(np.int32))
    np.testing.assert_array_equal(zero.numpy(), z_ref)
    np.testing.assert_array_equal(csum.numpy(), sum_ref)


@pytest.mark.parametrize("case", CASES)
def test_act_quant_matches_functional(ref_ops, case: str) -> None:
    """Same codes, scales and zero points as the fake quantizer used in training and export."""
    x, clo, chi, t = make_case(case)
    m, k = x.shape
    b = m // t
    xt = torch.from_numpy(x).reshape(b, t, k)
    lo_t, hi_t = torch.from_numpy(clo), torch.from_numpy(chi)
    lo, hi = QF.act_range(xt, lo_t, hi_t)
    scale, zp = QF.act_qparams(lo, hi, 15)
    codes = QF.act_codes(xt, scale, zp, 15)
    qx, s, z, csum = ref_ops.act_quant(torch.from_numpy(x), lo_t, hi_t, 4, t)
    got = torch.from_numpy(npref.unpack(qx.numpy(), k))
    assert torch.equal(got, codes.reshape(m, k).to(torch.int64))
    assert torch.equal(s, scale.reshape(m))
    assert torch.equal(z, zp.reshape(m).to(torch.int32))
    assert torch.equal(csum, codes.reshape(m, k).sum(1).to(torch.int32))


def _weights(ref_ops, n: int, k: int, bits: int) -> dict[str, torch.Tensor]:
    codes, scale, zero, bias = make_weight(n, k, bits)
    qw = torch.from_numpy(npref.pack(codes, ref_ops.packed_row_bytes(k)))
    return {
        "codes": torch.from_numpy(codes),
        "qw": qw,
        "w_scale": torch.from_numpy(scale),
        "w_zero": torch.from_numpy(zero),
        "w_sum": ref_ops.code_sums(qw, k),
        "bias": torch.from_numpy(bias),
    }


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("case", ["random", "batched", "one", "odd_k", "zero_rows", "extreme_clip", "multi_tile"])
def test_gemm_matches_numpy(ref_ops, case: str, with_bias: bool) -> None:
    x, clo, chi, t = make_case(case)
    _m, k = x.shape
    n = 45 if case != "multi_tile" else 131
    w = _weights(ref_ops, n, k, 4)
    assert torch.equal(w["w_sum"], w["codes"].sum(1).to(torch.int32))
    qx, xs, xz, xsum = ref_ops.act_quant(torch.from_numpy(x), torch.from_numpy(clo), torch.from_numpy(chi), 4, t)
    bias = w["bias"] if with_bias else None
    args = (qx, xs, xz, xsum, w["qw"], w["w_scale"], w["w_zero"], w["w_sum"], bias, k)

    acc = ref_ops.gemm(*args, out_dtype=torch.int32)
    acc_ref = npref.gemm_int(npref.unpack(qx.numpy(), k), w["codes"].numpy())
    np.testing.assert_array_equal(acc.numpy(), acc_ref)

    y = ref_ops.gemm(*args, out_dtype=torch.float32)
    y_ref = npref.gemm_epilogue_f64(
        acc_ref, xs, xz, xsum, w["w_scale"], w["w_zero"], w["w_sum"], None if bias is None else bias.numpy(), k
    )
    tol = 1e-5 * max(1.0, float(np.abs(y_ref).max()))
    np.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-5, atol=tol)

    # Low-precision outputs are the float32 result rounded to nearest even.
    y16 = ref_ops.gemm(*args, out_dtype=torch.float16)
    assert torch.equal(y16, y.to(torch.float16))
    ybf = ref_ops.gemm(*args, out_dtype=torch.bfloat16)
    assert torch.equal(ybf, y.to(torch.bfloat16))


@pytest.mark.parametrize("bits", [4, 3])
def test_gemm_matches_fake_quant_linear(ref_ops, bits: int) -> None:
    """y equals F.linear(fake_quant_act(x), fake_quant_weight(w)) + b up to float rounding."""
    torch.manual_seed(0)
    b, t, k, n = 2, 19, 203, 37
    qmax = 2**bits - 1
    x = torch.randn(b, t, k) * 2
    w = torch.randn(n, k) * 0.05
    ws = (w.amax(1, keepdim=True) - w.amin(1, keepdim=True)) / qmax
    wz = -w.amin(1, keepdim=True) / ws + 0.3  # float (unrounded) zero point
    bias = torch.randn(n)
    lo, hi = torch.tensor([0.9, 0.7]), torch.tensor([0.8, 0.95])
    y_ref = torch.nn.functional.linear(
        QF.fake_quant_act(x, lo, hi, qmax), QF.fake_quant_weight(w, ws, wz, qmax), bias
    ).reshape(b * t, n)
    codes = QF.weight_codes(w, ws, wz, qmax).to(torch.uint8)
    qw = torch.from_numpy(npref.pack(codes.numpy().astype(np.int64), ref_ops.packed_row_bytes(k)))
    qx, xs, xz, xsum = ref_ops.act_quant(x.reshape(-1, k), lo, hi, bits, t)
    y = ref_ops.gemm(
        qx, xs, xz, xsum, qw, ws.reshape(-1), wz.reshape(-1), ref_ops.code_sums(qw, k), bias, k, out_dtype=torch.float32
    )
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5 * float(y_ref.abs().max()))


def test_float_conversions_round_to_nearest_even(ref_ops) -> None:
    from qvgen_export.native import _lib

    lib = _lib.reference_library()
    rng = np.random.default_rng(3)
    special = [
        0.0,
        -0.0,
        1.0,
        65504.0,
        65519.99,
        65520.0,
        1e9,
        -1e9,
        6e-8,
        2.98e-8,
        2.9802322e-08,
        5.96e-8,
        6.1e-5,
        6.103515625e-05,
        1.0009765625,
        1.00048828125,
        1.000732421875,
        np.inf,
        -np.inf,
    ]
    vals = np.concatenate(
        [np.array(special, F32), (rng.standard_normal(4000) * 10.0 ** rng.integers(-9, 6, 4000)).astype(F32)]
    )
    half = np.array([lib.qvgen_ref_float_to_half(ctypes.c_float(v)) for v in vals], np.uint16)
    with np.errstate(over="ignore"):  # values beyond 65520 round to inf, which is the point
        np.testing.assert_array_equal(half, vals.astype(np.float16).view(np.uint16))
    bf = np.array([lib.qvgen_ref_float_to_bf16(ctypes.c_float(v)) for v in vals], np.uint16)
    np.testing.assert_array_equal(
        bf, torch.from_numpy(vals).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    )


def test_errors_are_statuses_not_aborts(ref_ops) -> None:
    from qvgen_export.native import NativeError, _lib

    lib = _lib.reference_library()
    x = torch.randn(4, 10)
    qx = torch.zeros(4, 16, dtype=torch.uint8)
    s = torch.zeros(4)
    z = torch.zeros(4, dtype=torch.int32)
    c = torch.ones(1)
    call = lambda bits, ldq, k=10: lib.qvgen_ref_act_quant(
        x.data_ptr(),
        0,
        4,
        k,
        10,
        c.data_ptr(),
        c.data_ptr(),
        4,
        bits,
        qx.data_ptr(),
        ldq,
        s.data_ptr(),
        z.data_ptr(),
        z.data_ptr(),
    )
    assert call(4, 4) == 1 and "ldq" in lib.qvgen_ref_last_error().decode()  # ldq < ceil(K/2)
    assert call(5, 16) == 2  # 5-bit codes do not fit a 4-bit container
    assert call(4, 16, k=0) == 1
    assert lib.qvgen_ref_gemm(None, 16, None, None, None, None, 16, None, None, None, None, 2, 2, 10, None, 0, 2) == 1
    assert call(4, 16) == 0 and lib.qvgen_ref_last_error() == b""
    with pytest.raises(NativeError, match="INVALID_ARGUMENT"):
        ref_ops.gemm(qx, None, None, None, qx, None, None, None, None, 40, out_dtype=torch.int32)
    with pytest.raises(ValueError, match="bits"):
        ref_ops.act_quant(x, c, c, 8)


def test_missing_library_message(tmp_path, monkeypatch) -> None:
    from qvgen_export.native import _lib

    monkeypatch.setattr(_lib, "library_dirs", lambda: [tmp_path])
    with pytest.raises(_lib.NativeLibraryNotFoundError, match="build_native.sh"):
        _lib._load(_lib.CUDA_LIBRARY, "qvgen_cuda", cuda=True)


def test_custom_op_opcheck(ref_ops) -> None:
    x, clo, chi, t = make_case("batched")
    k = x.shape[1]
    w = _weights(ref_ops, 24, k, 4)
    args = (
        torch.from_numpy(x).reshape(3, t, k),
        torch.from_numpy(clo),
        torch.from_numpy(chi),
        w["qw"],
        w["w_scale"],
        w["w_zero"],
        w["w_sum"],
        w["bias"],
        k,
        4,
    )
    torch.library.opcheck(torch.ops.qvgen.w4a4_linear.default, args)
    y = torch.ops.qvgen.w4a4_linear(*args)
    assert y.shape == (3, t, 24) and y.dtype == torch.float32
    yb = torch.ops.qvgen.w4a4_linear(args[0].bfloat16(), *args[1:])
    assert yb.dtype == torch.bfloat16
