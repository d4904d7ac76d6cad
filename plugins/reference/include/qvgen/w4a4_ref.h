/*
 * qvgen W4A4 CPU reference: the same operations and layouts as the CUDA kernels
 * (qvgen/w4a4_cuda.h), written for clarity. Layouts and math: qvgen/w4a4_types.h.
 * All pointers are host pointers. Every function is noexcept, returns a qvgen_status and
 * never aborts; qvgen_ref_last_error() describes the last failure of the calling thread.
 */
#ifndef QVGEN_W4A4_REF_H
#define QVGEN_W4A4_REF_H

#include <stdint.h>

#include "qvgen/w4a4_types.h"

#if defined(_WIN32)
#define QVGEN_REF_API __declspec(dllexport)
#else
#define QVGEN_REF_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* QVGEN_W4A4_ABI_VERSION of the library, to check a loaded .so against this header. */
QVGEN_REF_API int qvgen_ref_abi_version(void);

/* Message of the last error on this thread ("" if none). Valid until the next call. */
QVGEN_REF_API const char* qvgen_ref_last_error(void);

/*
 * Per-token dynamic activation quantization.
 *   x        [M, ldx] elements of x_dtype (F32/F16/BF16), row-major, ldx >= K
 *   clip_lo  [ceil(M/T)] float32, clip_hi likewise: per-sample clip factors
 *   T        tokens per sample (>= 1)
 *   bits     2..4
 *   qx       [M, ldq] uint8 packed codes (out), ldq >= ceil(K/2); every byte of each row written
 *   scale    [M] float32 (out); zero [M] int32 (out); code_sum [M] int32 (out)
 */
QVGEN_REF_API int qvgen_ref_act_quant(const void* x, int x_dtype, int64_t M, int64_t K, int64_t ldx,
                                      const float* clip_lo, const float* clip_hi, int64_t T, int bits,
                                      uint8_t* qx, int64_t ldq, float* scale, int32_t* zero, int32_t* code_sum);

/*
 * Per-row sums of packed codes over k < K: w_sum[n] = sum_k qw[n,k] (exact int32).
 *   qw [N, ldq] uint8 packed; w_sum [N] int32 (out)
 */
QVGEN_REF_API int qvgen_ref_code_sums(const uint8_t* qw, int64_t ldq, int64_t N, int64_t K, int32_t* w_sum);

/*
 * y = W4A4 linear (see the epilogue in qvgen/w4a4_types.h).
 *   qx [M, ldqx] uint8 packed activation codes; x_scale [M] f32; x_zero [M] i32; x_sum [M] i32
 *   qw [N, ldqw] uint8 packed weight codes;     w_scale [N] f32; w_zero [N] f32; w_sum [N] i32
 *   bias [N] f32 or NULL
 *   y  [M, ldy] elements of y_dtype (F32/F16/BF16/I32), ldy >= N
 */
QVGEN_REF_API int qvgen_ref_gemm(const uint8_t* qx, int64_t ldqx, const float* x_scale, const int32_t* x_zero,
                                 const int32_t* x_sum, const uint8_t* qw, int64_t ldqw, const float* w_scale,
                                 const float* w_zero, const int32_t* w_sum, const float* bias, int64_t M, int64_t N,
                                 int64_t K, void* y, int y_dtype, int64_t ldy);

/* Float -> half / bfloat16 bits with round-to-nearest-even (exported for tests). */
QVGEN_REF_API uint16_t qvgen_ref_float_to_half(float f);
QVGEN_REF_API uint16_t qvgen_ref_float_to_bf16(float f);

#ifdef __cplusplus
}
#endif

#endif /* QVGEN_W4A4_REF_H */
