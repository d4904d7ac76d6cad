// Host emulator of the CUDA kernels (src/act_quant_kernel.cuh, src/gemm_tc.cuh), for machines
// without a GPU.
//
// It compiles the kernels' own source with a host compiler (QVGEN_EMULATE) and runs every CTA
// with one host thread per CUDA thread: __syncthreads is a std::barrier over the CTA, warp
// shuffles and mma.sync exchange registers through per-warp slots between warp barriers, shared
// memory is a static array, cp.async a plain copy. mma.sync is modelled from the PTX ISA's
// fragment layouts for m16n8k32 (.u8) and m16n8k64 (.u4), written below independently of the
// kernel. The activation quantizer is compared byte for byte with the CPU reference library,
// the GEMM's two tensor-core paths (I32, F32, BF16 outputs) with a plain loop.
//
// What this checks: the kernels' index arithmetic (vector loads, packed-word writes, loader
// chunks, K-tail masking, shared-memory rows, fragment addresses, nibble unpacking,
// accumulator-to-output mapping, bounds), reductions and barrier placement. What it cannot
// check: that the hardware's fragment layout is the one modelled here (the on-device self-test,
// qvgen_cuda_selftest, does that), and asynchronous cp.async timing.
//
// Usage: qvgen_kernels_emu   -> one line per case, exit status 0 when every output matches.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cstdint>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

namespace qvgen_emu {

constexpr int kMaxWarps = 8;

thread_local uint3 t_threadIdx;
thread_local uint3 t_blockIdx;
thread_local dim3 t_blockDim;
thread_local dim3 t_gridDim;
thread_local int t_linear;  // linear thread index in the CTA: warp = t_linear / 32
std::barrier<>* g_cta = nullptr;
std::barrier<>* g_warp[kMaxWarps] = {};

struct Slot {
  uint32_t a[4];
  uint32_t b[2];
};
Slot g_slots[kMaxWarps][32];
uint32_t g_shfl[kMaxWarps][32];

inline void syncthreads() { g_cta->arrive_and_wait(); }

// __shfl_xor_sync over the full warp (the only form the kernels use).
template <typename V>
V shfl_xor(unsigned mask, V v, int lane_mask) {
  static_assert(sizeof(V) == 4, "32-bit shuffles only");
  (void)mask;
  const int warp = t_linear / 32, lane = t_linear % 32;
  std::memcpy(&g_shfl[warp][lane], &v, 4);
  g_warp[warp]->arrive_and_wait();
  V out;
  std::memcpy(&out, &g_shfl[warp][lane ^ lane_mask], 4);
  g_warp[warp]->arrive_and_wait();
  return out;
}

// The CUDA built-ins of thread ``tid`` of CTA (bx, by), for the calling host thread.
inline void enter_thread(unsigned tid, unsigned bx, unsigned by, dim3 grid, dim3 block) {
  t_threadIdx = make_uint3(tid % block.x, tid / block.x, 0);
  t_blockIdx = make_uint3(bx, by, 0);
  t_blockDim = block;
  t_gridDim = grid;
  t_linear = static_cast<int>(tid);
}

// Runs fn() as every thread of every CTA of a 2-D grid of 2-D blocks, one CTA at a time.
template <typename Fn>
void run_grid(dim3 grid, dim3 block, Fn fn) {
  const int threads = static_cast<int>(block.x * block.y);
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::barrier<> cta(threads);
      std::vector<std::unique_ptr<std::barrier<>>> warps;
      for (int w = 0; w < threads / 32; ++w) {
        warps.push_back(std::make_unique<std::barrier<>>(32));
        g_warp[w] = warps.back().get();
      }
      g_cta = &cta;
      std::vector<std::thread> pool;
      pool.reserve(static_cast<size_t>(threads));
      for (unsigned tid = 0; tid < static_cast<unsigned>(threads); ++tid) {
        pool.emplace_back([&fn, tid, bx, by, grid, block] {
          enter_thread(tid, bx, by, grid, block);
          fn();
        });
      }
      for (auto& th : pool) th.join();
    }
  }
}

