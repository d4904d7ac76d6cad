// W4A4 GEMM: packed 4-bit codes x packed 4-bit codes -> exact int32, then the zero-point
// epilogue of qvgen/w4a4_types.h. Kernels: gemm_tc.cuh (tensor cores), simt_kernels.cuh (SIMT);
// here the launchers and the C entry points.

#include <algorithm>
#include <cstdint>
#include <string>
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
  // N fastest (see gemm_tc_kernel): x = N tiles, y = M tiles.
  const dim3 grid(static_cast<unsigned>((p.N + BN - 1) / BN), static_cast<unsigned>((p.M + BM - 1) / BM));
  if (path == QVGEN_PATH_MMA_U4)
    gemm_tc_kernel<QVGEN_PATH_MMA_U4, OUT><<<grid, THREADS, 0, s>>>(p);
  else
    gemm_tc_kernel<QVGEN_PATH_IMMA_U8, OUT><<<grid, THREADS, 0, s>>>(p);
}

}  // namespace

void launch_gemm(const GemmParams& p_in, int path, int y_dtype, cudaStream_t s) {
  GemmParams p = p_in;
  const int elem = y_dtype == QVGEN_DTYPE_F16 || y_dtype == QVGEN_DTYPE_BF16 ? 2 : 4;
  p.vec_store = p.ldy % 2 == 0 && reinterpret_cast<uintptr_t>(p.y) % (2 * elem) == 0;
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

bool wgmma_built() {
#ifdef QVGEN_HAVE_WGMMA
  return true;
#else
  return false;
#endif
}

// Compute capability of the current device; sm_80+ required.
void device_cc(int& major, int& minor) {
  int dev = 0;
  QVGEN_CUDA_CHECK(cudaGetDevice(&dev));
  QVGEN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  QVGEN_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  QVGEN_CHECK(major >= 8, QVGEN_ERR_UNSUPPORTED,
              "compute capability " + std::to_string(major) + "." + std::to_string(minor) +
                  " < 8.0: the kernels need sm_80 or newer");
}

// WGMMA_U8 runs where it was built and the device is exactly sm_90 (its SASS is sm_90a only).
void require_wgmma_device() {
  QVGEN_CHECK(wgmma_built(), QVGEN_ERR_UNSUPPORTED,
              "path WGMMA_U8 was not built (CUTLASS not found at configure time; see docs/native-kernels.md)");
  int major = 0, minor = 0;
  device_cc(major, minor);
  QVGEN_CHECK(major == 9 && minor == 0, QVGEN_ERR_UNSUPPORTED,
              "path WGMMA_U8 needs compute capability 9.0 (sm_90a), this device is " + std::to_string(major) + "." +
                  std::to_string(minor));
}

int resolve_path_on_current_device(int path) {
  if (path == QVGEN_PATH_WGMMA_U8) {
    require_wgmma_device();
    return path;
  }
  if (path != QVGEN_PATH_AUTO) return path;
  int major = 0, minor = 0;
  device_cc(major, minor);
  // Ampere/Ada: native 4-bit MMA. Hopper: no 4-bit integer tensor cores; INT8 wgmma (CUTLASS)
  // where built, else INT8 mma.sync. Newer than sm_90: the sm_90 PTX of IMMA_U8.
  if (major == 9 && minor == 0 && wgmma_built()) return QVGEN_PATH_WGMMA_U8;
  return major >= 9 ? QVGEN_PATH_IMMA_U8 : QVGEN_PATH_MMA_U4;
}

// Owns a stream-ordered device allocation (freed on the same stream).
struct StreamBuffer {
  void* ptr = nullptr;
  cudaStream_t s;
  StreamBuffer(size_t bytes, cudaStream_t st) : s(st) { QVGEN_CUDA_CHECK(cudaMallocAsync(&ptr, bytes ? bytes : 1, s)); }
  ~StreamBuffer() {
    if (ptr) cudaFreeAsync(ptr, s);
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
};

int64_t round16(int64_t v) { return (v + 15) / 16 * 16; }

// Output requirements of the CUTLASS epilogue (TMA store): ldy and y aligned to 16 bytes.
bool wgmma_output_ok(const void* y, int64_t ldy, int y_dtype) {
#ifdef QVGEN_HAVE_WGMMA
  return ldy % wgmma_out_alignment(y_dtype) == 0 && aligned16(y);
#else
  (void)y, (void)ldy, (void)y_dtype;
  return false;
#endif
}

void run_wgmma(const WgmmaParams& w, int y_dtype, cudaStream_t s) {
#ifdef QVGEN_HAVE_WGMMA
  launch_wgmma_u8(w, y_dtype, s);
#else
  (void)w, (void)y_dtype, (void)s;
  throw Error(QVGEN_ERR_UNSUPPORTED, "path WGMMA_U8 was not built");
#endif
}

// Path WGMMA_U8 from packed operands: both are unpacked to one code per byte into stream-ordered
// scratch (M * Kp + N * Kp bytes, freed on the stream), then the CUTLASS GEMM runs. Callers that
// keep INT8 weights (qvgen_cuda_unpack_u8 at load) and quantize straight to bytes
// (qvgen_cuda_act_quant_u8) call qvgen_cuda_gemm_u8 instead and skip both unpacks.
void gemm_wgmma_from_packed(const GemmParams& p, int y_dtype, cudaStream_t s) {
  const int64_t kp = round16(p.K);
  StreamBuffer a8(static_cast<size_t>(p.M * kp), s), b8(static_cast<size_t>(p.N * kp), s);
  launch_unpack_u8(p.qx, p.ldqx, p.M, p.K, static_cast<uint8_t*>(a8.ptr), kp, s);
  launch_unpack_u8(p.qw, p.ldqw, p.N, p.K, static_cast<uint8_t*>(b8.ptr), kp, s);
  QVGEN_CUDA_CHECK(cudaGetLastError());
  WgmmaParams w{static_cast<const uint8_t*>(a8.ptr), static_cast<const uint8_t*>(b8.ptr), p.x_scale, p.x_zero, p.x_sum,
                p.w_scale, p.w_zero, p.w_sum, p.bias, p.y, kp, kp, p.ldy, p.M, p.N, p.K, static_cast<int32_t>(kp)};
  run_wgmma(w, y_dtype, s);
}

void gemm_resolved(const GemmParams& p, int resolved, int y_dtype, cudaStream_t s) {
  if (resolved == QVGEN_PATH_WGMMA_U8)
    gemm_wgmma_from_packed(p, y_dtype, s);
  else
    launch_gemm(p, resolved, y_dtype, s);
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
    QVGEN_CHECK(path >= QVGEN_PATH_AUTO && path <= QVGEN_PATH_WGMMA_U8, QVGEN_ERR_INVALID_ARGUMENT,
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
    QVGEN_CHECK((N + BN - 1) / BN <= 0x7FFFFFFF && (M + BM - 1) / BM <= 65535, QVGEN_ERR_UNSUPPORTED,
                "M or N too large for the launch grid");
    GemmParams p{qx, x_scale, x_zero, x_sum, qw, w_scale, w_zero, w_sum, bias, y, ldqx, ldqw, ldy,
                 M,  N,       static_cast<int32_t>(K)};
    int resolved = resolve_path_on_current_device(path);
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (resolved == QVGEN_PATH_WGMMA_U8) {
      const bool ok = wgmma_output_ok(y, ldy, y_dtype) && M <= 0x7FFFFFFF && N <= 0x7FFFFFFF;
      // AUTO falls back to the mma.sync INT8 path where the epilogue's TMA store cannot be used.
      QVGEN_CHECK(ok || path == QVGEN_PATH_AUTO, QVGEN_ERR_UNSUPPORTED,
                  "path WGMMA_U8 needs y 16-byte aligned and ldy a multiple of 16 bytes");
      if (ok) {
        gemm_wgmma_from_packed(p, y_dtype, s);
        return;
      }
      resolved = QVGEN_PATH_IMMA_U8;
    }
    launch_gemm(p, resolved, y_dtype, s);
    QVGEN_CUDA_CHECK(cudaGetLastError());
  });
}

extern "C" int qvgen_cuda_gemm_u8(const uint8_t* qx8, int64_t ldqx8, const float* x_scale, const int32_t* x_zero,
                                  const int32_t* x_sum, const uint8_t* qw8, int64_t ldqw8, const float* w_scale,
                                  const float* w_zero, const int32_t* w_sum, const float* bias, int64_t M, int64_t N,
                                  int64_t K, void* y, int y_dtype, int64_t ldy, void* stream) {
  using namespace qvgen;
  return guarded([&] {
    QVGEN_CHECK(M >= 0 && N >= 0, QVGEN_ERR_INVALID_ARGUMENT, "M and N must be >= 0");
    QVGEN_CHECK(K >= 1, QVGEN_ERR_INVALID_ARGUMENT, "K must be >= 1, got " + std::to_string(K));
    QVGEN_CHECK(K <= QVGEN_MAX_K, QVGEN_ERR_UNSUPPORTED,
                "K=" + std::to_string(K) + " exceeds QVGEN_MAX_K=" + std::to_string(QVGEN_MAX_K));
    QVGEN_CHECK(y_dtype >= QVGEN_DTYPE_F32 && y_dtype <= QVGEN_DTYPE_I32, QVGEN_ERR_INVALID_ARGUMENT,
                "y_dtype must be F32, F16, BF16 or I32, got " + std::to_string(y_dtype));
    const int64_t kp = round16(K);
    QVGEN_CHECK(ldqx8 >= kp && ldqx8 % 16 == 0 && ldqw8 >= kp && ldqw8 % 16 == 0, QVGEN_ERR_INVALID_ARGUMENT,
                "ldqx8 and ldqw8 must be >= K rounded up to 16 and multiples of 16 bytes");
    QVGEN_CHECK(ldy >= N, QVGEN_ERR_INVALID_ARGUMENT, "ldy must be >= N");
    QVGEN_CHECK(M <= 0x7FFFFFFF && N <= 0x7FFFFFFF, QVGEN_ERR_UNSUPPORTED, "M and N must be < 2^31");
    if (M == 0 || N == 0) return;
    QVGEN_CHECK(qx8 && qw8 && y, QVGEN_ERR_INVALID_ARGUMENT, "null pointer argument (qx8, qw8 or y)");
    QVGEN_CHECK(aligned16(qx8) && aligned16(qw8), QVGEN_ERR_INVALID_ARGUMENT, "qx8 and qw8 must be 16-byte aligned");
    const bool raw = y_dtype == QVGEN_DTYPE_I32;
    QVGEN_CHECK(raw || (x_scale && x_zero && x_sum && w_scale && w_zero && w_sum), QVGEN_ERR_INVALID_ARGUMENT,
                "null scale/zero/sum pointer (only the I32 output may omit them)");
    require_wgmma_device();
    QVGEN_CHECK(wgmma_output_ok(y, ldy, y_dtype), QVGEN_ERR_UNSUPPORTED,
                "path WGMMA_U8 needs y 16-byte aligned and ldy a multiple of 16 bytes");
    WgmmaParams w{qx8, qw8, x_scale, x_zero, x_sum, w_scale, w_zero, w_sum, bias, y, ldqx8, ldqw8, ldy,
                  M,   N,   static_cast<int32_t>(K), static_cast<int32_t>(kp)};
    run_wgmma(w, y_dtype, static_cast<cudaStream_t>(stream));
  });
}

extern "C" int qvgen_cuda_has_wgmma(void) { return qvgen::wgmma_built() ? 1 : 0; }

extern "C" int qvgen_cuda_resolve_path(int path, int* resolved) {
  using namespace qvgen;
  return guarded([&] {
    QVGEN_CHECK(resolved, QVGEN_ERR_INVALID_ARGUMENT, "resolved must not be NULL");
    QVGEN_CHECK(path >= QVGEN_PATH_AUTO && path <= QVGEN_PATH_WGMMA_U8, QVGEN_ERR_INVALID_ARGUMENT,
                "unknown path " + std::to_string(path));
    *resolved = resolve_path_on_current_device(path);
  });
}
