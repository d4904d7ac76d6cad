// Library-level entry points: ABI version, last error, and the on-device self-test.

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common.cuh"

namespace qvgen {

namespace {
thread_local std::string g_last_error;

// Owns one device allocation, so that an early error return does not leak it.
struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) { QVGEN_CUDA_CHECK(cudaMalloc(&ptr, bytes ? bytes : 1)); }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
};

// Deterministic 32-bit LCG: the self-test must not depend on a host RNG implementation.
struct Lcg {
  uint32_t s;
  uint32_t next() {
    s = s * 1664525u + 1013904223u;
    return s;
  }
  float uniform() { return static_cast<float>(next() >> 8) * (1.0f / 16777216.0f); }
};

// Round to nearest even float -> bfloat16 bits (finite inputs; the self-test has no NaN).
uint16_t host_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  x += 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

int host_code(const uint8_t* row, int64_t k) { return (row[k >> 1] >> ((k & 1) * 4)) & 0xF; }

// Expected outputs on the host, the CPU reference's operations (plugins/reference, one IEEE
// operation at a time, std::fmaf; this file is compiled with -ffp-contract=off), written
// independently of the device epilogue. out: I32 -> acc bits, F32 -> float bits, BF16 -> bf16 bits.
void host_expected(const std::vector<uint8_t>& hx, const std::vector<uint8_t>& hw, int64_t ld, int64_t M, int64_t N,
                   int64_t K, const std::vector<float>& xs, const std::vector<int32_t>& xz,
                   const std::vector<int32_t>& xsum, const std::vector<float>& ws, const std::vector<float>& wz,
                   const std::vector<int32_t>& wsum, const std::vector<float>& bias, int out,
                   std::vector<uint32_t>& expect) {
  expect.assign(static_cast<size_t>(M * N), 0u);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      int32_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += host_code(&hx[m * ld], k) * host_code(&hw[n * ld], k);
      uint32_t bits;
      if (out == QVGEN_DTYPE_I32) {
        std::memcpy(&bits, &acc, 4);
      } else {
        const int32_t I = acc - xz[m] * wsum[n];
        const int32_t Tm = static_cast<int32_t>(K) * xz[m] - xsum[m];
        const float corr = std::fmaf(wz[n], static_cast<float>(Tm), static_cast<float>(I));
        const float s = xs[m] * ws[n];
        const float v = bias.empty() ? s * corr : std::fmaf(s, corr, bias[n]);
        std::memcpy(&bits, &v, 4);
        if (out == QVGEN_DTYPE_BF16) bits = host_bf16(v);
      }
      expect[static_cast<size_t>(m * N + n)] = bits;
    }
}

int resolve(int path) {
  int resolved = 0;
  if (qvgen_cuda_resolve_path(path, &resolved) != QVGEN_OK) throw Error(QVGEN_ERR_CUDA, qvgen_cuda_last_error());
  return resolved;
}

}  // namespace

void set_last_error(const std::string& msg) { g_last_error = msg; }
void clear_last_error() { g_last_error.clear(); }

}  // namespace qvgen

extern "C" int qvgen_cuda_abi_version(void) { return QVGEN_W4A4_ABI_VERSION; }

extern "C" const char* qvgen_cuda_last_error(void) { return qvgen::g_last_error.c_str(); }