// mma.sync.aligned.m16n8k{32,64}.row.col.s32.{u8,u4}.{u8,u4}.s32 for the calling lane.
// PTX fragment layouts (g = lane / 4, t = lane % 4, E = elements per 32-bit register = 32 / BITS,
// Kd = K of the shape = 8 * E):
//   A reg i, element j:  row = g + 8 * (i % 2),  col = t * E + j + (i / 2) * Kd / 2
//   B reg i, element j:  k   = t * E + j + i * Kd / 2,  n = g
//   C/D reg i:           row = g + 8 * (i / 2),  col = 2 * t + i % 2
// Element j of a register occupies bits [BITS * j, BITS * (j + 1)).
template <int BITS>
void mma(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  constexpr int E = 32 / BITS, Kd = 8 * E;
  constexpr uint32_t mask = (1u << BITS) - 1u;
  const int warp = t_linear / 32, lane = t_linear % 32;
  std::memcpy(g_slots[warp][lane].a, a, sizeof(uint32_t) * 4);
  std::memcpy(g_slots[warp][lane].b, b, sizeof(uint32_t) * 2);
  g_warp[warp]->arrive_and_wait();
  int A[16][Kd], B[Kd][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    const Slot& s = g_slots[warp][l];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < E; ++j) A[g + 8 * (i % 2)][t * E + j + (i / 2) * Kd / 2] = (s.a[i] >> (BITS * j)) & mask;
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < E; ++j) B[t * E + j + i * Kd / 2][g] = (s.b[i] >> (BITS * j)) & mask;
  }
  g_warp[warp]->arrive_and_wait();  // every lane has read the slots before they are reused
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    int32_t sum = 0;
    for (int k = 0; k < Kd; ++k) sum += A[row][k] * B[k][col];
    c[i] += sum;
  }
}

inline void mma_u4(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { mma<4>(c, a, b); }
inline void mma_u8(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { mma<8>(c, a, b); }

// For kernels without barriers or warp operations (the SIMT GEMM): threads run one after the
// other on the calling thread, which is much faster than a host thread per CUDA thread.
template <typename Fn>
void run_grid_sequential(dim3 grid, dim3 block, Fn fn) {
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx)
      for (unsigned tid = 0; tid < block.x * block.y; ++tid) {
        enter_thread(tid, bx, by, grid, block);
        fn();
      }
}

}  // namespace qvgen_emu

// Device intrinsics the kernel uses, with their documented host semantics.
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __int2float_rn(int i) { return static_cast<float>(i); }
inline uint32_t __byte_perm(uint32_t x, uint32_t y, uint32_t s) {
  const uint64_t v = (static_cast<uint64_t>(y) << 32) | x;
  uint32_t r = 0;
  for (int n = 0; n < 4; ++n) r |= static_cast<uint32_t>((v >> (8 * ((s >> (4 * n)) & 7u))) & 0xFFu) << (8 * n);
  return r;
}

#define threadIdx (::qvgen_emu::t_threadIdx)
#define blockIdx (::qvgen_emu::t_blockIdx)
#define blockDim (::qvgen_emu::t_blockDim)
#define gridDim (::qvgen_emu::t_gridDim)
#define __syncthreads() ::qvgen_emu::syncthreads()
#define __shfl_xor_sync(mask, v, o) ::qvgen_emu::shfl_xor((mask), (v), (o))
#define __launch_bounds__(...)
#define QVGEN_EMULATE 1

#include "../src/act_quant_kernel.cuh"
#include "../src/gemm_tc.cuh"
#include "../src/simt_kernels.cuh"
#include "qvgen/w4a4_ref.h"

