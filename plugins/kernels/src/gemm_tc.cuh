// The tensor-core W4A4 GEMM kernel (paths MMA_U4 and IMMA_U8), included by gemm.cu and, with
// QVGEN_EMULATE defined, by the host emulator plugins/kernels/emu/kernels_emu.cpp, which runs this
// exact code with one host thread per CUDA thread and a model of the PTX MMA fragment layouts.
//
// Design
// ------
// CTA tile 128 (M) x 128 (N), 256 threads = 8 warps as 2 (M) x 4 (N), warp tile 64 x 32
// = 4 x 4 MMA tiles of 16 x 8. K advances 64 codes (32 bytes per row) per stage, 3 stages of
// cp.async. Shared rows are padded from 32 to 48 bytes so that the 32-bit fragment loads of a
// warp hit 32 different banks (row r, word t lands in bank (12 r + t) mod 32).
//
// Fragments, in BYTES of the packed rows (g = lane / 4, t = lane % 4), for one 16 x 8 tile:
//   A: a0 = row g   bytes [4t, 4t+4)      a1 = row g+8 bytes [4t, 4t+4)
//      a2 = row g   bytes [16+4t, 20+4t)  a3 = row g+8 bytes [16+4t, 20+4t)
//   B: b0 = col g   bytes [4t, 4t+4)      b1 = col g   bytes [16+4t, 20+4t)
//   C: c0, c1 = (row g, cols 2t, 2t+1)    c2, c3 = (row g+8, cols 2t, 2t+1)
// MMA_U4: these words ARE the operands of mma.m16n8k64.u4 (8 codes per register, element i of
//   a register = nibble i = code 8t+i, the PTX register layout for 4-bit m16n8k64).
// IMMA_U8: each word (8 codes) is unpacked to two words of 4 byte-codes (lo = codes 0..3,
//   hi = codes 4..7) and fed to two mma.m16n8k32.u8: half h in {0,1} takes the words at bytes
//   [16h + 4t, ...) and uses {lo(row g), lo(row g+8), hi(row g), hi(row g+8)} for A and
//   {lo(col g), hi(col g)} for B. A and B go through the same permutation of k, and a
//   dot product does not depend on the order of k, so the result equals the 4-bit MMA's.
// Sm_90 (Hopper) has no INT4 tensor cores: u4 MMA is emulated there, hence IMMA_U8.
//
// K tail: 16-byte chunks entirely below byte K/2 use cp.async; chunks at or beyond
// ceil(K/2), and rows beyond M/N, are zero-filled; the chunk that straddles K is loaded
// synchronously with the codes k >= K masked to zero, so padding bytes never contribute.

#pragma once

#include <cstdint>
#include <cstring>

#include "common.cuh"

namespace qvgen {
namespace tc {

constexpr int BM = 128, BN = 128;
constexpr int KB = 32;    // bytes per row per stage (64 codes)
constexpr int SROW = 48;  // padded shared-memory row stride in bytes
constexpr int STAGES = 3;
constexpr int THREADS = 256;
constexpr int WARPS_N = 4;
constexpr int WM = 64, WN = 32;
constexpr int MI = WM / 16, NI = WN / 8;
static_assert(BM * 2 == THREADS && BN * 2 == THREADS, "loader maps one 16-byte chunk per thread");
static_assert((BM / WM) * (BN / WN) * 32 == THREADS, "warp layout");

#ifndef QVGEN_EMULATE
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#else
// Host emulation (plugins/kernels/emu/kernels_emu.cpp): cp.async is a plain copy.
inline void cp_async16(void* dst, const void* src) { std::memcpy(dst, src, 16); }
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}
#endif

__device__ __forceinline__ uint32_t lds32(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// One 16-byte chunk of a packed row into shared memory (see "K tail" above).
__device__ __forceinline__ void load_chunk(uint8_t* dst, const uint8_t* row, bool row_ok, int32_t off,
                                           int32_t full_bytes, int32_t kbytes, bool odd_k) {
  if (row_ok && off + 16 <= full_bytes) {
    cp_async16(dst, row + off);
    return;
  }
  uint32_t w[4] = {0u, 0u, 0u, 0u};
  if (row_ok && off < kbytes) {
    // off % 16 == 0, off < kbytes <= ld and ld % 16 == 0: the 16 bytes lie inside the row.
    const uint4 v = *reinterpret_cast<const uint4*>(row + off);
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      uint32_t mask = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int32_t j = off + 4 * q + i;
        const uint32_t bm = j < full_bytes ? 0xFFu : ((j == full_bytes && odd_k) ? 0x0Fu : 0u);
        mask |= bm << (8 * i);
      }
      w[q] &= mask;
    }
  }
  *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
}