extern "C" int qvgen_cuda_selftest(int path, void* stream, int64_t* mismatches) {
  using namespace qvgen;
  return guarded([&] {
    QVGEN_CHECK(mismatches, QVGEN_ERR_INVALID_ARGUMENT, "mismatches must not be NULL");
    const int resolved = resolve(path);
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    struct Shape {
      int64_t M, N, K;
    };
    // Odd M, partial CTA tiles, K not a multiple of 64, odd K, several pipeline stages.
    const Shape shapes[] = {{1, 1, 1}, {3, 5, 7}, {37, 45, 67}, {130, 129, 129}, {129, 257, 320}, {200, 136, 1001}};
    Lcg rng{12345u};
    int64_t bad = 0;
    for (const Shape& sh : shapes) {
      const bool with_bias = (&sh - shapes) % 2 == 0;  // every other shape without bias (NULL)
      const int64_t kbytes = (sh.K + 1) / 2;
      const int64_t ld = (kbytes + 15) / 16 * 16 + 16;  // extra padding filled with garbage on purpose
      std::vector<uint8_t> hx(static_cast<size_t>(sh.M * ld)), hw(static_cast<size_t>(sh.N * ld));
      for (auto& b : hx) b = static_cast<uint8_t>(rng.next() >> 24);
      for (auto& b : hw) b = static_cast<uint8_t>(rng.next() >> 24);
      std::vector<float> xs(sh.M), ws(sh.N), wz(sh.N), bias(sh.N);
      std::vector<int32_t> xz(sh.M), xsum(sh.M), wsum(sh.N);
      for (int64_t m = 0; m < sh.M; ++m) {
        xs[m] = 1e-3f + rng.uniform();
        xz[m] = static_cast<int32_t>(rng.next() >> 28);
        xsum[m] = static_cast<int32_t>(rng.next() % (15u * static_cast<uint32_t>(sh.K) + 1u));
      }
      for (int64_t n = 0; n < sh.N; ++n) {
        ws[n] = 1e-3f + rng.uniform();
        wz[n] = 15.0f * rng.uniform();
        bias[n] = rng.uniform() - 0.5f;
        wsum[n] = static_cast<int32_t>(rng.next() % (15u * static_cast<uint32_t>(sh.K) + 1u));
      }
      DeviceBuffer dx(hx.size()), dw(hw.size()), dxs(4 * sh.M), dxz(4 * sh.M), dxsum(4 * sh.M), dws(4 * sh.N),
          dwz(4 * sh.N), dwsum(4 * sh.N), dbias(4 * sh.N);
      QVGEN_CUDA_CHECK(cudaMemcpyAsync(dx.ptr, hx.data(), hx.size(), cudaMemcpyHostToDevice, s));
      QVGEN_CUDA_CHECK(cudaMemcpyAsync(dw.ptr, hw.data(), hw.size(), cudaMemcpyHostToDevice, s));
      QVGEN_CUDA_CHECK(cudaMemcpyAsync(dxs.ptr, xs.data(), 4 * sh.M, cudaMemcpyHostToDevice, s));
      QVGEN_CUDA_CHECK(cudaMemcpyAsync(dxz.ptr, xz.data(), 4 * sh.M, cudaMemcpyHostToDevice, s));
      QVGEN_CUDA_CHECK(cudaMemcpyAsync(dxsum.ptr, xsum.data(), 4 * sh.M, cudaMemcpyHostToDevice, s));
      QVGEN_CUDA_CHECK(cudaMemcpyAsync(dws.ptr, ws.data(), 4 * sh.N, cudaMemcpyHostToDevice, s));
      QVGEN_CUDA_CHECK(cudaMemcpyAsync(dwz.ptr, wz.data(), 4 * sh.N, cudaMemcpyHostToDevice, s));
      QVGEN_CUDA_CHECK(cudaMemcpyAsync(dwsum.ptr, wsum.data(), 4 * sh.N, cudaMemcpyHostToDevice, s));
      QVGEN_CUDA_CHECK(cudaMemcpyAsync(dbias.ptr, bias.data(), 4 * sh.N, cudaMemcpyHostToDevice, s));
      // ldy: N rounded up to 8 (> N for most shapes; 16-byte rows, as the wgmma path needs).
      const int64_t ldy = (sh.N + 7) / 8 * 8;
      DeviceBuffer yd(4 * sh.M * ldy);
      std::vector<uint32_t> expect;
      for (int out : {QVGEN_DTYPE_I32, QVGEN_DTYPE_F32, QVGEN_DTYPE_BF16}) {
        host_expected(hx, hw, ld, sh.M, sh.N, sh.K, xs, xz, xsum, ws, wz, wsum,
                      with_bias ? bias : std::vector<float>{}, out, expect);
        const size_t elem = out == QVGEN_DTYPE_BF16 ? 2 : 4;
        for (int pth : {resolved, static_cast<int>(QVGEN_PATH_SIMT)}) {
          GemmParams p{dx.as<uint8_t>(), dxs.as<float>(), dxz.as<int32_t>(), dxsum.as<int32_t>(),
                       dw.as<uint8_t>(), dws.as<float>(), dwz.as<float>(), dwsum.as<int32_t>(),
                       with_bias ? dbias.as<float>() : nullptr, yd.ptr, ld, ld, ldy, sh.M, sh.N, static_cast<int32_t>(sh.K)};
          QVGEN_CUDA_CHECK(cudaMemsetAsync(yd.ptr, 0xFF, 4 * sh.M * ldy, s));
          gemm_resolved(p, pth, out, s);
          QVGEN_CUDA_CHECK(cudaGetLastError());
          std::vector<uint8_t> h(static_cast<size_t>(sh.M * ldy) * elem);
          QVGEN_CUDA_CHECK(cudaMemcpyAsync(h.data(), yd.ptr, h.size(), cudaMemcpyDeviceToHost, s));
          QVGEN_CUDA_CHECK(cudaStreamSynchronize(s));
          for (int64_t m = 0; m < sh.M; ++m)
            for (int64_t n = 0; n < sh.N; ++n) {
              uint32_t got = 0;
              std::memcpy(&got, &h[static_cast<size_t>(m * ldy + n) * elem], elem);
              if (got != expect[static_cast<size_t>(m * sh.N + n)]) ++bad;
            }
          if (resolved == QVGEN_PATH_SIMT) break;  // checked once
        }
      }
    }
    *mismatches = bad;
  });
}
