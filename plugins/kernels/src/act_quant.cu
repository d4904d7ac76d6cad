// Per-token dynamic INT4/INT3/INT2 activation quantization (layout and math: qvgen/w4a4_types.h):
// launchers and C entry points; the kernels are in act_quant_kernel.cuh and simt_kernels.cuh.

#include <algorithm>
#include <cmath>

#include "act_quant_kernel.cuh"
#include "common.cuh"
#include "simt_kernels.cuh"

namespace qvgen {
namespace {

using aq::act_quant_kernel;
using aq::AQ_THREADS;
using aq::AQ_TOKENS;
using simt::code_sums_kernel;
using simt::unpack_u8_kernel;

template <typename T, bool BYTES>
void launch_act_quant(const void* x, int64_t M, int32_t K, int64_t ldx, const float* clip_lo, const float* clip_hi,
                      int64_t T_, int qmax, uint8_t* qx, int64_t ldq, float* scale, int32_t* zero, int32_t* code_sum,
                      cudaStream_t stream) {
  const bool vec = aligned16(x) && (ldx * static_cast<int64_t>(sizeof(T))) % 16 == 0 && K % 8 == 0;
  const int64_t blocks = (M + AQ_TOKENS - 1) / AQ_TOKENS;
  act_quant_kernel<T, BYTES><<<static_cast<unsigned>(blocks), AQ_THREADS, 0, stream>>>(
      static_cast<const T*>(x), M, ldx, K, clip_lo, clip_hi, T_, qmax, qx, ldq, scale, zero, code_sum, vec);
}

// Both act_quant entry points: BYTES = false writes packed nibbles, true one code per byte.
template <bool BYTES>
void act_quant_impl(const void* x, int x_dtype, int64_t M, int64_t K, int64_t ldx, const float* clip_lo,
                    const float* clip_hi, int64_t T, int bits, uint8_t* qx, int64_t ldq, float* scale, int32_t* zero,
                    int32_t* code_sum, void* stream) {
  QVGEN_CHECK(M >= 0, QVGEN_ERR_INVALID_ARGUMENT, "M must be >= 0, got " + std::to_string(M));
  QVGEN_CHECK(M <= 0x7FFFFFFF, QVGEN_ERR_UNSUPPORTED, "M must be < 2^31");
  QVGEN_CHECK(K >= 1, QVGEN_ERR_INVALID_ARGUMENT, "K must be >= 1, got " + std::to_string(K));
  QVGEN_CHECK(K <= QVGEN_MAX_K, QVGEN_ERR_UNSUPPORTED,
              "K=" + std::to_string(K) + " exceeds QVGEN_MAX_K=" + std::to_string(QVGEN_MAX_K));
  QVGEN_CHECK(x_dtype == QVGEN_DTYPE_F32 || x_dtype == QVGEN_DTYPE_F16 || x_dtype == QVGEN_DTYPE_BF16,
              QVGEN_ERR_INVALID_ARGUMENT, "x_dtype must be F32, F16 or BF16, got " + std::to_string(x_dtype));
  QVGEN_CHECK(bits >= 2 && bits <= 8, QVGEN_ERR_INVALID_ARGUMENT, "bits must be in 2..8");
  QVGEN_CHECK(bits <= 4, QVGEN_ERR_UNSUPPORTED, "only 2..4-bit codes (4-bit containers) are supported");
  QVGEN_CHECK(T >= 1, QVGEN_ERR_INVALID_ARGUMENT, "tokens per sample T must be >= 1");
  QVGEN_CHECK(ldx >= K, QVGEN_ERR_INVALID_ARGUMENT, "ldx must be >= K");
  const int64_t need = BYTES ? K : (K + 1) / 2;
  QVGEN_CHECK(ldq >= need && ldq % 16 == 0, QVGEN_ERR_INVALID_ARGUMENT,
              std::string("ldq must be >= ") + (BYTES ? "K" : "ceil(K/2)") + " and a multiple of 16 bytes, got " +
                  std::to_string(ldq));
  if (M == 0) return;
  QVGEN_CHECK(x && clip_lo && clip_hi && qx && scale && zero && code_sum, QVGEN_ERR_INVALID_ARGUMENT,
              "null pointer argument");
  QVGEN_CHECK(aligned16(qx), QVGEN_ERR_INVALID_ARGUMENT, "qx must be 16-byte aligned");
  const int qmax = (1 << bits) - 1;
  const int32_t k32 = static_cast<int32_t>(K);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (x_dtype) {
    case QVGEN_DTYPE_F32:
      launch_act_quant<float, BYTES>(x, M, k32, ldx, clip_lo, clip_hi, T, qmax, qx, ldq, scale, zero, code_sum, s);
      break;
    case QVGEN_DTYPE_F16:
      launch_act_quant<__half, BYTES>(x, M, k32, ldx, clip_lo, clip_hi, T, qmax, qx, ldq, scale, zero, code_sum, s);
      break;
    default:
      launch_act_quant<__nv_bfloat16, BYTES>(x, M, k32, ldx, clip_lo, clip_hi, T, qmax, qx, ldq, scale, zero,
                                             code_sum, s);
      break;
  }
  QVGEN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void launch_unpack_u8(const uint8_t* q, int64_t ldq, int64_t rows, int32_t K, uint8_t* out, int64_t ld8,
                      cudaStream_t stream) {
  const int64_t words = ld8 / 8;  // 8 output bytes per thread
  constexpr int threads = 256;
  const dim3 grid(static_cast<unsigned>((words + threads - 1) / threads),
                  static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  unpack_u8_kernel<<<grid, threads, 0, stream>>>(q, ldq, K, out, ld8, rows);
}

}  // namespace qvgen

extern "C" int qvgen_cuda_act_quant_u8(const void* x, int x_dtype, int64_t M, int64_t K, int64_t ldx,
                                       const float* clip_lo, const float* clip_hi, int64_t T, int bits, uint8_t* qx8,
                                       int64_t ldq8, float* scale, int32_t* zero, int32_t* code_sum, void* stream) {
  using namespace qvgen;
  return guarded([&] {
    act_quant_impl<true>(x, x_dtype, M, K, ldx, clip_lo, clip_hi, T, bits, qx8, ldq8, scale, zero, code_sum, stream);
  });
}

extern "C" int qvgen_cuda_unpack_u8(const uint8_t* q, int64_t ldq, int64_t rows, int64_t K, uint8_t* out,
                                    int64_t ld8, void* stream) {
  using namespace qvgen;
  return guarded([&] {
    QVGEN_CHECK(rows >= 0, QVGEN_ERR_INVALID_ARGUMENT, "rows must be >= 0");
    QVGEN_CHECK(K >= 1 && K <= QVGEN_MAX_K, K < 1 ? QVGEN_ERR_INVALID_ARGUMENT : QVGEN_ERR_UNSUPPORTED,
                "K must be in [1, QVGEN_MAX_K], got " + std::to_string(K));
    QVGEN_CHECK(ldq >= (K + 1) / 2, QVGEN_ERR_INVALID_ARGUMENT, "ldq must be >= ceil(K/2) bytes");
    QVGEN_CHECK(ld8 >= K && ld8 % 16 == 0, QVGEN_ERR_INVALID_ARGUMENT,
                "ld8 must be >= K and a multiple of 16 bytes, got " + std::to_string(ld8));
    if (rows == 0) return;
    QVGEN_CHECK(q && out, QVGEN_ERR_INVALID_ARGUMENT, "null pointer argument");
    QVGEN_CHECK(aligned16(out), QVGEN_ERR_INVALID_ARGUMENT, "out must be 16-byte aligned");
    launch_unpack_u8(q, ldq, rows, static_cast<int32_t>(K), out, ld8, static_cast<cudaStream_t>(stream));
    QVGEN_CUDA_CHECK(cudaGetLastError());
  });
}

extern "C" int qvgen_cuda_act_quant(const void* x, int x_dtype, int64_t M, int64_t K, int64_t ldx,
                                    const float* clip_lo, const float* clip_hi, int64_t T, int bits, uint8_t* qx,
                                    int64_t ldq, float* scale, int32_t* zero, int32_t* code_sum, void* stream) {
  using namespace qvgen;
  return guarded([&] {
    act_quant_impl<false>(x, x_dtype, M, K, ldx, clip_lo, clip_hi, T, bits, qx, ldq, scale, zero, code_sum, stream);
  });
}

extern "C" int qvgen_cuda_code_sums(const uint8_t* qw, int64_t ldq, int64_t N, int64_t K, int32_t* w_sum,
                                    void* stream) {
  using namespace qvgen;
  return guarded([&] {
    QVGEN_CHECK(N >= 0, QVGEN_ERR_INVALID_ARGUMENT, "N must be >= 0");
    QVGEN_CHECK(K >= 1, QVGEN_ERR_INVALID_ARGUMENT, "K must be >= 1");
    QVGEN_CHECK(K <= QVGEN_MAX_K, QVGEN_ERR_UNSUPPORTED, "K exceeds QVGEN_MAX_K");
    QVGEN_CHECK(ldq >= (K + 1) / 2, QVGEN_ERR_INVALID_ARGUMENT, "ldq must be >= ceil(K/2) bytes");
    if (N == 0) return;
    QVGEN_CHECK(qw && w_sum, QVGEN_ERR_INVALID_ARGUMENT, "null pointer argument");
    constexpr int threads = 256, rows_per_cta = threads / 32;
    const int64_t blocks = (N + rows_per_cta - 1) / rows_per_cta;
    QVGEN_CHECK(blocks <= 0x7FFFFFFF, QVGEN_ERR_UNSUPPORTED, "N too large");
    code_sums_kernel<<<static_cast<unsigned>(blocks), threads, 0, static_cast<cudaStream_t>(stream)>>>(
        qw, ldq, N, static_cast<int32_t>(K), w_sum);
    QVGEN_CUDA_CHECK(cudaGetLastError());
  });
}
