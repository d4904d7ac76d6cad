// Host emulator of the tensor-core W4A4 GEMM kernel (src/gemm_tc.cuh), for machines without a GPU.
//
// It compiles the kernel's own source with a host compiler (QVGEN_EMULATE) and runs every CTA
// with one host thread per CUDA thread: __syncthreads is a std::barrier over the 256 threads,
// shared memory is a static array, cp.async a plain copy, and mma.sync is modelled from the PTX
// ISA's fragment layouts for m16n8k32 (.u8) and m16n8k64 (.u4), written below independently of
// the kernel. Outputs of both paths (I32, F32, BF16) are compared with a plain loop.
//
// What this checks: the kernel's index arithmetic (loader chunks, K-tail masking, shared-memory
// rows, fragment addresses, nibble unpacking, accumulator-to-output mapping, bounds) and its
// barrier placement. What it cannot check: that the hardware's fragment layout is the one
// modelled here (the on-device self-test, qvgen_cuda_selftest, does that), and asynchronous
// cp.async timing.
//
// Usage: qvgen_gemm_emu   -> prints one line per case, exit status 0 when every output matches.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace qvgen_emu {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

thread_local uint3 t_threadIdx;
thread_local uint3 t_blockIdx;
std::barrier<>* g_cta = nullptr;
std::barrier<>* g_warp[kWarps] = {};

struct Slot {
  uint32_t a[4];
  uint32_t b[2];
};
Slot g_slots[kWarps][32];

inline void syncthreads() { g_cta->arrive_and_wait(); }

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
  const int tid = static_cast<int>(t_threadIdx.x), warp = tid / 32, lane = tid % 32;
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

}  // namespace qvgen_emu

// Device intrinsics the kernel uses, with their documented host semantics.
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __int2float_rn(int i) { return static_cast<float>(i); }
inline uint32_t __byte_perm(uint32_t x, uint32_t y, uint32_t s) {
  const uint64_t v = (static_cast<uint64_t>(y) << 32) | x;
  uint32_t r = 0;
  for (int n = 0; n < 4; ++n) r |= static_cast<uint32_t>((v >> (8 * ((s >> (4 * n)) & 7u))) & 0xFFu) << (8 * n);
  return r;
}

#define threadIdx (::qvgen_emu::t_threadIdx)
#define blockIdx (::qvgen_emu::t_blockIdx)
#define __syncthreads() ::qvgen_emu::syncthreads()
#define __launch_bounds__(...)
#define QVGEN_EMULATE 1

#include "../src/gemm_tc.cuh"