namespace {

using qvgen::GemmParams;

template <int PATH, int OUT>
void run_gemm(const GemmParams& p) {
  if constexpr (PATH == QVGEN_PATH_SIMT) {  // same launch shape as gemm.cu
    const dim3 block(32, 8);
    const dim3 grid(static_cast<unsigned>((p.N + 31) / 32), static_cast<unsigned>(std::min<int64_t>((p.M + 7) / 8, 65535)));
    qvgen_emu::run_grid_sequential(grid, block, [&p] { qvgen::simt::gemm_simt_kernel<OUT>(p); });
  } else {
    const dim3 grid(static_cast<unsigned>((p.N + qvgen::tc::BN - 1) / qvgen::tc::BN),  // N fastest, as gemm.cu
                    static_cast<unsigned>((p.M + qvgen::tc::BM - 1) / qvgen::tc::BM));
    qvgen_emu::run_grid(grid, dim3(qvgen::tc::THREADS, 1), [&p] { qvgen::tc::gemm_tc_kernel<PATH, OUT>(p); });
  }
}

// vec_store as gemm.cu's launch_gemm sets it.
void set_vec(GemmParams& p, int elem) {
  p.vec_store = p.ldy % 2 == 0 && reinterpret_cast<uintptr_t>(p.y) % (2 * elem) == 0;
}

template <int PATH>
void run_all_outputs(GemmParams p, std::vector<int32_t>& y_i32, std::vector<float>& y_f32,
                     std::vector<__nv_bfloat16>& y_bf16) {
  p.y = y_i32.data();
  set_vec(p, 4);
  run_gemm<PATH, QVGEN_DTYPE_I32>(p);
  p.y = y_f32.data();
  set_vec(p, 4);
  run_gemm<PATH, QVGEN_DTYPE_F32>(p);
  p.y = y_bf16.data();
  set_vec(p, 2);
  run_gemm<PATH, QVGEN_DTYPE_BF16>(p);
}

struct Lcg {
  uint32_t s;
  uint32_t next() { return s = s * 1664525u + 1013904223u; }
  float uniform() { return static_cast<float>(next() >> 8) * (1.0f / 16777216.0f); }
};

int code_at(const uint8_t* row, int64_t k) { return (row[k >> 1] >> ((k & 1) * 4)) & 0xF; }

// Activation quantization: emulated kernel vs the CPU reference library, byte for byte.
template <typename T, bool BYTES = false>
// mode 0: random values; 1: constant rows; 2: near-ties of x / scale (values within 4 ulps of
// (n + 0.5) * scale, where x * (1/scale) and x / scale can round differently).
int64_t check_act_quant(int dtype, int64_t M, int64_t K, int64_t ldx, int bits, int64_t T_, int mode, Lcg& rng) {
  const bool constant = mode == 1;
  const int64_t B = (M + T_ - 1) / T_;
  std::vector<T> x(static_cast<size_t>(M * ldx));
  for (int64_t m = 0; m < M; ++m) {
    const float base = (rng.uniform() - 0.5f) * 4.0f;
    for (int64_t k = 0; k < ldx; ++k) {
      float v = constant ? base : (rng.uniform() - 0.5f) * 8.0f;
      if (mode == 2) {
        // Row max hi, min 0, clip 1 -> scale s = fl(hi / qmax); values within +-4 ulps of
        // (n + 0.5) * s, where fl(x * fl(1/s)) and fl(x / s) often round to different integers.
        const float hi = 1.0f + static_cast<float>(m + 1) * 0.0371f;
        const float sc = hi / static_cast<float>((1 << bits) - 1);
        v = k == 0 ? hi : k == 1 ? 0.0f : static_cast<float>(k % ((1 << bits) - 1)) * sc + 0.5f * sc;
        for (int64_t d = (k / 15) % 9 - 4; d != 0 && k > 1; d += d > 0 ? -1 : 1)
          v = std::nextafter(v, d > 0 ? 100.0f : -100.0f);
        if (v > hi) v = hi;
      }
      if constexpr (sizeof(T) == 4) {
        x[static_cast<size_t>(m * ldx + k)] = v;
      } else if constexpr (std::is_same_v<T, __half>) {
        x[static_cast<size_t>(m * ldx + k)] = __float2half_rn(v);
      } else {
        x[static_cast<size_t>(m * ldx + k)] = __float2bfloat16_rn(v);
      }
    }
  }
  std::vector<float> clo(B), chi(B);
  for (int64_t b = 0; b < B; ++b) {
    clo[b] = b == 1 ? 0.0f : 0.5f + 0.5f * rng.uniform();  // sample 1 (if any): clip 0, scale floor
    chi[b] = b == 1 ? 0.0f : 0.5f + 0.5f * rng.uniform();
    if (mode == 2) clo[b] = chi[b] = 1.0f;
  }
  const int64_t ldq = ((K + 1) / 2 + 15) / 16 * 16;
  const int64_t ld8 = (K + 15) / 16 * 16;  // byte containers (BYTES)
  std::vector<uint8_t> q0(static_cast<size_t>(M * ldq), 0xAB), q1(static_cast<size_t>(M * (BYTES ? ld8 : ldq)), 0xCD);
  std::vector<float> s0(M), s1(M);
  std::vector<int32_t> z0(M), z1(M), c0(M), c1(M);
  if (qvgen_ref_act_quant(x.data(), dtype, M, K, ldx, clo.data(), chi.data(), T_, bits, q0.data(), ldq, s0.data(),
                          z0.data(), c0.data()) != QVGEN_OK) {
    std::printf("reference failed: %s\n", qvgen_ref_last_error());
    return 1;
  }
  const bool vec = qvgen::aligned16(x.data()) && (ldx * static_cast<int64_t>(sizeof(T))) % 16 == 0 && K % 8 == 0;
  const int qmax = (1 << bits) - 1;
  const unsigned blocks = static_cast<unsigned>((M + qvgen::aq::AQ_TOKENS - 1) / qvgen::aq::AQ_TOKENS);
  qvgen_emu::run_grid(dim3(blocks, 1), dim3(qvgen::aq::AQ_THREADS, 1), [&] {
    qvgen::aq::act_quant_kernel<T, BYTES>(x.data(), M, ldx, static_cast<int32_t>(K), clo.data(), chi.data(), T_, qmax,
                                          q1.data(), BYTES ? ld8 : ldq, s1.data(), z1.data(), c1.data(), vec);
  });
  int64_t bad = 0;
  if constexpr (BYTES) {  // byte k of row m == code k of the reference's packed row, 0 beyond K
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < ld8; ++k)
        bad += q1[static_cast<size_t>(m * ld8 + k)] != (k < K ? code_at(&q0[static_cast<size_t>(m * ldq)], k) : 0);
  } else {
    for (size_t i = 0; i < q0.size(); ++i) bad += q0[i] != q1[i];
  }
  for (int64_t m = 0; m < M; ++m) {
    bad += std::memcmp(&s0[m], &s1[m], 4) != 0;
    bad += z0[m] != z1[m];
    bad += c0[m] != c1[m];
  }
  std::printf("act_quant%s dtype=%d M=%lld K=%lld ldx=%lld bits=%d vec=%d%s: %lld mismatches\n", BYTES ? "_u8" : "", dtype,
              static_cast<long long>(M), static_cast<long long>(K), static_cast<long long>(ldx), bits, vec ? 1 : 0,
              mode == 1 ? " constant rows" : mode == 2 ? " ties" : "", static_cast<long long>(bad));
  return bad;
}

