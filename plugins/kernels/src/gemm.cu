// W4A4 GEMM: packed 4-bit codes x packed 4-bit codes -> exact int32, then the zero-point
// epilogue of qvgen/w4a4_types.h. Kernels: gemm_tc.cuh (tensor cores), simt_kernels.cuh (SIMT);
// here the launchers and the C entry points.

#include <algorithm>
#include <cstring>
#include <vector>

#include "common.cuh"
#include "gemm_tc.cuh"
#include "simt_kernels.cuh"

namespace qvgen {
namespace {

using tc::BM;
using tc::BN;
using tc::gemm_tc_kernel;
using tc::THREADS;
using simt::gemm_simt_kernel;

template <int OUT>
void launch_for_out(const GemmParams& p, int path, cudaStream_t s) {
  if (path == QVGEN_PATH_SIMT) {
    const dim3 block(32, 8);
    const int64_t gy = std::min<int64_t>((p.M + block.y - 1) / block.y, 65535);
    const dim3 grid(static_cast<unsigned>((p.N + block.x - 1) / block.x), static_cast<unsigned>(gy));
    gemm_simt_kernel<OUT><<<grid, block, 0, s>>>(p);
    return;
  }
  const dim3 grid(static_cast<unsigned>((p.M + BM - 1) / BM), static_cast<unsigned>((p.N + BN - 1) / BN));
  if (path == QVGEN_PATH_MMA_U4)
    gemm_tc_kernel<QVGEN_PATH_MMA_U4, OUT><<<grid, THREADS, 0, s>>>(p);
  else
    gemm_tc_kernel<QVGEN_PATH_IMMA_U8, OUT><<<grid, THREADS, 0, s>>>(p);
}

}  // namespace

void launch_gemm(const GemmParams& p, int path, int y_dtype, cudaStream_t s) {
  switch (y_dtype) {
    case QVGEN_DTYPE_F32:
      launch_for_out<QVGEN_DTYPE_F32>(p, path, s);
      break;
    case QVGEN_DTYPE_F16:
      launch_for_out<QVGEN_DTYPE_F16>(p, path, s);
      break;
    case QVGEN_DTYPE_BF16:
      launch_for_out<QVGEN_DTYPE_BF16>(p, path, s);
      break;
    default:
      launch_for_out<QVGEN_DTYPE_I32>(p, path, s);
      break;
  }
}

int resolve_path_on_current_device(int path) {
  if (path != QVGEN_PATH_AUTO) return path;
  int dev = 0, major = 0;
  QVGEN_CUDA_CHECK(cudaGetDevice(&dev));
  QVGEN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  QVGEN_CHECK(major >= 8, QVGEN_ERR_UNSUPPORTED,
              "compute capability " + std::to_string(major) + ".x < 8.0: the kernels need sm_80 or newer");
  // Ampere/Ada: native 4-bit MMA. Hopper and newer: no 4-bit integer tensor cores, use INT8.
  return major >= 9 ? QVGEN_PATH_IMMA_U8 : QVGEN_PATH_MMA_U4;
}

}  // namespace qvgen

extern "C" int qvgen_cuda_gemm(const uint8_t* qx, int64_t ldqx, const float* x_scale, const int32_t* x_zero,
                               const int32_t* x_sum, const uint8_t* qw, int64_t ldqw, const float* w_scale,
                               const float* w_zero, const int32_t* w_sum, const float* bias, int64_t M, int64_t N,
                               int64_t K, void* y, int y_dtype, int64_t ldy, int path, void* stream) {
  using namespace qvgen;
  return guarded([&] {
    QVGEN_CHECK(M >= 0 && N >= 0, QVGEN_ERR_INVALID_ARGUMENT, "M and N must be >= 0");
    QVGEN_CHECK(K >= 1, QVGEN_ERR_INVALID_ARGUMENT, "K must be >= 1, got " + std::to_string(K));
    QVGEN_CHECK(K <= QVGEN_MAX_K, QVGEN_ERR_UNSUPPORTED, "K exceeds QVGEN_MAX_K");
    QVGEN_CHECK(y_dtype >= QVGEN_DTYPE_F32 && y_dtype <= QVGEN_DTYPE_I32, QVGEN_ERR_INVALID_ARGUMENT,
                "y_dtype must be F32, F16, BF16 or I32, got " + std::to_string(y_dtype));
    QVGEN_CHECK(path >= QVGEN_PATH_AUTO && path <= QVGEN_PATH_SIMT, QVGEN_ERR_INVALID_ARGUMENT,
                "unknown path " + std::to_string(path));
    const int64_t kbytes = (K + 1) / 2;
    QVGEN_CHECK(ldqx >= kbytes && ldqx % 16 == 0, QVGEN_ERR_INVALID_ARGUMENT,
                "ldqx must be >= ceil(K/2) and a multiple of 16 bytes, got " + std::to_string(ldqx));
    QVGEN_CHECK(ldqw >= kbytes && ldqw % 16 == 0, QVGEN_ERR_INVALID_ARGUMENT,
                "ldqw must be >= ceil(K/2) and a multiple of 16 bytes, got " + std::to_string(ldqw));
    QVGEN_CHECK(ldy >= N, QVGEN_ERR_INVALID_ARGUMENT, "ldy must be >= N");
    if (M == 0 || N == 0) return;
    QVGEN_CHECK(qx && qw && y, QVGEN_ERR_INVALID_ARGUMENT, "null pointer argument (qx, qw or y)");
    QVGEN_CHECK(aligned16(qx) && aligned16(qw), QVGEN_ERR_INVALID_ARGUMENT, "qx and qw must be 16-byte aligned");
    const bool raw = y_dtype == QVGEN_DTYPE_I32;
    QVGEN_CHECK(raw || (x_scale && x_zero && x_sum && w_scale && w_zero && w_sum), QVGEN_ERR_INVALID_ARGUMENT,
                "null scale/zero/sum pointer (only the I32 output may omit them)");
    QVGEN_CHECK((M + BM - 1) / BM <= 0x7FFFFFFF && (N + BN - 1) / BN <= 65535, QVGEN_ERR_UNSUPPORTED,
                "M or N too large for the launch grid");
    GemmParams p{qx, x_scale, x_zero, x_sum, qw, w_scale, w_zero, w_sum, bias, y, ldqx, ldqw, ldy,
                 M,  N,       static_cast<int32_t>(K)};
    const int resolved = resolve_path_on_current_device(path);
    launch_gemm(p, resolved, y_dtype, static_cast<cudaStream_t>(stream));
    QVGEN_CUDA_CHECK(cudaGetLastError());
  });
}

extern "C" int qvgen_cuda_resolve_path(int path, int* resolved) {
  using namespace qvgen;
  return guarded([&] {
    QVGEN_CHECK(resolved, QVGEN_ERR_INVALID_ARGUMENT, "resolved must not be NULL");
    QVGEN_CHECK(path >= QVGEN_PATH_AUTO && path <= QVGEN_PATH_SIMT, QVGEN_ERR_INVALID_ARGUMENT,
                "unknown path " + std::to_string(path));
    *resolved = resolve_path_on_current_device(path);
  });
}
