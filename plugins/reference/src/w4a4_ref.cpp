// CPU reference of the qvgen W4A4 operations. Layouts and math: qvgen/w4a4_types.h.
//
// Built with -ffp-contract=off and without -ffast-math: every float operation below is one
// IEEE-754 binary32 operation with round-to-nearest-even, in the order the header specifies,
// so codes match PyTorch's float32 fake quant and the epilogue matches the CUDA kernels bit for bit.

#include "qvgen/w4a4_ref.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

thread_local std::string g_last_error;

struct Error : std::runtime_error {
  int status;
  Error(int s, const std::string& msg) : std::runtime_error(msg), status(s) {}
};

#define QVGEN_CHECK(cond, status, msg)                          \
  do {                                                          \
    if (!(cond)) throw Error((status), std::string(__func__) + ": " + (msg)); \
  } while (0)

// Runs fn at the C boundary: exceptions become a status and a message, never an abort.
template <typename Fn>
int guarded(Fn&& fn) noexcept {
  try {
    g_last_error.clear();
    fn();
    return QVGEN_OK;
  } catch (const Error& e) {
    g_last_error = e.what();
    return e.status;
  } catch (const std::bad_alloc&) {
    g_last_error = "out of host memory";
    return QVGEN_ERR_INTERNAL;
  } catch (const std::exception& e) {
    g_last_error = e.what();
    return QVGEN_ERR_INTERNAL;
  } catch (...) {
    g_last_error = "unknown C++ exception";
    return QVGEN_ERR_INTERNAL;
  }
}

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t mant = h & 0x3FFu;
  if (exp == 0) {
    // zero or subnormal: mant * 2^-24, exact in float32
    const float v = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  if (exp == 31) return bits_f32(sign | 0x7F800000u | (mant << 13));
  return bits_f32(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

inline float bf16_to_float(uint16_t b) { return bits_f32(static_cast<uint32_t>(b) << 16); }

uint16_t to_half(float f) {
  const uint32_t x = f32_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) {  // inf / nan (keep nan quiet)
    return static_cast<uint16_t>(sign | 0x7C00u | (ax > 0x7F800000u ? (0x200u | ((ax >> 13) & 0x3FFu)) : 0u));
  }
  if (ax >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {                                                 // below 2^-14: subnormal half
    const uint32_t e = ax >> 23;
    if (e < 102) return static_cast<uint16_t>(sign);  // < 2^-25 rounds to zero
    const uint32_t mant = (ax & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  const uint32_t e = (ax >> 23) - 127 + 15;
  const uint32_t mant = ax & 0x7FFFFFu;
  uint32_t h = (e << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is correct
  return static_cast<uint16_t>(sign | h);
}

uint16_t to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  x += 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

inline float load_x(const void* x, int dtype, int64_t idx) {
  switch (dtype) {
    case QVGEN_DTYPE_F32:
      return static_cast<const float*>(x)[idx];
    case QVGEN_DTYPE_F16:
      return half_to_float(static_cast<const uint16_t*>(x)[idx]);
    default:
      return bf16_to_float(static_cast<const uint16_t*>(x)[idx]);
  }
}

inline int code_at(const uint8_t* row, int64_t k) { return (row[k >> 1] >> ((k & 1) * 4)) & 0xF; }

// Splits [0, n) over a few threads; small problems stay on the calling thread.
template <typename Fn>
void parallel_rows(int64_t n, int64_t work_per_row, Fn&& fn) {
  unsigned hw = std::thread::hardware_concurrency();
  int64_t nthreads = std::max<int64_t>(1, std::min<int64_t>(hw ? hw : 1, 16));
  if (n * work_per_row < (int64_t(1) << 22)) nthreads = 1;
  nthreads = std::min<int64_t>(nthreads, n);
  if (nthreads <= 1) {
    fn(int64_t(0), n);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(nthreads));
  const int64_t chunk = (n + nthreads - 1) / nthreads;
  for (int64_t t = 0; t < nthreads; ++t) {
    const int64_t b = t * chunk, e = std::min(n, b + chunk);
    if (b >= e) break;
    pool.emplace_back([&, b, e, t] {
      try {
        fn(b, e);
      } catch (...) {
        errors[static_cast<size_t>(t)] = std::current_exception();
      }
    });
  }
  for (auto& th : pool) th.join();
  for (auto& ep : errors)
    if (ep) std::rethrow_exception(ep);
}

void check_k(int64_t K) {
  QVGEN_CHECK(K >= 1, QVGEN_ERR_INVALID_ARGUMENT, "K must be >= 1, got " + std::to_string(K));
  QVGEN_CHECK(K <= QVGEN_MAX_K, QVGEN_ERR_UNSUPPORTED,
              "K=" + std::to_string(K) + " exceeds QVGEN_MAX_K=" + std::to_string(QVGEN_MAX_K));
}

}  // namespace

extern "C" {

int qvgen_ref_abi_version(void) { return QVGEN_W4A4_ABI_VERSION; }

const char* qvgen_ref_last_error(void) { return g_last_error.c_str(); }

uint16_t qvgen_ref_float_to_half(float f) { return to_half(f); }
uint16_t qvgen_ref_float_to_bf16(float f) { return to_bf16(f); }

int qvgen_ref_act_quant(const void* x, int x_dtype, int64_t M, int64_t K, int64_t ldx, const float* clip_lo,
                        const float* clip_hi, int64_t T, int bits, uint8_t* qx, int64_t ldq, float* scale,
                        int32_t* zero, int32_t* code_sum) {
  return guarded([&] {
    QVGEN_CHECK(M >= 0, QVGEN_ERR_INVALID_ARGUMENT, "M must be >= 0");
    check_k(K);
    QVGEN_CHECK(x_dtype == QVGEN_DTYPE_F32 || x_dtype == QVGEN_DTYPE_F16 || x_dtype == QVGEN_DTYPE_BF16,
                QVGEN_ERR_INVALID_ARGUMENT, "x_dtype must be F32, F16 or BF16, got " + std::to_string(x_dtype));
    QVGEN_CHECK(bits >= 2 && bits <= 8, QVGEN_ERR_INVALID_ARGUMENT, "bits must be in 2..8");
    QVGEN_CHECK(bits <= 4, QVGEN_ERR_UNSUPPORTED, "only 2..4-bit codes (4-bit containers) are supported");
    QVGEN_CHECK(T >= 1, QVGEN_ERR_INVALID_ARGUMENT, "tokens per sample T must be >= 1");
    QVGEN_CHECK(ldx >= K, QVGEN_ERR_INVALID_ARGUMENT, "ldx must be >= K");
    QVGEN_CHECK(ldq >= (K + 1) / 2, QVGEN_ERR_INVALID_ARGUMENT, "ldq must be >= ceil(K/2) bytes");
    if (M == 0) return;
    QVGEN_CHECK(x && clip_lo && clip_hi && qx && scale && zero && code_sum, QVGEN_ERR_INVALID_ARGUMENT,
                "null pointer argument");
    const int qmax = (1 << bits) - 1;
    const float qmaxf = static_cast<float>(qmax);
    parallel_rows(M, K, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) {
        const int64_t base = m * ldx;
        float mn = std::numeric_limits<float>::infinity();
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t k = 0; k < K; ++k) {
          const float v = load_x(x, x_dtype, base + k);
          mn = std::min(mn, v);
          mx = std::max(mx, v);
        }
        const int64_t b = m / T;
        const float lo = std::min(mn, 0.0f) * clip_lo[b];
        const float hi = std::max(mx, 0.0f) * clip_hi[b];
        const float s = std::max((hi - lo) / qmaxf, 1e-8f);
        const float zpf = std::min(std::max(std::rint(-lo / s), 0.0f), qmaxf);
        uint8_t* row = qx + m * ldq;
        std::memset(row, 0, static_cast<size_t>(ldq));
        int32_t sum = 0;
        for (int64_t k = 0; k < K; ++k) {
          const float v = load_x(x, x_dtype, base + k);
          const float qf = std::min(std::max(std::rint(v / s) + zpf, 0.0f), qmaxf);
          const int q = static_cast<int>(qf);
          sum += q;
          row[k >> 1] = static_cast<uint8_t>(row[k >> 1] | (q << ((k & 1) * 4)));
        }
        scale[m] = s;
        zero[m] = static_cast<int32_t>(zpf);
        code_sum[m] = sum;
      }
    });
  });
}

int qvgen_ref_code_sums(const uint8_t* qw, int64_t ldq, int64_t N, int64_t K, int32_t* w_sum) {
  return guarded([&] {
    QVGEN_CHECK(N >= 0, QVGEN_ERR_INVALID_ARGUMENT, "N must be >= 0");
    check_k(K);
    QVGEN_CHECK(ldq >= (K + 1) / 2, QVGEN_ERR_INVALID_ARGUMENT, "ldq must be >= ceil(K/2) bytes");
    if (N == 0) return;
    QVGEN_CHECK(qw && w_sum, QVGEN_ERR_INVALID_ARGUMENT, "null pointer argument");
    for (int64_t n = 0; n < N; ++n) {
      const uint8_t* row = qw + n * ldq;
      int32_t s = 0;
      for (int64_t k = 0; k < K; ++k) s += code_at(row, k);
      w_sum[n] = s;
    }
  });
}

int qvgen_ref_gemm(const uint8_t* qx, int64_t ldqx, const float* x_scale, const int32_t* x_zero,
                   const int32_t* x_sum, const uint8_t* qw, int64_t ldqw, const float* w_scale, const float* w_zero,
                   const int32_t* w_sum, const float* bias, int64_t M, int64_t N, int64_t K, void* y, int y_dtype,
                   int64_t ldy) {
  return guarded([&] {
    QVGEN_CHECK(M >= 0 && N >= 0, QVGEN_ERR_INVALID_ARGUMENT, "M and N must be >= 0");
    check_k(K);
    QVGEN_CHECK(y_dtype >= QVGEN_DTYPE_F32 && y_dtype <= QVGEN_DTYPE_I32, QVGEN_ERR_INVALID_ARGUMENT,
                "y_dtype must be F32, F16, BF16 or I32, got " + std::to_string(y_dtype));
    QVGEN_CHECK(ldqx >= (K + 1) / 2 && ldqw >= (K + 1) / 2, QVGEN_ERR_INVALID_ARGUMENT,
                "ldqx and ldqw must be >= ceil(K/2) bytes");
    QVGEN_CHECK(ldy >= N, QVGEN_ERR_INVALID_ARGUMENT, "ldy must be >= N");
    if (M == 0 || N == 0) return;
    QVGEN_CHECK(qx && qw && y, QVGEN_ERR_INVALID_ARGUMENT, "null pointer argument (qx, qw or y)");
    const bool raw = y_dtype == QVGEN_DTYPE_I32;
    QVGEN_CHECK(raw || (x_scale && x_zero && x_sum && w_scale && w_zero && w_sum), QVGEN_ERR_INVALID_ARGUMENT,
                "null scale/zero/sum pointer (only the I32 output may omit them)");

    // Unpack both operands to one byte per code (the math, not the speed, is the point here).
    std::vector<uint8_t> wq(static_cast<size_t>(N * K));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) wq[static_cast<size_t>(n * K + k)] = static_cast<uint8_t>(code_at(qw + n * ldqw, k));

    parallel_rows(M, N * K, [&](int64_t m0, int64_t m1) {
      std::vector<uint8_t> xr(static_cast<size_t>(K));
      for (int64_t m = m0; m < m1; ++m) {
        for (int64_t k = 0; k < K; ++k) xr[static_cast<size_t>(k)] = static_cast<uint8_t>(code_at(qx + m * ldqx, k));
        for (int64_t n = 0; n < N; ++n) {
          const uint8_t* wr = wq.data() + n * K;
          int32_t acc = 0;
          for (int64_t k = 0; k < K; ++k) acc += static_cast<int32_t>(xr[static_cast<size_t>(k)]) * wr[k];
          const int64_t o = m * ldy + n;
          if (raw) {
            static_cast<int32_t*>(y)[o] = acc;
            continue;
          }
          const int32_t I = acc - x_zero[m] * w_sum[n];
          const int32_t Tm = static_cast<int32_t>(K) * x_zero[m] - x_sum[m];
          const float corr = std::fmaf(w_zero[n], static_cast<float>(Tm), static_cast<float>(I));
          const float s = x_scale[m] * w_scale[n];
          const float v = bias ? std::fmaf(s, corr, bias[n]) : s * corr;
          switch (y_dtype) {
            case QVGEN_DTYPE_F32:
              static_cast<float*>(y)[o] = v;
              break;
            case QVGEN_DTYPE_F16:
              static_cast<uint16_t*>(y)[o] = to_half(v);
              break;
            default:
              static_cast<uint16_t*>(y)[o] = to_bf16(v);
              break;
          }
        }
      }
    });
  });
}

}  // extern "C"