// Per-row code sums (warp shuffles) against a plain loop.
int64_t check_code_sums(int64_t N, int64_t K, Lcg& rng) {
  const int64_t ld = (K + 1) / 2 + 5;  // any stride; garbage beyond K must not count
  std::vector<uint8_t> q(static_cast<size_t>(N * ld));
  for (auto& b : q) b = static_cast<uint8_t>(rng.next() >> 24);
  std::vector<int32_t> got(N, -1);
  constexpr int threads = 256, rows_per_cta = threads / 32;  // as in act_quant.cu
  qvgen_emu::run_grid(dim3(static_cast<unsigned>((N + rows_per_cta - 1) / rows_per_cta), 1), dim3(threads, 1),
                      [&] { qvgen::simt::code_sums_kernel(q.data(), ld, N, static_cast<int32_t>(K), got.data()); });
  int64_t bad = 0;
  for (int64_t n = 0; n < N; ++n) {
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += code_at(&q[n * ld], k);
    bad += s != got[n];
  }
  std::printf("code_sums N=%lld K=%lld: %lld mismatches\n", static_cast<long long>(N), static_cast<long long>(K),
              static_cast<long long>(bad));
  return bad;
}

// Packed -> byte codes (the wgmma path's weight preparation) against code_at, zeros beyond K.
int64_t check_unpack_u8(int64_t rows, int64_t K, Lcg& rng) {
  const int64_t ldq = (K + 1) / 2 + 3;  // any stride; garbage beyond K must not leak
  const int64_t ld8 = (K + 15) / 16 * 16 + 16;
  std::vector<uint8_t> q(static_cast<size_t>(rows * ldq));
  for (auto& b : q) b = static_cast<uint8_t>(rng.next() >> 24);
  std::vector<uint8_t> out(static_cast<size_t>(rows * ld8), 0xEE);
  const dim3 grid(static_cast<unsigned>((ld8 / 8 + 255) / 256), static_cast<unsigned>(std::min<int64_t>(rows, 3)));
  qvgen_emu::run_grid_sequential(grid, dim3(256, 1), [&] {
    qvgen::simt::unpack_u8_kernel(q.data(), ldq, static_cast<int32_t>(K), out.data(), ld8, rows);
  });
  int64_t bad = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < ld8; ++k)
      bad += out[static_cast<size_t>(r * ld8 + k)] != (k < K ? code_at(&q[static_cast<size_t>(r * ldq)], k) : 0);
  std::printf("unpack_u8 rows=%lld K=%lld: %lld mismatches\n", static_cast<long long>(rows), static_cast<long long>(K),
              static_cast<long long>(bad));
  return bad;
}

