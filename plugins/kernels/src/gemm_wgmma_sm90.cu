// Path WGMMA_U8 (Hopper, sm_90a only): a CUTLASS 3.x warp-specialized INT8 GEMM (TMA loads,
// wgmma.mma_async u8 x u8 -> s32, IGMMA in SASS) over codes stored one per byte, with the
// zero-point epilogue of qvgen/w4a4_types.h as a CUTLASS epilogue visitor tree (EVT).
//
// Compiled only when CMake finds CUTLASS (QVGEN_CUTLASS_DIR, default: the `nvidia-cutlass` pip
// package) and only for sm_90a (this file is the only source of the qvgen_w4a4_wgmma_obj object
// library). The rest of the library calls it through launch_wgmma_u8 (common.cuh) after checking
// the device is compute capability 9.0.
//
// Operands: A = activation codes [M, lda] uint8 (one code 0..15 per byte, K contiguous),
// B = weight codes [N, ldb] uint8 likewise ("TN": both K-major). Codes at k >= K must be 0
// (the unpack/quantize kernels write them so); the problem's K is padded to Kp (multiple of 16,
// CUTLASS's 16-byte operand alignment) and TMA zero-fills the K tile beyond Kp.
//
// Epilogue tree (every node on the per-thread accumulator fragment, in this order):
//   I    = acc - x_zero[m] * w_sum[n]                 int32   (node IOp)
//   Tm   = K * x_zero[m] - x_sum[m]                   int32   (node TmOp, K an argument)
//   corr = __fmaf_rn(w_zero[n], float(Tm), float(I))  float   (int32 -> float: cvt.rn, exact below 2^24)
//   s    = __fmul_rn(x_scale[m], w_scale[n])          float
//   y    = __fmaf_rn(s, corr, bias[n])                float -> ElementD with round-to-nearest-even
// Without a bias the bias leaf reads -0.0f (its null default): fmaf(s, corr, -0) == s * corr bit for
// bit (x + -0 = x for every x, including +0 + -0 = +0), so one tree serves both cases.
// With I32 output the tree is the accumulator alone (the raw-acc test hook).

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "common.cuh"

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/numeric_types.h"

namespace qvgen {
namespace wg {

using namespace cute;
namespace fu = cutlass::epilogue::fusion;

// Compute functors of the tree. Sm90Compute instantiates ComputeFn<ElementCompute> (for its
// Arguments) and ComputeFn<Array<ElementCompute, N>> (to compute); only the latter's call is used.
template <class T>
struct IOp {  // acc - zx * sumw (exact int32)
  template <int N>
  CUTLASS_DEVICE cutlass::Array<int32_t, N> operator()(cutlass::Array<int32_t, N> const& acc,
                                                       cutlass::Array<int32_t, N> const& zx,
                                                       cutlass::Array<int32_t, N> const& sumw) const {
    cutlass::Array<int32_t, N> r;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) r[i] = acc[i] - zx[i] * sumw[i];
    return r;
  }
};

struct TmArgs {
  int32_t K = 0;
};
template <class T>
struct TmOp {  // K * zx - sumx (exact int32)
  using Arguments = TmArgs;
  template <int N>
  CUTLASS_DEVICE cutlass::Array<int32_t, N> operator()(cutlass::Array<int32_t, N> const& zx,
                                                       cutlass::Array<int32_t, N> const& sumx,
                                                       TmArgs const& a) const {
    cutlass::Array<int32_t, N> r;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) r[i] = a.K * zx[i] - sumx[i];
    return r;
  }
};

template <class T>
struct FmaOp {  // __fmaf_rn(a, b, c): one rounding, not subject to contraction choices
  template <int N>
  CUTLASS_DEVICE cutlass::Array<float, N> operator()(cutlass::Array<float, N> const& a, cutlass::Array<float, N> const& b,
                                                     cutlass::Array<float, N> const& c) const {
    cutlass::Array<float, N> r;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) r[i] = __fmaf_rn(a[i], b[i], c[i]);
    return r;
  }
};

template <class T>
struct MulOp {  // __fmul_rn(a, b)
  template <int N>
  CUTLASS_DEVICE cutlass::Array<float, N> operator()(cutlass::Array<float, N> const& a,
                                                     cutlass::Array<float, N> const& b) const {
    cutlass::Array<float, N> r;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) r[i] = __fmul_rn(a[i], b[i]);
    return r;
  }
};

template <class T>
struct IdOp {
  template <int N>
  CUTLASS_DEVICE cutlass::Array<int32_t, N> operator()(cutlass::Array<int32_t, N> const& a) const {
    return a;
  }
};

// Tiles (estimates, unmeasured: the usual best INT8 shapes of CUTLASS's profiler on H100).
using TileShape = Shape<_128, _256, _128>;  // 128 x 256 outputs, K step 128 bytes = 128 codes
using ClusterShape = Shape<_2, _1, _1>;     // B tile multicast to the 2 CTAs of a cluster
using MainSchedule = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
using EpiSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;
constexpr auto RN = cutlass::FloatRoundStyle::round_to_nearest;

template <class E>
using RowB = fu::Sm90RowBroadcast<0, TileShape, E, E, Stride<_0, _1, _0>, 1>;  // per column n
template <class E>
using ColB = fu::Sm90ColBroadcast<0, TileShape, E, E, Stride<_1, _0, _0>, 1>;  // per row m