namespace {

using qvgen::GemmParams;

template <int PATH, int OUT>
void run_grid(const GemmParams& p) {
  const unsigned gx = static_cast<unsigned>((p.M + qvgen::tc::BM - 1) / qvgen::tc::BM);
  const unsigned gy = static_cast<unsigned>((p.N + qvgen::tc::BN - 1) / qvgen::tc::BN);
  for (unsigned by = 0; by < gy; ++by) {
    for (unsigned bx = 0; bx < gx; ++bx) {
      std::barrier<> cta(qvgen_emu::kThreads);
      std::vector<std::unique_ptr<std::barrier<>>> warps;
      for (int w = 0; w < qvgen_emu::kWarps; ++w) {
        warps.push_back(std::make_unique<std::barrier<>>(32));
        qvgen_emu::g_warp[w] = warps.back().get();
      }
      qvgen_emu::g_cta = &cta;
      std::vector<std::thread> threads;
      threads.reserve(qvgen_emu::kThreads);
      for (unsigned tid = 0; tid < static_cast<unsigned>(qvgen_emu::kThreads); ++tid) {
        threads.emplace_back([&p, tid, bx, by] {
          qvgen_emu::t_threadIdx = make_uint3(tid, 0, 0);
          qvgen_emu::t_blockIdx = make_uint3(bx, by, 0);
          qvgen::tc::gemm_tc_kernel<PATH, OUT>(p);
        });
      }
      for (auto& th : threads) th.join();
    }
  }
}

struct Lcg {
  uint32_t s;
  uint32_t next() { return s = s * 1664525u + 1013904223u; }
  float uniform() { return static_cast<float>(next() >> 8) * (1.0f / 16777216.0f); }
};

int code_at(const uint8_t* row, int64_t k) { return (row[k >> 1] >> ((k & 1) * 4)) & 0xF; }

// Runs both tensor-core paths on one shape; returns the number of mismatching outputs.
int64_t check_shape(int64_t M, int64_t N, int64_t K, Lcg& rng) {
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
  // Plain reference: codes at k >= K are ignored.
  std::vector<int32_t> acc(static_cast<size_t>(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      int32_t s = 0;
      for (int64_t k = 0; k < K; ++k) s += code_at(&qx[m * ld], k) * code_at(&qw[n * ld], k);
      acc[m * N + n] = s;
    }
  int64_t bad = 0;
  std::vector<int32_t> y_i32(static_cast<size_t>(M * N));
  std::vector<float> y_f32(static_cast<size_t>(M * N));
  std::vector<__nv_bfloat16> y_bf16(static_cast<size_t>(M * N));
  for (int path : {QVGEN_PATH_MMA_U4, QVGEN_PATH_IMMA_U8}) {
    GemmParams p{qx.data(), xs.data(), xz.data(), xsum.data(), qw.data(), ws.data(), wz.data(), wsum.data(),
                 bias.data(), nullptr, ld, ld, N, M, N, static_cast<int32_t>(K)};
    std::fill(y_i32.begin(), y_i32.end(), -1);
    std::fill(y_f32.begin(), y_f32.end(), -1.0f);
    p.y = y_i32.data();
    if (path == QVGEN_PATH_MMA_U4) {
      run_grid<QVGEN_PATH_MMA_U4, QVGEN_DTYPE_I32>(p);
      p.y = y_f32.data();
      run_grid<QVGEN_PATH_MMA_U4, QVGEN_DTYPE_F32>(p);
      p.y = y_bf16.data();
      run_grid<QVGEN_PATH_MMA_U4, QVGEN_DTYPE_BF16>(p);
    } else {
      run_grid<QVGEN_PATH_IMMA_U8, QVGEN_DTYPE_I32>(p);
      p.y = y_f32.data();
      run_grid<QVGEN_PATH_IMMA_U8, QVGEN_DTYPE_F32>(p);
      p.y = y_bf16.data();
      run_grid<QVGEN_PATH_IMMA_U8, QVGEN_DTYPE_BF16>(p);
    }
    int64_t path_bad = 0;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        const int64_t i = m * N + n;
        const int32_t a = acc[i];
        const float v = qvgen::epilogue(a, xs[m], xz[m], xsum[m], ws[n], wz[n], wsum[n], bias.data(), n,
                                        static_cast<int32_t>(K));
        const __nv_bfloat16 vb = __float2bfloat16_rn(v);
        if (y_i32[i] != a) ++path_bad;
        if (std::memcmp(&y_f32[i], &v, 4) != 0) ++path_bad;
        if (std::memcmp(&y_bf16[i], &vb, 2) != 0) ++path_bad;
      }
    std::printf("M=%lld N=%lld K=%lld path=%s: %lld mismatches\n", static_cast<long long>(M),
                static_cast<long long>(N), static_cast<long long>(K),
                path == QVGEN_PATH_MMA_U4 ? "mma_u4" : "imma_u8", static_cast<long long>(path_bad));
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
  const Shape shapes[] = {{1, 1, 1}, {3, 5, 7}, {37, 45, 67}, {130, 129, 129}, {129, 257, 320}, {17, 9, 513}, {33, 20, 100}};
  Lcg rng{2024u};
  int64_t bad = 0;
  for (const Shape& s : shapes) bad += check_shape(s.M, s.N, s.K, rng);
  std::printf("%s: %lld mismatching outputs\n", bad ? "FAIL" : "PASS", static_cast<long long>(bad));
  return bad ? 1 : 0;
}
