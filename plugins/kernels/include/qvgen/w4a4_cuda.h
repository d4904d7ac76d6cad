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
 *   path  a qvgen_gemm_path; QVGEN_PATH_AUTO picks per device (u4 MMA on sm_80..89; on sm_90 the
 *         CUTLASS wgmma path where built and y/ldy are 16-byte aligned, else nibble->byte unpack +
 *         u8 IMMA; IMMA_U8 on newer). All paths give identical bits.
 *   K <= QVGEN_MAX_K (74,565), else QVGEN_ERR_UNSUPPORTED.
 * mma.sync tiles: 128x128 outputs per CTA (grid N-fastest), K in steps of 64 codes, 3-stage cp.async.
 * Per-group weight scales are not supported (the epilogue is per output channel).
 */
QVGEN_CUDA_API int qvgen_cuda_gemm(const uint8_t* qx, int64_t ldqx, const float* x_scale, const int32_t* x_zero,
                                   const int32_t* x_sum, const uint8_t* qw, int64_t ldqw, const float* w_scale,
                                   const float* w_zero, const int32_t* w_sum, const float* bias, int64_t M, int64_t N,
                                   int64_t K, void* y, int y_dtype, int64_t ldy, int path, void* stream);

/*
 * ---- INT8 containers (Hopper wgmma path, ABI version 2) ----------------------------------------
 * Byte layout: qvgen/w4a4_types.h ("Byte layout").
 *
 * qvgen_cuda_act_quant_u8: qvgen_cuda_act_quant with one code per byte instead of packed nibbles
 *   (same codes, scales, zeros, sums bit for bit). qx8 [M, ldq8] uint8 (out): ldq8 >= K,
 *   ldq8 % 16 == 0, 16-byte aligned; bytes k >= K written as 0.
 */
QVGEN_CUDA_API int qvgen_cuda_act_quant_u8(const void* x, int x_dtype, int64_t M, int64_t K, int64_t ldx,
                                           const float* clip_lo, const float* clip_hi, int64_t T, int bits,
                                           uint8_t* qx8, int64_t ldq8, float* scale, int32_t* zero,
                                           int32_t* code_sum, void* stream);

/*
 * Packed codes -> one code per byte ("prepare weights"): out[r, k] = code k of q row r for k < K,
 * 0 for K <= k < ld8. q [rows, ldq] packed (any ldq >= ceil(K/2), any alignment);
 * out [rows, ld8] uint8, ld8 >= K, ld8 % 16 == 0, 16-byte aligned. Run it ONCE per weight at load
 * time: the INT8 copy costs rows * ld8 bytes, i.e. 2x the packed INT4 weight (still half of bf16;
 * Wan 2.1 1.3B block linears: ~1.3 GiB instead of ~0.65 GiB packed, 2.6 GiB bf16).
 */
QVGEN_CUDA_API int qvgen_cuda_unpack_u8(const uint8_t* q, int64_t ldq, int64_t rows, int64_t K, uint8_t* out,
                                        int64_t ld8, void* stream);

/*
 * The W4A4 GEMM of qvgen_cuda_gemm over byte codes, on path WGMMA_U8 only (CUTLASS sm_90a build,
 * compute capability 9.0; otherwise QVGEN_ERR_UNSUPPORTED with a message).
 *   qx8 [M, ldqx8], qw8 [N, ldqw8] uint8 byte codes, bytes k >= K zero; ld >= K rounded up to 16,
 *   ld % 16 == 0, 16-byte aligned. Other arguments as qvgen_cuda_gemm. y must be 16-byte aligned
 *   and ldy a multiple of 16 bytes (the epilogue stores with TMA). M, N < 2^31.
 * Same bits as every other path. qvgen_cuda_gemm(path = WGMMA_U8, or AUTO on sm_90) does the
 * same from packed operands by unpacking both into stream-ordered scratch per call
 * (cudaMallocAsync, M*Kp + N*Kp bytes).
 */
QVGEN_CUDA_API int qvgen_cuda_gemm_u8(const uint8_t* qx8, int64_t ldqx8, const float* x_scale, const int32_t* x_zero,
                                      const int32_t* x_sum, const uint8_t* qw8, int64_t ldqw8, const float* w_scale,
                                      const float* w_zero, const int32_t* w_sum, const float* bias, int64_t M,
                                      int64_t N, int64_t K, void* y, int y_dtype, int64_t ldy, void* stream);

/* 1 if this library was built with the CUTLASS sm_90a path (WGMMA_U8), else 0. */
QVGEN_CUDA_API int qvgen_cuda_has_wgmma(void);

/* The path QVGEN_PATH_AUTO runs on the current device (queried from its compute capability). */
QVGEN_CUDA_API int qvgen_cuda_resolve_path(int path, int* resolved);

/*
 * On-device self-check of one GEMM path: random codes, awkward shapes (odd M, K not a multiple of
 * 64, odd K, partial tiles, garbage in the row padding), I32, F32 and BF16 outputs, compared with
 * expected outputs computed on the HOST by a plain loop with the CPU reference's operations
 * (independent of the device epilogue); the SIMT path is checked against the same host values.
 * Synchronizes `stream`. *mismatches = number of differing output elements of the chosen path
 * plus those of SIMT (0 = pass).
 */
QVGEN_CUDA_API int qvgen_cuda_selftest(int path, void* stream, int64_t* mismatches);

#ifdef __cplusplus
}
#endif

#endif /* QVGEN_W4A4_CUDA_H */
