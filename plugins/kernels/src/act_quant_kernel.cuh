// The per-token activation quantization kernel, included by act_quant.cu and, with
// QVGEN_EMULATE defined, by the host emulator plugins/kernels/emu/kernels_emu.cpp.
//
// One WARP per token, AQ_TOKENS (8) tokens per CTA of 256 threads, no __syncthreads and no shared
// memory. Pass 1 loads the row 8 elements at a time (16/32-byte vector loads when aligned),
// keeps the first AQ_CACHE groups of 8 elements of each lane in registers (the whole row for
// K <= 32 * 8 * AQ_CACHE = 2048, which covers Wan's K = 1536) and reduces min/max with warp
// shuffles; every lane then derives the same scale and zero point with the exact float32
// operations of quant/functional.py (no broadcast needed). Pass 2 quantizes from the registers
// (re-reading only the groups beyond the cache, from L2) with at most one division per ~130
// elements (rint_div below), writes one packed uint32 (8 codes) or,
// for the INT8-container variant (BYTES = true, the Hopper wgmma path), one uint2 (8 bytes) per
// group, and reduces the code sum.
//
// The division stays (__fdiv_rn): q = rint(x / scale) must equal PyTorch's correctly rounded
// x / scale, and x * (1 / scale) is not correctly rounded (it can be one ulp off), which changes
// rint wherever the quotient lands on or next to a .5 boundary; no cheaper exact form was proven.
// div.rn.f32's fast path is ~8 FMA-pipe instructions, about the HBM time of one bf16 element on
// H100 (estimate), so the kernel should stay near bandwidth-bound.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.cuh"

namespace qvgen {
namespace aq {

constexpr int AQ_THREADS = 256;
constexpr int AQ_TOKENS = AQ_THREADS / 32;  // one warp per token
constexpr int AQ_CACHE = 8;                 // groups of 8 elements kept in registers per lane

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

// rint(fl(x / s)) bit for bit, given inv = fl(1 / s) (see the comment at the top).
__device__ __forceinline__ float rint_div(float x, float s, float inv) {
  const float q0 = __fmul_rn(x, inv);
  const float f = __fsub_rn(q0, floorf(q0));  // exact for |q0| < 2^12 (Sterbenz / small integers)
  if (fabsf(q0) < 4096.0f && fabsf(__fsub_rn(f, 0.5f)) > 0.00390625f) return rintf(q0);
  return rintf(__fdiv_rn(x, s));
}

template <typename T, bool BYTES>
__global__ void __launch_bounds__(AQ_THREADS)
    act_quant_kernel(const T* __restrict__ x, int64_t M, int64_t ldx, int32_t K, const float* __restrict__ clip_lo,
                     const float* __restrict__ clip_hi, int64_t tokens_per_sample, int qmax, uint8_t* __restrict__ qx,
                     int64_t ldq, float* __restrict__ scale, int32_t* __restrict__ zero,
                     int32_t* __restrict__ code_sum, bool vec) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t m = static_cast<int64_t>(blockIdx.x) * AQ_TOKENS + warp;
  if (m >= M) return;  // whole warps only: the shuffles below stay full-warp
  const T* row = x + m * ldx;

  // Pass 1: min / max over the K channels (order-independent, so exact); cache the row.
  float cache[AQ_CACHE][8];
  float mn = INFINITY, mx = -INFINITY;
  const int32_t kgroups = (K + 7) / 8;
#pragma unroll
  for (int c = 0; c < AQ_CACHE; ++c) {
    const int32_t gi = lane + 32 * c;
    if (gi < kgroups) {
      load8(row, gi * 8, K, vec, cache[c]);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        if (gi * 8 + i < K) {
          mn = fminf(mn, cache[c][i]);
          mx = fmaxf(mx, cache[c][i]);
        }
      }
    }
  }
  for (int32_t gi = lane + 32 * AQ_CACHE; gi < kgroups; gi += 32) {
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
  // Every lane holds the same mn, mx: each computes the same scale and zero point.
  const int64_t sample = m / tokens_per_sample;
  const float qmaxf = static_cast<float>(qmax);
  // functional.act_range / act_qparams, one IEEE operation at a time.
  const float lo = __fmul_rn(fminf(mn, 0.0f), clip_lo[sample]);
  const float hi = __fmul_rn(fmaxf(mx, 0.0f), clip_hi[sample]);
  const float sc = fmaxf(__fdiv_rn(__fsub_rn(hi, lo), qmaxf), 1e-8f);
  const float zp = fminf(fmaxf(rintf(__fdiv_rn(-lo, sc)), 0.0f), qmaxf);
  const float inv = __frcp_rn(sc);  // correctly rounded 1 / scale, for rint_div

  // Pass 2: codes of group gi (8 elements) -> word gi of the output row (packed: uint32 of 8
  // nibbles, low nibble = even k; bytes: uint2 of 8 bytes). Groups beyond K are written as 0.
  const int64_t words = BYTES ? ldq / 8 : ldq / 4;
  int32_t sum = 0;
  for (int64_t wi = lane; wi < words; wi += 32) {
    const int32_t k0 = static_cast<int32_t>(wi * 8);
    uint32_t lo_w = 0, hi_w = 0;  // packed: lo_w only; bytes: codes 0..3 in lo_w, 4..7 in hi_w
    if (k0 < K) {
      float v[8];
      const int64_t c = wi >> 5;
      if (c < AQ_CACHE) {
#pragma unroll
        for (int cc = 0; cc < AQ_CACHE; ++cc)  // static register indexing (no local memory)
          if (cc == c) {
#pragma unroll
            for (int i = 0; i < 8; ++i) v[i] = cache[cc][i];
          }
      } else {
        load8(row, k0, K, vec, v);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        if (k0 + i < K) {
          // functional.act_codes: clamp(round(x / s) + zp, 0, qmax)
          const float qf = fminf(fmaxf(__fadd_rn(rint_div(v[i], sc, inv), zp), 0.0f), qmaxf);
          const uint32_t q = static_cast<uint32_t>(qf);
          if constexpr (BYTES) {
            if (i < 4)
              lo_w |= q << (8 * i);
            else
              hi_w |= q << (8 * (i - 4));
          } else {
            lo_w |= q << (4 * i);
          }
          sum += static_cast<int32_t>(q);
        }
      }
    }
    if constexpr (BYTES) {
      reinterpret_cast<uint2*>(qx + m * ldq)[wi] = make_uint2(lo_w, hi_w);
    } else {
      reinterpret_cast<uint32_t*>(qx + m * ldq)[wi] = lo_w;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (lane == 0) {
    scale[m] = sc;
    zero[m] = static_cast<int32_t>(zp);
    code_sum[m] = sum;
  }
}

}  // namespace aq
}  // namespace qvgen