#ifndef QVGEN_EMULATE
__device__ __forceinline__ void mma_u4(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k64.row.col.s32.u4.u4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void mma_u8(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.u8.u8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#else
using ::qvgen_emu::mma_u4;  // PTX semantics modelled on the host, see kernels_emu.cpp
using ::qvgen_emu::mma_u8;
#endif

// 8 packed codes c0..c7 (c_i in bits 4i..4i+3) -> lo = bytes [c0,c1,c2,c3], hi = [c4,c5,c6,c7].
__device__ __forceinline__ void unpack_u4(uint32_t w, uint32_t& lo, uint32_t& hi) {
  const uint32_t even = w & 0x0F0F0F0Fu;         // bytes [c0, c2, c4, c6]
  const uint32_t odd = (w >> 4) & 0x0F0F0F0Fu;   // bytes [c1, c3, c5, c7]
  lo = __byte_perm(even, odd, 0x5140);           // [even.b0, odd.b0, even.b1, odd.b1]
  hi = __byte_perm(even, odd, 0x7362);           // [even.b2, odd.b2, even.b3, odd.b3]
}

template <int PATH>
__device__ __forceinline__ void compute_stage(const uint8_t* sa, const uint8_t* sb, int wm, int wn, int lane,
                                              int32_t (&acc)[MI][NI][4]) {
  const int g = lane >> 2, t = lane & 3;
  uint32_t af[MI][4], bf[NI][2];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi) {
    const uint8_t* r0 = sa + (wm * WM + mi * 16 + g) * SROW;
    const uint8_t* r8 = r0 + 8 * SROW;
    af[mi][0] = lds32(r0 + 4 * t);
    af[mi][1] = lds32(r8 + 4 * t);
    af[mi][2] = lds32(r0 + 16 + 4 * t);
    af[mi][3] = lds32(r8 + 16 + 4 * t);
  }
#pragma unroll
  for (int ni = 0; ni < NI; ++ni) {
    const uint8_t* c0 = sb + (wn * WN + ni * 8 + g) * SROW;
    bf[ni][0] = lds32(c0 + 4 * t);
    bf[ni][1] = lds32(c0 + 16 + 4 * t);
  }
  if constexpr (PATH == QVGEN_PATH_MMA_U4) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) mma_u4(acc[mi][ni], af[mi], bf[ni]);
  } else {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t au[MI][4], bu[NI][2];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        unpack_u4(af[mi][2 * h], au[mi][0], au[mi][2]);      // row g:   lo -> a0, hi -> a2
        unpack_u4(af[mi][2 * h + 1], au[mi][1], au[mi][3]);  // row g+8: lo -> a1, hi -> a3
      }
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) unpack_u4(bf[ni][h], bu[ni][0], bu[ni][1]);
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) mma_u8(acc[mi][ni], au[mi], bu[ni]);
    }
  }
}