using INode = fu::Sm90EVT<fu::Sm90Compute<IOp, int32_t, int32_t, RN>, fu::Sm90AccFetch, ColB<int32_t>, RowB<int32_t>>;
using TmNode = fu::Sm90EVT<fu::Sm90Compute<TmOp, int32_t, int32_t, RN>, ColB<int32_t>, ColB<int32_t>>;
using CorrNode = fu::Sm90EVT<fu::Sm90Compute<FmaOp, float, float, RN>, RowB<float>, TmNode, INode>;
using SNode = fu::Sm90EVT<fu::Sm90Compute<MulOp, float, float, RN>, ColB<float>, RowB<float>>;
template <class ElementD>
using YTree = fu::Sm90EVT<fu::Sm90Compute<FmaOp, ElementD, float, RN>, SNode, CorrNode, RowB<float>>;
using RawTree = fu::Sm90EVT<fu::Sm90Compute<IdOp, int32_t, int32_t, RN>, fu::Sm90AccFetch>;

template <class ElementD, class Tree>
struct Gemm {
  static constexpr int AlignD = 128 / cutlass::sizeof_bits<ElementD>::value;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, int32_t, float, void, cutlass::layout::RowMajor, AlignD,
      ElementD, cutlass::layout::RowMajor, AlignD, EpiSchedule, Tree>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, uint8_t, cutlass::layout::RowMajor, 16, uint8_t,
      cutlass::layout::ColumnMajor, 16, int32_t, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      MainSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Device = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

template <class ElementD>
typename YTree<ElementD>::Arguments tree_args(const WgmmaParams& p) {
  // Nesting: {child0, child1, ..., node}; leaves: {ptr, null_default, stride}.
  typename YTree<ElementD>::Arguments a{
      {                                   // SNode
       {p.x_scale, 0.0f, {}},             //   x_scale[m]
       {p.w_scale, 0.0f, {}},             //   w_scale[n]
       {}},                               //   mul
      {                                   // CorrNode
       {p.w_zero, 0.0f, {}},              //   w_zero[n]
       {{p.x_zero, 0, {}}, {p.x_sum, 0, {}}, TmArgs{p.K}},  // TmNode
       {{}, {p.x_zero, 0, {}}, {p.w_sum, 0, {}}, {}},        // INode: acc, x_zero[m], w_sum[n]
       {}},                               //   fma
      {p.bias, -0.0f, {}},                // bias[n], -0.0f when NULL (see the header comment)
      {}};                                // fma + convert
  return a;
}

template <class ElementD, class Tree, class TreeArgs>
void run(const WgmmaParams& p, const TreeArgs& targs, cudaStream_t stream) {
  using G = typename Gemm<ElementD, Tree>::Device;
  using SA = typename G::GemmKernel::StrideA;
  using SB = typename G::GemmKernel::StrideB;
  using SD = typename G::GemmKernel::StrideD;
  SA sa = make_stride(p.lda, _1{}, int64_t(0));
  SB sb = make_stride(p.ldb, _1{}, int64_t(0));
  SD sd = make_stride(p.ldy, _1{}, int64_t(0));
  typename G::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                             {static_cast<int>(p.M), static_cast<int>(p.N), p.Kp, 1},
                             {p.a, sa, p.b, sb},
                             {targs, nullptr, sd, static_cast<ElementD*>(p.y), sd}};
  int dev = 0;
  QVGEN_CUDA_CHECK(cudaGetDevice(&dev));
  args.hw_info = cutlass::KernelHardwareInfo::make_kernel_hardware_info<typename G::GemmKernel>(dev);
  G gemm;
  cutlass::Status st = gemm.can_implement(args);
  QVGEN_CHECK(st == cutlass::Status::kSuccess, QVGEN_ERR_UNSUPPORTED,
              std::string("CUTLASS wgmma GEMM cannot implement this problem: ") + cutlassGetStatusString(st));
  QVGEN_CHECK(G::get_workspace_size(args) == 0, QVGEN_ERR_INTERNAL, "unexpected CUTLASS workspace");
  st = gemm.initialize(args, nullptr, stream);
  QVGEN_CHECK(st == cutlass::Status::kSuccess, QVGEN_ERR_INTERNAL,
              std::string("CUTLASS initialize: ") + cutlassGetStatusString(st));
  st = gemm.run(stream);
  QVGEN_CUDA_CHECK(cudaGetLastError());
  QVGEN_CHECK(st == cutlass::Status::kSuccess, QVGEN_ERR_CUDA, std::string("CUTLASS run: ") + cutlassGetStatusString(st));
}

}  // namespace wg

int wgmma_out_alignment(int y_dtype) { return y_dtype == QVGEN_DTYPE_F16 || y_dtype == QVGEN_DTYPE_BF16 ? 8 : 4; }

void launch_wgmma_u8(const WgmmaParams& p, int y_dtype, cudaStream_t stream) {
  using namespace wg;
  switch (y_dtype) {
    case QVGEN_DTYPE_F32:
      run<float, YTree<float>>(p, tree_args<float>(p), stream);
      break;
    case QVGEN_DTYPE_F16:
      run<cutlass::half_t, YTree<cutlass::half_t>>(p, tree_args<cutlass::half_t>(p), stream);
      break;
    case QVGEN_DTYPE_BF16:
      run<cutlass::bfloat16_t, YTree<cutlass::bfloat16_t>>(p, tree_args<cutlass::bfloat16_t>(p), stream);
      break;
    default: {
      typename RawTree::Arguments raw{{}, {}};
      run<int32_t, RawTree>(p, raw, stream);
      break;
    }
  }
}

}  // namespace qvgen
