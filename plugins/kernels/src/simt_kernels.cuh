// Plain (non tensor-core) kernels: the SIMT GEMM path and the per-row code sums. Included by
// gemm.cu / act_quant.cu and, with QVGEN_EMULATE defined, by plugins/kernels/emu/kernels_emu.cpp.
#pragma once

#include <cstdint>

#include "common.cuh"

namespace qvgen {
namespace simt {

// Path SIMT: one thread per output element, byte-wise integer loop. Slow and plainly correct:
// the yardstick of the self-test and a fallback should a tensor-core path ever fail it.
template <int OUT>
__global__ void gemm_simt_kernel(const GemmParams p) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= p.N) return;
  const int32_t K = p.K, kbytes = (K + 1) >> 1;
  const uint8_t* wrow = p.qw + n * p.ldqw;
  for (int64_t m = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; m < p.M;
       m += static_cast<int64_t>(gridDim.y) * blockDim.y) {
    const uint8_t* xrow = p.qx + m * p.ldqx;
    int32_t acc = 0;
    for (int32_t j = 0; j < kbytes; ++j) {
      const int32_t bx = xrow[j], bw = wrow[j];
      acc += (bx & 15) * (bw & 15);
      if (2 * j + 1 < K) acc += (bx >> 4) * (bw >> 4);
    }
    float v = 0.0f;
    if constexpr (OUT != QVGEN_DTYPE_I32) {
      v = epilogue(acc, p.x_scale[m], p.x_zero[m], p.x_sum[m], p.w_scale[n], p.w_zero[n], p.w_sum[n], p.bias, n, K);
    }
    store_out<OUT>(p.y, m * p.ldy + n, v, acc);
  }
}

// One warp per row; byte-wise, any stride. static: this header is included by several sources.
static __global__ void code_sums_kernel(const uint8_t* __restrict__ qw, int64_t ldq, int64_t N, int32_t K,
                                        int32_t* __restrict__ out) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (n >= N) return;
  const uint8_t* row = qw + n * ldq;
  int32_t s = 0;
  for (int32_t k = lane; k < K; k += 32) s += (row[k >> 1] >> ((k & 1) * 4)) & 0xF;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) out[n] = s;
}

// Packed codes (two per byte) -> one code per byte, for the INT8 wgmma path: out[r, k] = code k of
// row r for k < K, 0 for K <= k < ld8. Each thread writes 8 bytes (one uint2: ld8 % 16 == 0 and
// out 16-byte aligned), reading the 4 packed bytes byte by byte (any ldq, any alignment).
// Rows: blockIdx.y, striding by gridDim.y.
static __global__ void unpack_u8_kernel(const uint8_t* __restrict__ q, int64_t ldq, int32_t K,
                                        uint8_t* __restrict__ out, int64_t ld8, int64_t rows) {
  const int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (w >= ld8 / 8) return;
  const int32_t k0 = static_cast<int32_t>(w * 8);
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const uint8_t* src = q + r * ldq;
    uint32_t lo = 0, hi = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int32_t k = k0 + i;
      const uint32_t c = k < K ? (src[k >> 1] >> ((k & 1) * 4)) & 0xFu : 0u;
      if (i < 4)
        lo |= c << (8 * i);
      else
        hi |= c << (8 * (i - 4));
    }
    reinterpret_cast<uint2*>(out + r * ld8)[w] = make_uint2(lo, hi);
  }
}

}  // namespace simt
}  // namespace qvgen