// Runs the GEMM paths on one shape; returns the number of mismatching outputs.
int64_t check_shape(int64_t M, int64_t N, int64_t K, bool with_bias, Lcg& rng) {
  const int64_t kbytes = (K + 1) / 2;
  const int64_t ld = (kbytes + 15) / 16 * 16 + 16;  // extra padding, filled with garbage on purpose
  std::vector<uint8_t> qx(static_cast<size_t>(M * ld)), qw(static_cast<size_t>(N * ld));
  for (auto& b : qx) b = static_cast<uint8_t>(rng.next() >> 24);
  for (auto& b : qw) b = static_cast<uint8_t>(rng.next() >> 24);
  std::vector<float> xs(M), ws(N), wz(N), bias(N);
  std::vector<int32_t> xz(M), xsum(M), wsum(N);
  for (int64_t m = 0; m < M; ++m) {
    xs[m] = 1e-3f + rng.uniform();
    xz[m] = static_cast<int32_t>(rng.next() >> 28);
    xsum[m] = static_cast<int32_t>(rng.next() % 1000u);
  }
  for (int64_t n = 0; n < N; ++n) {
    ws[n] = 1e-3f + rng.uniform();
    wz[n] = 15.0f * rng.uniform();
    bias[n] = rng.uniform() - 0.5f;
    wsum[n] = static_cast<int32_t>(rng.next() % 1000u);
  }
  // Expected outputs: the CPU reference library (plugins/reference), not the kernel's epilogue.
  const float* bp = with_bias ? bias.data() : nullptr;
  std::vector<int32_t> acc(static_cast<size_t>(M * N));
  std::vector<float> ref_f32(static_cast<size_t>(M * N));
  std::vector<uint16_t> ref_bf16(static_cast<size_t>(M * N));
  int st = qvgen_ref_gemm(qx.data(), ld, xs.data(), xz.data(), xsum.data(), qw.data(), ld, ws.data(), wz.data(),
                          wsum.data(), bp, M, N, K, acc.data(), QVGEN_DTYPE_I32, N);
  st |= qvgen_ref_gemm(qx.data(), ld, xs.data(), xz.data(), xsum.data(), qw.data(), ld, ws.data(), wz.data(),
                       wsum.data(), bp, M, N, K, ref_f32.data(), QVGEN_DTYPE_F32, N);
  st |= qvgen_ref_gemm(qx.data(), ld, xs.data(), xz.data(), xsum.data(), qw.data(), ld, ws.data(), wz.data(),
                       wsum.data(), bp, M, N, K, ref_bf16.data(), QVGEN_DTYPE_BF16, N);
  if (st != QVGEN_OK) {
    std::printf("reference gemm failed: %s\n", qvgen_ref_last_error());
    return 1;
  }
  int64_t bad = 0;
  std::vector<int32_t> y_i32(static_cast<size_t>(M * N));
  std::vector<float> y_f32(static_cast<size_t>(M * N));
  std::vector<__nv_bfloat16> y_bf16(static_cast<size_t>(M * N));
  for (int path : {QVGEN_PATH_MMA_U4, QVGEN_PATH_IMMA_U8, QVGEN_PATH_SIMT}) {
    GemmParams p{qx.data(), xs.data(), xz.data(), xsum.data(), qw.data(), ws.data(), wz.data(), wsum.data(),
                 bp, nullptr, ld, ld, N, M, N, static_cast<int32_t>(K)};
    std::fill(y_i32.begin(), y_i32.end(), -1);
    std::fill(y_f32.begin(), y_f32.end(), -1.0f);
    p.y = y_i32.data();
    switch (path) {
      case QVGEN_PATH_MMA_U4:
        run_all_outputs<QVGEN_PATH_MMA_U4>(p, y_i32, y_f32, y_bf16);
        break;
      case QVGEN_PATH_IMMA_U8:
        run_all_outputs<QVGEN_PATH_IMMA_U8>(p, y_i32, y_f32, y_bf16);
        break;
      default:
        run_all_outputs<QVGEN_PATH_SIMT>(p, y_i32, y_f32, y_bf16);
        break;
    }
    int64_t path_bad = 0;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        const int64_t i = m * N + n;
        if (y_i32[i] != acc[i]) ++path_bad;
        if (std::memcmp(&y_f32[i], &ref_f32[i], 4) != 0) ++path_bad;
        if (std::memcmp(&y_bf16[i], &ref_bf16[i], 2) != 0) ++path_bad;
      }
    std::printf("M=%lld N=%lld K=%lld%s path=%s: %lld mismatches\n", static_cast<long long>(M),
                static_cast<long long>(N), static_cast<long long>(K), with_bias ? "" : " no-bias",
                path == QVGEN_PATH_MMA_U4 ? "mma_u4" : path == QVGEN_PATH_IMMA_U8 ? "imma_u8" : "simt",
                static_cast<long long>(path_bad));
    bad += path_bad;
  }
  return bad;
}

}  // namespace

