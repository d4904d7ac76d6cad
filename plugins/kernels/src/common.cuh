// Shared helpers of the qvgen W4A4 CUDA kernels: error plumbing, dtype conversion, the epilogue.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>

#include "qvgen/w4a4_cuda.h"

// Shared memory: __shared__ on the device; one static array shared by the emulated threads of a
// CTA under the host emulator (plugins/kernels/emu/kernels_emu.cpp).
#ifdef QVGEN_EMULATE
#define QVGEN_SHARED static
#else
#define QVGEN_SHARED __shared__
#endif

namespace qvgen {

struct Error : std::runtime_error {
  int status;
  Error(int s, const std::string& msg) : std::runtime_error(msg), status(s) {}
};

void set_last_error(const std::string& msg);
void clear_last_error();

#define QVGEN_CHECK(cond, status, msg)                                         \
  do {                                                                         \
    if (!(cond)) throw ::qvgen::Error((status), std::string(__func__) + ": " + (msg)); \
  } while (0)

#define QVGEN_CUDA_CHECK(expr)                                                                          \
  do {                                                                                                  \
    cudaError_t err_ = (expr);                                                                          \
    if (err_ != cudaSuccess)                                                                            \
      throw ::qvgen::Error(QVGEN_ERR_CUDA, std::string(#expr) + ": " + cudaGetErrorName(err_) + ": " + \
                                               cudaGetErrorString(err_));                               \
  } while (0)

// Runs fn at the C boundary: exceptions become a status and a message, never an abort.
template <typename Fn>
int guarded(Fn&& fn) noexcept {
  try {
    clear_last_error();
    fn();
    return QVGEN_OK;
  } catch (const Error& e) {
    set_last_error(e.what());
    return e.status;
  } catch (const std::bad_alloc&) {
    set_last_error("out of host memory");
    return QVGEN_ERR_INTERNAL;
  } catch (const std::exception& e) {
    set_last_error(e.what());
    return QVGEN_ERR_INTERNAL;
  } catch (...) {
    set_last_error("unknown C++ exception");
    return QVGEN_ERR_INTERNAL;
  }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---- device helpers --------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

// The epilogue of qvgen/w4a4_types.h, with explicit _rn intrinsics so that nvcc's FMA
// contraction cannot change the float operations (the CPU reference performs the same ones).
__device__ __forceinline__ float epilogue(int32_t acc, float sx, int32_t zx, int32_t sumx, float sw, float zw,
                                          int32_t sumw, const float* bias, int64_t n, int32_t K) {
  const int32_t I = acc - zx * sumw;
  const int32_t Tm = K * zx - sumx;
  const float corr = __fmaf_rn(zw, __int2float_rn(Tm), __int2float_rn(I));
  const float s = __fmul_rn(sx, sw);
  return bias ? __fmaf_rn(s, corr, bias[n]) : __fmul_rn(s, corr);
}

// The same operations with the per-column parameters already in registers (tensor-core epilogue).
__device__ __forceinline__ float epilogue_cols(int32_t acc, float sx, int32_t zx, int32_t sumx, float sw, float zw,
                                               int32_t sumw, float b, bool has_bias, int32_t K) {
  const int32_t I = acc - zx * sumw;
  const int32_t Tm = K * zx - sumx;
  const float corr = __fmaf_rn(zw, __int2float_rn(Tm), __int2float_rn(I));
  const float s = __fmul_rn(sx, sw);
  return has_bias ? __fmaf_rn(s, corr, b) : __fmul_rn(s, corr);
}

template <int OUT>
__device__ __forceinline__ void store_out(void* y, int64_t idx, float v, int32_t acc);
template <>
__device__ __forceinline__ void store_out<QVGEN_DTYPE_F32>(void* y, int64_t idx, float v, int32_t) {
  static_cast<float*>(y)[idx] = v;
}
template <>
__device__ __forceinline__ void store_out<QVGEN_DTYPE_F16>(void* y, int64_t idx, float v, int32_t) {
  static_cast<__half*>(y)[idx] = __float2half_rn(v);
}
template <>
__device__ __forceinline__ void store_out<QVGEN_DTYPE_BF16>(void* y, int64_t idx, float v, int32_t) {
  static_cast<__nv_bfloat16*>(y)[idx] = __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ void store_out<QVGEN_DTYPE_I32>(void* y, int64_t idx, float, int32_t acc) {
  static_cast<int32_t*>(y)[idx] = acc;
}

// Two adjacent outputs [idx, idx+1] in one store; idx even, y aligned to 2 elements.
template <int OUT>
__device__ __forceinline__ void store_out2(void* y, int64_t idx, const float (&v)[2], const int32_t (&acc)[2]);
template <>
__device__ __forceinline__ void store_out2<QVGEN_DTYPE_F32>(void* y, int64_t idx, const float (&v)[2],
                                                            const int32_t (&)[2]) {
  *reinterpret_cast<float2*>(static_cast<float*>(y) + idx) = make_float2(v[0], v[1]);
}
template <>
__device__ __forceinline__ void store_out2<QVGEN_DTYPE_F16>(void* y, int64_t idx, const float (&v)[2],
                                                            const int32_t (&)[2]) {
  __half2 h;
  h.x = __float2half_rn(v[0]);
  h.y = __float2half_rn(v[1]);
  *reinterpret_cast<__half2*>(static_cast<__half*>(y) + idx) = h;
}
template <>
__device__ __forceinline__ void store_out2<QVGEN_DTYPE_BF16>(void* y, int64_t idx, const float (&v)[2],
                                                             const int32_t (&)[2]) {
  __nv_bfloat162 h;
  h.x = __float2bfloat16_rn(v[0]);
  h.y = __float2bfloat16_rn(v[1]);
  *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(y) + idx) = h;
}
template <>
__device__ __forceinline__ void store_out2<QVGEN_DTYPE_I32>(void* y, int64_t idx, const float (&)[2],
                                                            const int32_t (&acc)[2]) {
  *reinterpret_cast<int2*>(static_cast<int32_t*>(y) + idx) = make_int2(acc[0], acc[1]);
}

// Parameters of one GEMM launch (passed by value to the kernels).
struct GemmParams {
  const uint8_t* qx;
  const float* x_scale;
  const int32_t* x_zero;
  const int32_t* x_sum;
  const uint8_t* qw;
  const float* w_scale;
  const float* w_zero;
  const int32_t* w_sum;
  const float* bias;
  void* y;
  int64_t ldqx, ldqw, ldy;
  int64_t M, N;
  int32_t K;
  bool vec_store;  // ldy even and y aligned to 2 output elements: paired stores in the epilogue
};

// Launchers (gemm.cu).
void launch_gemm(const GemmParams& p, int path, int y_dtype, cudaStream_t stream);

// Any resolved path (WGMMA_U8 included: y/ldy must suit it), for the self-test (gemm.cu).
void gemm_resolved(const GemmParams& p, int resolved, int y_dtype, cudaStream_t stream);

// Packed codes -> one code per byte (act_quant.cu): out [rows, ld8], zeros for K <= k < ld8.
void launch_unpack_u8(const uint8_t* q, int64_t ldq, int64_t rows, int32_t K, uint8_t* out, int64_t ld8,
                      cudaStream_t stream);

// Path WGMMA_U8 (gemm_wgmma_sm90.cu, built only with CUTLASS, sm_90a only): codes one per byte.
struct WgmmaParams {
  const uint8_t* a;  // [M, lda] activation codes, one per byte, codes k >= K zero up to Kp
  const uint8_t* b;  // [N, ldb] weight codes, likewise
  const float* x_scale;
  const int32_t* x_zero;
  const int32_t* x_sum;
  const float* w_scale;
  const float* w_zero;
  const int32_t* w_sum;
  const float* bias;  // or NULL
  void* y;
  int64_t lda, ldb, ldy;
  int64_t M, N;
  int32_t K;   // the real K (epilogue)
  int32_t Kp;  // K rounded up to 16 (the GEMM's K; codes in [K, Kp) are zero)
};
#ifdef QVGEN_HAVE_WGMMA
void launch_wgmma_u8(const WgmmaParams& p, int y_dtype, cudaStream_t stream);
int wgmma_out_alignment(int y_dtype);  // elements: ldy % this == 0 and y 16-byte aligned
#endif

}  // namespace qvgen
