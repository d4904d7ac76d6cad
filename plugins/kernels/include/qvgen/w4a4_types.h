/*
 * qvgen W4A4: types, status codes and the packed layouts shared by the CUDA kernels
 * (qvgen/w4a4_cuda.h) and the CPU reference (qvgen/w4a4_ref.h). Plain C, no CUDA needed.
 *
 * Notations
 * ---------
 *   M  tokens (rows of the activation), K input features, N output features.
 *   T  tokens per sample: token m belongs to sample b = m / T (its clip factors are clip_*[b]).
 *   b  bit width of a code (2..4); qmax = 2^b - 1; codes are unsigned levels 0..qmax.
 *
 * Packed 4-bit layout (both operands, identical to the checkpoint, qvgen_export/quant/packing.py)
 * ------------------------------------------------------------------------------------------
 *   uint8 [rows, ld] row-major, ld = row stride in BYTES, ld >= ceil(K/2).
 *   byte j of a row holds code 2j in its low nibble and code 2j+1 in its high nibble
 *   (so a little-endian uint32 at byte 4i holds codes 8i..8i+7, code 8i+r in bits 4r..4r+3).
 *   Codes at k >= K (the high nibble of the last byte when K is odd, and the bytes
 *   [ceil(K/2), ld)) are ignored by every GEMM; the activation quantizer writes them as 0.
 *   The CUDA kernels additionally require ld % 16 == 0 and 16-byte aligned base pointers
 *   (the checkpoint's ld = ceil(K/2) satisfies this when K % 32 == 0; otherwise repack with zero
 *   padding at load time, as qvgen_export/runtime/torch_int4.py does).
 *
 * Activation quantization (per token, dynamic, asymmetric; bit-exact with
 * qvgen_export/quant/functional.py::fake_quant_act in float32):
 *   lo    = min(min_k x[m,k], 0) * clip_lo[b]        hi = max(max_k x[m,k], 0) * clip_hi[b]
 *   scale = max((hi - lo) / qmax, 1e-8f)               (IEEE division, round to nearest even)
 *   zero  = clamp(rint(-lo / scale), 0, qmax)          (rint = round half to even)
 *   q     = clamp(rint(x / scale) + zero, 0, qmax)
 *   sum   = sum_{k<K} q[m,k]                            (exact int32)
 *   x_hat = (q - zero) * scale.
 *   Inputs are converted to float32 first (bf16/fp16 -> f32 is exact). NaN inputs: undefined.
 *
 * Weights (per output channel; per-group scales are NOT supported by these kernels):
 *   w_hat[n,k] = qw[n,k] * w_scale[n] - w_zero[n] * w_scale[n], w_zero a FLOAT zero point.
 *
 * GEMM epilogue (the same float operations, in this order, on CPU and GPU):
 *   acc[m,n] = sum_{k<K} qx[m,k] * qw[n,k]                         (exact int32)
 *   I        = acc - x_zero[m] * w_sum[n]                            (exact int32)
 *   Tm       = K * x_zero[m] - x_sum[m]                              (exact int32)
 *   corr     = fmaf(w_zero[n], (float)Tm, (float)I)                  (one rounding)
 *   s        = x_scale[m] * w_scale[n]
 *   y[m,n]   = bias ? fmaf(s, corr, bias[n]) : s * corr
 *   which is  s_x*s_w*( acc - z_w*sum qx - z_x*sum qw + K*z_x*z_w ) + bias
 *           = sum_k x_hat[m,k] * w_hat[n,k] + bias[n]   (up to float rounding).
 *   y is then converted to the output dtype with round-to-nearest-even.
 *   With out dtype QVGEN_DTYPE_I32 the raw acc is written (scales, zeros, sums, bias unused and
 *   may be NULL): a bit-exact test hook for the integer part.
 *   K must be <= QVGEN_MAX_K (74,565) so that every integer above is exact in int32 and its conversion
 *   to float32 is exact (|I| <= 225 K <= 2^24).
 *
 * Byte layout (Hopper wgmma path, qvgen_cuda_act_quant_u8 / qvgen_cuda_unpack_u8 / qvgen_cuda_gemm_u8)
 * ----------------------------------------------------------------------------------------------
 *   uint8 [rows, ld8], one code (0..qmax) per byte, byte k = code k; bytes k >= K are 0 (the GEMM
 *   reads them: it runs over K rounded up to 16). ld8 % 16 == 0, ld8 >= K, 16-byte aligned base.
 */
#ifndef QVGEN_W4A4_TYPES_H
#define QVGEN_W4A4_TYPES_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element types of activations and outputs. */
typedef enum qvgen_dtype {
  QVGEN_DTYPE_F32 = 0,
  QVGEN_DTYPE_F16 = 1,
  QVGEN_DTYPE_BF16 = 2,
  QVGEN_DTYPE_I32 = 3 /* GEMM output only: raw integer accumulator */
} qvgen_dtype;

/* Every entry point returns one of these; never aborts. Details: *_last_error(). */
typedef enum qvgen_status {
  QVGEN_OK = 0,
  QVGEN_ERR_INVALID_ARGUMENT = 1, /* null pointer, bad shape/stride/alignment/dtype */
  QVGEN_ERR_UNSUPPORTED = 2,      /* valid request this build cannot do (bits > 4, K too large, arch) */
  QVGEN_ERR_CUDA = 3,             /* a CUDA runtime error (launch failure, no device...) */
  QVGEN_ERR_INTERNAL = 4          /* out of host memory or an unexpected C++ exception */
} qvgen_status;

/* GEMM implementation choice (CUDA only; the CPU reference has one). */
typedef enum qvgen_gemm_path {
  QVGEN_PATH_AUTO = 0,      /* sm_80/86/89: MMA_U4; sm_90: WGMMA_U8 where built, else IMMA_U8; newer: IMMA_U8 */
  QVGEN_PATH_MMA_U4 = 1,    /* mma.sync m16n8k64 u4 (native on sm_80..89, emulated on sm_90) */
  QVGEN_PATH_IMMA_U8 = 2,   /* unpack nibbles to bytes in registers, mma.sync m16n8k32 u8 */
  QVGEN_PATH_SIMT = 3,      /* one thread per output, plain integer loop: slow, obviously right */
  QVGEN_PATH_WGMMA_U8 = 4   /* sm_90a only, built with CUTLASS: codes one per byte, TMA + wgmma u8 (IGMMA),
                               the epilogue as a CUTLASS visitor tree (qvgen_cuda_gemm_u8) */
} qvgen_gemm_path;

/* Largest supported K: the integer I = acc - x_zero * w_sum lies in [-225 K, 225 K] (codes <= 15)
 * and is converted to float32, which is exact only up to 2^24 = 16,777,216, i.e. K <= 74,565
 * (floor(2^24 / 225)); Tm = K * x_zero - x_sum is within 15 K. Every int32 above is then exact,
 * and so are the int -> float conversions. Larger K returns QVGEN_ERR_UNSUPPORTED. (Wan: K <= 13,824.)
 * ABI version 2: QVGEN_MAX_K lowered from 2^20 (whose bound was wrong), QVGEN_PATH_WGMMA_U8 and the
 * byte-container functions added; signatures of version 1 unchanged. */
#define QVGEN_MAX_K 74565
#define QVGEN_W4A4_ABI_VERSION 2

#ifdef __cplusplus
}
#endif

#endif /* QVGEN_W4A4_TYPES_H */
