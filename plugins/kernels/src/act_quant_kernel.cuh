// The per-token activation quantization kernel, included by act_quant.cu and, with
// QVGEN_EMULATE defined, by the host emulator plugins/kernels/emu/kernels_emu.cpp.
//
// One CTA of 128 threads per token: pass 1 reduces min/max over the row, thread 0 derives the
// scale and zero point with the exact float32 operations of quant/functional.py, pass 2 re-reads
// the row (from L2), writes packed codes 8 at a time (one uint32 per 8 codes) and reduces the
// code sum that the GEMM's zero-point correction needs.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.cuh"

namespace qvgen {
namespace aq {

constexpr int AQ_THREADS = 128;
constexpr int AQ_WARPS = AQ_THREADS / 32;

// A 16-bit float (half or bfloat16) given by its bits, as float (exact).
template <typename T>
__device__ __forceinline__ float bits16_to_float(uint16_t b);
template <>
__device__ __forceinline__ float bits16_to_float<__half>(uint16_t b) {
  return __half2float(__ushort_as_half(b));
}
template <>
__device__ __forceinline__ float bits16_to_float<__nv_bfloat16>(uint16_t b) {
  return __bfloat162float(__ushort_as_bfloat16(b));
}

// Loads x[k0 .. k0+7] as float; elements at k >= K read as 0 (callers mask them out).
// vec: the row is 16-byte aligned and K % 8 == 0, so 8 elements are one or two 16-byte loads.
template <typename T>
__device__ __forceinline__ void load8(const T* row, int32_t k0, int32_t K, bool vec, float (&v)[8]) {
  if (vec) {
    if constexpr (sizeof(T) == 4) {
      const float4 a = *reinterpret_cast<const float4*>(row + k0);
      const float4 b = *reinterpret_cast<const float4*>(row + k0 + 4);
      v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
      const uint4 u = *reinterpret_cast<const uint4*>(row + k0);
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        v[2 * i] = bits16_to_float<T>(static_cast<uint16_t>(w[i] & 0xFFFFu));
        v[2 * i + 1] = bits16_to_float<T>(static_cast<uint16_t>(w[i] >> 16));
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = (k0 + i < K) ? to_float(row[k0 + i]) : 0.0f;
  }
}

template <typename T>
__global__ void __launch_bounds__(AQ_THREADS)
    act_quant_kernel(const T* __restrict__ x, int64_t ldx, int32_t K, const float* __restrict__ clip_lo,
                     const float* __restrict__ clip_hi, int64_t tokens_per_sample, int qmax, uint8_t* __restrict__ qx,
                     int64_t ldq, float* __restrict__ scale, int32_t* __restrict__ zero,
                     int32_t* __restrict__ code_sum, bool vec) {
  QVGEN_SHARED float s_min[AQ_WARPS], s_max[AQ_WARPS];
  QVGEN_SHARED int32_t s_sum[AQ_WARPS];
  QVGEN_SHARED float s_scale, s_zp;

  const int64_t m = blockIdx.x;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const T* row = x + m * ldx;

  // Pass 1: min / max over the K channels (order-independent, so exact).
  float mn = INFINITY, mx = -INFINITY;
  const int32_t kgroups = (K + 7) / 8;
  for (int32_t gi = tid; gi < kgroups; gi += AQ_THREADS) {
    float v[8];
    load8(row, gi * 8, K, vec, v);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (gi * 8 + i < K) {
        mn = fminf(mn, v[i]);
        mx = fmaxf(mx, v[i]);
      }
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  }
  if (lane == 0) s_min[warp] = mn, s_max[warp] = mx;
  __syncthreads();
  if (tid == 0) {
    float a = s_min[0], b = s_max[0];
    for (int w = 1; w < AQ_WARPS; ++w) a = fminf(a, s_min[w]), b = fmaxf(b, s_max[w]);
    const int64_t sample = m / tokens_per_sample;
    const float qmaxf = static_cast<float>(qmax);
    // functional.act_range / act_qparams, one IEEE operation at a time.
    const float lo = __fmul_rn(fminf(a, 0.0f), clip_lo[sample]);
    const float hi = __fmul_rn(fmaxf(b, 0.0f), clip_hi[sample]);
    const float sc = fmaxf(__fdiv_rn(__fsub_rn(hi, lo), qmaxf), 1e-8f);
    const float zp = fminf(fmaxf(rintf(__fdiv_rn(-lo, sc)), 0.0f), qmaxf);
    s_scale = sc;
    s_zp = zp;
  }
  __syncthreads();
  const float sc = s_scale, zp = s_zp, qmaxf = static_cast<float>(qmax);

  // Pass 2: codes, 8 per uint32 (low nibble = even k), over the whole padded row.
  uint32_t* out = reinterpret_cast<uint32_t*>(qx + m * ldq);
  const int64_t words = ldq / 4;
  int32_t sum = 0;
  for (int64_t wi = tid; wi < words; wi += AQ_THREADS) {
    const int32_t k0 = static_cast<int32_t>(wi * 8);
    uint32_t word = 0;
    if (k0 < K) {
      float v[8];
      load8(row, k0, K, vec, v);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        if (k0 + i < K) {
          // functional.act_codes: clamp(round(x / s) + zp, 0, qmax)
          const float qf = fminf(fmaxf(__fadd_rn(rintf(__fdiv_rn(v[i], sc)), zp), 0.0f), qmaxf);
          const uint32_t q = static_cast<uint32_t>(qf);
          word |= q << (4 * i);
          sum += static_cast<int32_t>(q);
        }
      }
    }
    out[wi] = word;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (lane == 0) s_sum[warp] = sum;
  __syncthreads();
  if (tid == 0) {
    int32_t total = 0;
    for (int w = 0; w < AQ_WARPS; ++w) total += s_sum[w];
    scale[m] = sc;
    zero[m] = static_cast<int32_t>(zp);
    code_sum[m] = total;
  }
}

}  // namespace aq
}  // namespace qvgen
