/*
 * qvgen W4A4 CUDA kernels: narrow C API (device pointers, shapes, strides, stream).
 * Layouts and the exact math: qvgen/w4a4_types.h. The CPU reference (qvgen/w4a4_ref.h) has the
 * same signatures minus `path` and `stream`, and produces the same bits.
 *
 * Conventions
 *   - Every pointer argument is a DEVICE pointer on the current device, except `stream`.
 *   - `stream` is a cudaStream_t passed as void* (NULL = legacy default stream); work is only
 *     enqueued, nothing synchronizes. Launch errors are reported; asynchronous execution
 *     errors surface at the caller's next synchronization.
 *   - Packed code operands (qx, qw): 16-byte aligned base pointers, row stride ld % 16 == 0.
 *   - Every function is noexcept, returns a qvgen_status, never aborts the process;
 *     qvgen_cuda_last_error() describes the last failure of the calling host thread.
 *   - Built for sm_80/86/89/90 by default (CMake QVGEN_CUDA_ARCHITECTURES); sm_80+ required
 *     (cp.async and mma.sync m16n8k*).
 */
#ifndef QVGEN_W4A4_CUDA_H
#define QVGEN_W4A4_CUDA_H

#include <stdint.h>

#include "qvgen/w4a4_types.h"

#if defined(_WIN32)
#define QVGEN_CUDA_API __declspec(dllexport)
#else
#define QVGEN_CUDA_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

QVGEN_CUDA_API int qvgen_cuda_abi_version(void);
QVGEN_CUDA_API const char* qvgen_cuda_last_error(void);

/*
 * Per-token dynamic activation quantization (one CTA per token).
 *   x        [M, ldx] elements of x_dtype (F32/F16/BF16), ldx >= K
 *   clip_lo  [ceil(M/T)] float32, clip_hi likewise (device)
 *   T        tokens per sample (>= 1): token m uses clip_*[m / T]
 *   bits     2..4
 *   qx       [M, ldq] uint8 packed (out): ldq >= ceil(K/2), ldq % 16 == 0, 16-byte aligned;
 *            the whole row (codes k >= K included) is written, padding codes as 0
 *   scale    [M] float32 (out); zero [M] int32 (out); code_sum [M] int32 (out)
 */
QVGEN_CUDA_API int qvgen_cuda_act_quant(const void* x, int x_dtype, int64_t M, int64_t K, int64_t ldx,
                                        const float* clip_lo, const float* clip_hi, int64_t T, int bits,
                                        uint8_t* qx, int64_t ldq, float* scale, int32_t* zero, int32_t* code_sum,
                                        void* stream);

/* w_sum[n] = sum_{k<K} qw[n,k]. qw [N, ldq] uint8 packed (any ld >= ceil(K/2)); w_sum [N] int32. */
QVGEN_CUDA_API int qvgen_cuda_code_sums(const uint8_t* qw, int64_t ldq, int64_t N, int64_t K, int32_t* w_sum,
                                        void* stream);

/*
 * y = W4A4 linear with the epilogue of qvgen/w4a4_types.h.
 *   qx [M, ldqx] uint8 packed activation codes; x_scale [M] f32; x_zero [M] i32; x_sum [M] i32
 *   qw [N, ldqw] uint8 packed weight codes;     w_scale [N] f32; w_zero [N] f32; w_sum [N] i32
 *   bias [N] f32 or NULL
 *   y  [M, ldy] elements of y_dtype (F32/F16/BF16/I32), ldy >= N
 *   path  a qvgen_gemm_path; QVGEN_PATH_AUTO picks per compiled architecture (u4 MMA on
 *         sm_80..89, nibble->byte unpack + u8 IMMA on sm_90+). All paths give identical bits.
 * Tiles: 128x128 outputs per CTA, K in steps of 64 codes (32 bytes), 3-stage cp.async pipeline.
 * Per-group weight scales are not supported (the epilogue is per output channel).
 */
QVGEN_CUDA_API int qvgen_cuda_gemm(const uint8_t* qx, int64_t ldqx, const float* x_scale, const int32_t* x_zero,
                                   const int32_t* x_sum, const uint8_t* qw, int64_t ldqw, const float* w_scale,
                                   const float* w_zero, const int32_t* w_sum, const float* bias, int64_t M, int64_t N,
                                   int64_t K, void* y, int y_dtype, int64_t ldy, int path, void* stream);

/* The path QVGEN_PATH_AUTO runs on the current device (queried from its compute capability). */
QVGEN_CUDA_API int qvgen_cuda_resolve_path(int path, int* resolved);

/*
 * On-device self-check of one GEMM path against QVGEN_PATH_SIMT: random codes, awkward shapes
 * (odd M, K not a multiple of 64, odd K, partial tiles), I32 and F32 outputs. Synchronizes
 * `stream`. *mismatches = number of differing output elements (0 = pass).
 */
QVGEN_CUDA_API int qvgen_cuda_selftest(int path, void* stream, int64_t* mismatches);

#ifdef __cplusplus
}
#endif

#endif /* QVGEN_W4A4_CUDA_H */