template <int PATH, int OUT>
__global__ void __launch_bounds__(THREADS) gemm_tc_kernel(const GemmParams p) {
  QVGEN_SHARED __align__(16) uint8_t sA[STAGES][BM * SROW];
  QVGEN_SHARED __align__(16) uint8_t sB[STAGES][BN * SROW];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WARPS_N, wn = warp % WARPS_N;
  // Raster: blockIdx.x walks N (fastest), blockIdx.y walks M, so the CTAs resident at one time
  // share the same A rows (read from DRAM once) and stream the weight, which stays in L2.
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM;
  const int32_t K = p.K;
  const int32_t full_bytes = K >> 1, kbytes = (K + 1) >> 1;
  const bool odd_k = (K & 1) != 0;
  const int32_t nkt = (kbytes + KB - 1) / KB;

  // Loader: thread -> (row, 16-byte chunk) of both the A and the B tile.
  const int lrow = tid >> 1, lchunk = tid & 1;
  const int64_t am = m0 + lrow, bn = n0 + lrow;
  const bool a_ok = am < p.M, b_ok = bn < p.N;
  const uint8_t* a_row = p.qx + (a_ok ? am : 0) * p.ldqx;
  const uint8_t* b_row = p.qw + (b_ok ? bn : 0) * p.ldqw;
  const int soff = lrow * SROW + lchunk * 16;

  int32_t acc[MI][NI][4];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nkt) {
      const int32_t off = s * KB + lchunk * 16;
      load_chunk(&sA[s][soff], a_row, a_ok, off, full_bytes, kbytes, odd_k);
      load_chunk(&sB[s][soff], b_row, b_ok, off, full_bytes, kbytes, odd_k);
    }
    cp_async_commit();  // always commit, so the group count below stays exact
  }

  for (int32_t kt = 0; kt < nkt; ++kt) {
    cp_async_wait<STAGES - 2>();  // the group of tile kt has landed
    __syncthreads();              // ... for every thread; and everyone is done with tile kt-1
    const int32_t nk = kt + STAGES - 1;
    if (nk < nkt) {
      const int st = nk % STAGES;  // the stage tile kt-1 used
      const int32_t off = nk * KB + lchunk * 16;
      load_chunk(&sA[st][soff], a_row, a_ok, off, full_bytes, kbytes, odd_k);
      load_chunk(&sB[st][soff], b_row, b_ok, off, full_bytes, kbytes, odd_k);
    }
    cp_async_commit();
    compute_stage<PATH>(sA[kt % STAGES], sB[kt % STAGES], wm, wn, lane, acc);
  }
  cp_async_wait<0>();

  // Epilogue straight from registers (c0,c1: row g; c2,c3: row g+8; cols 2t, 2t+1). The 8 columns
  // of this thread (ni, j) are the same for every row: their parameters are loaded once. Each
  // (row, 2t..2t+1) pair is written with one 2-element store when p.vec_store (ldy even and y
  // aligned to 2 elements, checked by the launcher) and both columns exist.
  const int g = lane >> 2, t = lane & 3;
  float cws[NI][2], cwz[NI][2], cb[NI][2];
  int32_t cwsum[NI][2];
#pragma unroll
  for (int ni = 0; ni < NI; ++ni) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int64_t c = n0 + wn * WN + ni * 8 + 2 * t + j;
      cws[ni][j] = 0.0f, cwz[ni][j] = 0.0f, cb[ni][j] = 0.0f, cwsum[ni][j] = 0;
      if constexpr (OUT != QVGEN_DTYPE_I32) {
        if (c < p.N) {
          cws[ni][j] = p.w_scale[c];
          cwz[ni][j] = p.w_zero[c];
          cwsum[ni][j] = p.w_sum[c];
          if (p.bias) cb[ni][j] = p.bias[c];
        }
      }
    }
  }
#pragma unroll
  for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = m0 + wm * WM + mi * 16 + g + 8 * h;
      if (r >= p.M) continue;
      float sx = 0.0f;
      int32_t zx = 0, sumx = 0;
      if constexpr (OUT != QVGEN_DTYPE_I32) {
        sx = p.x_scale[r];
        zx = p.x_zero[r];
        sumx = p.x_sum[r];
      }
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) {
        const int64_t c0 = n0 + wn * WN + ni * 8 + 2 * t;
        float v[2] = {0.0f, 0.0f};
        int32_t a[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          a[j] = acc[mi][ni][2 * h + j];
          if constexpr (OUT != QVGEN_DTYPE_I32) {
            v[j] = epilogue_cols(a[j], sx, zx, sumx, cws[ni][j], cwz[ni][j], cwsum[ni][j], cb[ni][j],
                                 p.bias != nullptr, K);
          }
        }
        const int64_t idx = r * p.ldy + c0;
        if (p.vec_store && c0 + 1 < p.N) {
          store_out2<OUT>(p.y, idx, v, a);
        } else {
#pragma unroll
          for (int j = 0; j < 2; ++j)
            if (c0 + j < p.N) store_out<OUT>(p.y, idx + j, v[j], a[j]);
        }
      }
    }
  }
}

}  // namespace tc
}  // namespace qvgen
