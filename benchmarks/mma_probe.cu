// Raw mma.sync throughput probe (benchmarks/gpu_check.sh builds and runs it; never run yet).
//
// Every warp issues ITERS rounds of 8 independent mma.sync on register operands (no memory
// traffic), for the integer shapes the W4A4 kernels use:
//   u8: mma.sync.aligned.m16n8k32.row.col.s32.u8.u8.s32  (IMMA_U8 path; 8192 ops per instruction)
//   u4: mma.sync.aligned.m16n8k64.row.col.s32.u4.u4.s32  (MMA_U4 path; 16384 ops; emulated on sm_90)
// and prints one JSON line: {"device":..., "sm":..., "u8_tops":..., "u4_tops":...}. The wgmma rate is
// not probed separately: gemm_u8 at M = 32760 in bench_gemm.py is the CUTLASS wgmma kernel itself.
// Build: nvcc -O3 -arch=sm_XX benchmarks/mma_probe.cu -o mma_probe
#include <cuda_runtime.h>

#include <cstdio>

constexpr int ITERS = 4096;
constexpr int CHAINS = 8;

template <bool U4>
__global__ void probe(int* sink, unsigned seed) {
  unsigned a[4], b[2];
  for (int i = 0; i < 4; ++i) a[i] = seed * (threadIdx.x + 7 * i + 1);
  for (int i = 0; i < 2; ++i) b[i] = seed ^ (threadIdx.x * 13 + i);
  int c[CHAINS][4] = {};
  for (int it = 0; it < ITERS; ++it) {
#pragma unroll
    for (int j = 0; j < CHAINS; ++j) {
      if constexpr (U4) {
        asm volatile(
            "mma.sync.aligned.m16n8k64.row.col.s32.u4.u4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+r"(c[j][0]), "+r"(c[j][1]), "+r"(c[j][2]), "+r"(c[j][3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
      } else {
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.s32.u8.u8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+r"(c[j][0]), "+r"(c[j][1]), "+r"(c[j][2]), "+r"(c[j][3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
      }
    }
  }
  int s = 0;
  for (int j = 0; j < CHAINS; ++j) s += c[j][0] + c[j][1] + c[j][2] + c[j][3];
  if (s == 0x7fffffff) sink[threadIdx.x] = s;  // keeps the chains alive
}

template <bool U4>
double tops(int sms) {
  int* sink = nullptr;
  cudaMalloc(&sink, 1024 * sizeof(int));
  const int blocks = sms * 8, threads = 256;
  probe<U4><<<blocks, threads>>>(sink, 1u);  // warm-up
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaEventRecord(e0);
  probe<U4><<<blocks, threads>>>(sink, 3u);
  cudaEventRecord(e1);
  cudaEventSynchronize(e1);
  float ms = 0.0f;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaFree(sink);
  const double ops_per_mma = U4 ? 2.0 * 16 * 8 * 64 : 2.0 * 16 * 8 * 32;
  const double mmas = static_cast<double>(blocks) * (threads / 32) * ITERS * CHAINS;
  return mmas * ops_per_mma / (ms * 1e-3) / 1e12;
}

int main() {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) {
    std::fprintf(stderr, "mma_probe: no CUDA device\n");
    return 2;
  }
  const double u8 = tops<false>(p.multiProcessorCount);
  const double u4 = tops<true>(p.multiProcessorCount);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    std::fprintf(stderr, "mma_probe: %s\n", cudaGetErrorString(err));
    return 1;
  }
  std::printf("{\"device\":\"%s\",\"sm\":\"%d%d\",\"sms\":%d,\"mma_sync_u8_tops\":%.1f,\"mma_sync_u4_tops\":%.1f}\n", p.name,
              p.major, p.minor, p.multiProcessorCount, u8, u4);
  return 0;
}