int main() {
  struct Shape {
    int64_t M, N, K;
  };
  // Odd M, partial CTA tiles in M and N, K = 1, odd K, K not a multiple of 64, several K tiles
  // (pipeline wrap-around), two CTAs in each direction.
  const Shape shapes[] = {{1, 1, 1}, {3, 5, 7}, {37, 45, 67}, {130, 129, 129}, {129, 136, 320}, {17, 9, 513}, {33, 20, 100}};
  Lcg rng{2024u};
  int64_t bad = 0;
  // Activation quantizer: vector and scalar load paths, odd K, K = 1, constant rows, 2..4 bits,
  // several samples per batch (sample 1 with clip 0).
  bad += check_act_quant<float>(QVGEN_DTYPE_F32, 6, 1536, 1536, 4, 2, 0, rng);
  bad += check_act_quant<float>(QVGEN_DTYPE_F32, 5, 67, 70, 4, 5, 0, rng);
  bad += check_act_quant<float>(QVGEN_DTYPE_F32, 3, 1, 1, 3, 1, 0, rng);
  bad += check_act_quant<float>(QVGEN_DTYPE_F32, 4, 40, 40, 4, 2, 1, rng);
  bad += check_act_quant<__half>(QVGEN_DTYPE_F16, 4, 1001, 1003, 4, 1, 0, rng);
  bad += check_act_quant<__half>(QVGEN_DTYPE_F16, 4, 264, 264, 2, 2, 0, rng);
  bad += check_act_quant<__nv_bfloat16>(QVGEN_DTYPE_BF16, 4, 520, 520, 4, 2, 0, rng);
  bad += check_act_quant<__nv_bfloat16>(QVGEN_DTYPE_BF16, 3, 77, 77, 3, 1, 1, rng);
  // Several tokens per CTA: M not a multiple of 8, rows beyond the register cache (K > 2048).
  bad += check_act_quant<float>(QVGEN_DTYPE_F32, 11, 2600, 2600, 4, 11, 0, rng);
  bad += check_act_quant<__nv_bfloat16>(QVGEN_DTYPE_BF16, 9, 4104, 4104, 4, 3, 0, rng);
  // Exact .5 ties of x / scale and their one-ulp neighbours (the division-free rounding's edge).
  bad += check_act_quant<float>(QVGEN_DTYPE_F32, 16, 992, 992, 4, 1, 2, rng);
  bad += check_act_quant<float, true>(QVGEN_DTYPE_F32, 9, 135, 135, 4, 3, 2, rng);
  bad += check_act_quant<float>(QVGEN_DTYPE_F32, 8, 93, 93, 3, 2, 2, rng);
  // INT8 containers (Hopper wgmma path): same codes, one per byte.
  bad += check_act_quant<__nv_bfloat16, true>(QVGEN_DTYPE_BF16, 10, 1536, 1536, 4, 5, 0, rng);
  bad += check_act_quant<float, true>(QVGEN_DTYPE_F32, 3, 67, 70, 3, 1, 0, rng);
  bad += check_code_sums(37, 1001, rng);
  bad += check_code_sums(9, 64, rng);
  bad += check_unpack_u8(5, 67, rng);
  bad += check_unpack_u8(4, 1, rng);
  bad += check_unpack_u8(3, 320, rng);
  int i = 0;
  for (const Shape& s : shapes) bad += check_shape(s.M, s.N, s.K, (i++ % 2) == 0, rng);
  std::printf("%s: %lld mismatching outputs\n", bad ? "FAIL" : "PASS", static_cast<long long>(bad));
  return bad ? 1 : 0;
}
