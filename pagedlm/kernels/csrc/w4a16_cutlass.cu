// W4A16 GEMM for batched decode and prefill on Hopper (sm_90a): CUTLASS 3's mixed-input
// warp-specialized mainloop. The 4-bit weight is the wgmma's register operand (TMA brings its
// packed tile to shared memory, each consumer thread reads its 16 codes with one 64-bit load,
// upconverts them to the activations' 16-bit type with one LOP3 + one HSUB2 per pair and
// applies the group's scale and zero as scale * code + zero); the activations are the
// shared-memory operand. So a weight is read once per output tile and dequantized in registers,
// never written back to memory, and the tensor cores run the 16-bit MMA at full width: at
// large M the layer costs about what the bf16 GEMM costs, not that plus a dequantized copy of
// the weight.
//
// Operands, bf16 throughout (fp16 in a build with -D PAGEDLM_FP16=1): x [M, K] row-major; the
// weight as unsigned 4-bit codes [N, K] (K contiguous, two per byte, the lower input in the low
// nibble), reordered once at load by pagedlm_w4a16_cutlass_reorder into the layout the mainloop
// reads (CUTLASS's shuffled atom); scales and zeros [K / group, N] (N contiguous) with
// zeros = -zero_point * scale, so W[k, n] = scale * code + zeros; out [M, N] row-major. The GEMM
// runs swapped (out^T = W x^T: the weight on the MMA's M side), which lets the epilogue store
// with TMA.
//
// One tile configuration and element type per built library (-D TILE_N, TILE_M, PINGPONG,
// PAGEDLM_FP16); the host side, pagedlm/kernels/cutlass_w4a16.py, builds the ones it times.
// Built at first use by pagedlm/kernels/cuda_build.py against the CUTLASS headers of the
// nvidia-cutlass package.
#include <cuda_runtime.h>
#include <cstdint>

#include "cutlass/cutlass.h"
#include "cute/tensor.hpp"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

using namespace cute;

namespace pagedlm_w4 {

// The reordering of the 4-bit operand that lets a thread read its 16 values of a wgmma step
// with one 64-bit shared-memory load, in the order [0,2,4,6,1,3,5,7] that the 16-bit upconversion
// takes: CUTLASS's compute_memory_reordering_atom and reorder_tensor (tools/util,
// mixed_dtype_utils.hpp, BSD-3-Clause), copied here so that the build needs only CUTLASS's
// include directory.
template <class ElementMma, class AtomLayout, class ValLayout>
constexpr auto memory_reordering_atom(AtomLayout atom_layout = {}, ValLayout val_layout = {}) {
  using MmaAtom = decltype(SM90::GMMA::rs_op_selector<ElementMma, ElementMma, float, Shape<_64, _16, _32>>());
  using MmaTraits = MMA_Traits<MmaAtom>;
  auto mk_shape_mma = select<0, 2>(typename MmaTraits::Shape_MNK{});
  auto tv_layout_mma = typename MmaTraits::ALayout{};
  auto tv_tiler_warp = make_shape(Int<32>{}, size<1>(tv_layout_mma));
  auto mk_shape_warp = shape_div(mk_shape_mma, size(typename MmaTraits::ThrID{}) / Int<32>{});
  auto tv_layout_mma_warp = make_layout_like(composition(tv_layout_mma, tv_tiler_warp));
  auto mk_layout_mma_warp = right_inverse(tv_layout_mma_warp).with_shape(mk_shape_warp);
  auto mk_layout_mma_trgt = blocked_product(mk_layout_mma_warp, atom_layout);
  auto val_to_offset = logical_product(val_layout, size<1>(tv_layout_mma) / size(val_layout) * size(atom_layout));
  auto thr_to_offset = make_layout(size<0>(tv_layout_mma_warp));
  auto tv_to_offset = select<1, 0>(logical_product(val_to_offset, thr_to_offset));
  return composition(tv_to_offset, mk_layout_mma_trgt);
}

template <class TileShape, class EngineSrc, class LayoutSrc, class EngineDst, class LayoutDst, class TiledCopy>
__global__ void reorder_kernel(Tensor<EngineSrc, LayoutSrc> S, Tensor<EngineDst, LayoutDst> D, TiledCopy tiled_copy) {
  Tensor gS = local_tile(S, TileShape{}, make_coord(blockIdx.x, _, blockIdx.z));
  Tensor gD = local_tile(D, TileShape{}, make_coord(blockIdx.x, _, blockIdx.z));
  auto thread_copy = tiled_copy.get_slice(threadIdx.x);
  copy(tiled_copy, thread_copy.partition_S(gS), thread_copy.partition_D(gD));
}

template <class T, class LayoutSrc, class LayoutDst>
void reorder(T const* src, LayoutSrc const& layout_src, T* dst, LayoutDst const& layout_dst, cudaStream_t stream) {
  auto S = make_tensor(make_gmem_ptr<T>(src), layout_src);
  auto D = make_tensor(make_gmem_ptr<T>(dst), layout_dst);
  // at least 8 bits of contiguous destination elements per thread (no two threads write one byte)
  constexpr int N = shape_div(Int<8>{}, Int<sizeof_bits_v<T>>{});
  auto val_layout = make_layout(make_shape(Int<1>{}, Int<N>{}), GenRowMajor{});
  auto thr_layout = make_layout(make_shape(Int<1>{}, Int<128>{}));
  auto tiled_copy = make_tiled_copy(Copy_Atom<DefaultCopy, T>{}, thr_layout, val_layout);
  using TileShape = Shape<_16>;  // 16 rows a block: the shuffle atom's height on Hopper
  auto tiled_D = group_modes<3, rank_v<LayoutDst>>(tiled_divide(D, TileShape{}));
  dim3 blocks{unsigned(size<1>(tiled_D)), 1u, unsigned(size<3>(tiled_D))};
  reorder_kernel<TileShape><<<blocks, 128, 0, stream>>>(S, D, tiled_copy);
}

#ifndef PAGEDLM_FP16
#define PAGEDLM_FP16 0
#endif
#if PAGEDLM_FP16
using MmaType = cutlass::half_t;
#else
using MmaType = cutlass::bfloat16_t;
#endif
using QuantType = cutlass::uint4b_t;
constexpr int kTileK = 64;  // 128 bytes of 16-bit activations per TMA row

using LayoutX = cutlass::layout::RowMajor;     // activations [M, K]
using LayoutW = cutlass::layout::ColumnMajor;  // weight as the [K, N] operand: [N, K] K-contiguous
using StrideX = cutlass::detail::TagToStrideA_t<LayoutX>;
using StrideW = cutlass::detail::TagToStrideB_t<LayoutW>;
using LayoutXT = typename cutlass::layout::LayoutTranspose<LayoutX>::type;

using ValueShuffle = Layout<Shape<_2, _4>, Stride<_4, _1>>;  // values [0,2,4,6,1,3,5,7]
using LayoutAtomQuant = decltype(memory_reordering_atom<MmaType, Layout<Shape<_1, _1>>, ValueShuffle>());
using LayoutWReordered = decltype(cute::tile_to_shape(LayoutAtomQuant{}, Layout<Shape<int, int, int>, StrideW>{}));

using LayoutOutT = cutlass::layout::ColumnMajor;  // D^T [N, M] column-major = out [M, N] row-major

template <int TileN, int TileM, class Schedule, class EpiSchedule>
struct Config {
  using TileShape = Shape<Int<TileN>, Int<TileM>, Int<kTileK>>;
  using ClusterShape = Shape<_1, _1, _1>;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      MmaType, LayoutOutT, 8, MmaType, LayoutOutT, 8, EpiSchedule>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      cute::tuple<QuantType, MmaType, MmaType>, LayoutWReordered, 32,
      MmaType, LayoutXT, 8, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      Schedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

// The build's tile (-D knobs, one configuration per library): TILE_N weight rows (output
// columns) by TILE_M activation rows; PINGPONG 1 for two consumer warp groups on alternate tiles
// (64-row tiles), 0 for both on one tile (cooperative, 128 rows and up).
#ifndef TILE_N
#define TILE_N 128
#endif
#ifndef TILE_M
#define TILE_M 128
#endif
#ifndef PINGPONG
#define PINGPONG 0
#endif
#if PINGPONG
using Schedule = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
using EpiSchedule = cutlass::epilogue::TmaWarpSpecialized;
#else
using Schedule = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
using EpiSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;
#endif

template <class Gemm>
typename Gemm::Arguments arguments(const void* x, const void* w, const void* scales, const void* zeros, void* out,
                                   int m, int n, int k, int group) {
  using Mainloop = typename Gemm::GemmKernel::CollectiveMainloop;
  auto shape_w = cute::make_shape(n, k, 1);
  auto layout_w = cute::tile_to_shape(LayoutAtomQuant{}, shape_w);
  StrideX stride_x = cutlass::make_cute_packed_stride(StrideX{}, cute::make_shape(m, k, 1));
  auto stride_s = cutlass::make_cute_packed_stride(typename Mainloop::StrideScale{}, cute::make_shape(n, k / group, 1));
  using StrideOut = typename Gemm::GemmKernel::StrideD;
  StrideOut stride_out = cutlass::make_cute_packed_stride(StrideOut{}, cute::make_shape(n, m, 1));
  return typename Gemm::Arguments{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {n, m, k, 1},
      {static_cast<const QuantType*>(w), layout_w, static_cast<const MmaType*>(x), stride_x,
       static_cast<const MmaType*>(scales), stride_s, group, static_cast<const MmaType*>(zeros)},
      {{1.0f, 0.0f}, static_cast<const MmaType*>(out), stride_out, static_cast<MmaType*>(out), stride_out}};
}

template <class Gemm>
int run(const void* x, const void* w, const void* scales, const void* zeros, void* out, void* workspace,
        size_t workspace_bytes, int m, int n, int k, int group, cudaStream_t stream) {
  auto args = arguments<Gemm>(x, w, scales, zeros, out, m, n, k, group);
  Gemm gemm;
  if (Gemm::get_workspace_size(args) > workspace_bytes) return -2;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return -3;
  if (gemm.initialize(args, workspace, stream) != cutlass::Status::kSuccess) return -4;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return -5;
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? 0 : static_cast<int>(err);
}

using TheGemm = Config<TILE_N, TILE_M, Schedule, EpiSchedule>::Gemm;

}  // namespace pagedlm_w4
using namespace pagedlm_w4;

extern "C" int pagedlm_w4a16_cutlass(const void* x, const void* w, const void* scales, const void* zeros, void* out,
                                     void* workspace, int m, int n, int k, int group,
                                     int workspace_bytes, cudaStream_t stream) {
  return run<TheGemm>(x, w, scales, zeros, out, workspace, workspace_bytes, m, n, k, group, stream);
}

extern "C" long pagedlm_w4a16_cutlass_workspace(int m, int n, int k, int group) {
  return static_cast<long>(TheGemm::get_workspace_size(arguments<TheGemm>(nullptr, nullptr, nullptr, nullptr, nullptr,
                                                                          m, n, k, group)));
}

extern "C" int pagedlm_w4a16_cutlass_reorder(const void* src, void* dst, int n, int k, cudaStream_t stream) {
  auto shape_w = cute::make_shape(n, k, 1);
  StrideW stride_w = cutlass::make_cute_packed_stride(StrideW{}, shape_w);
  auto layout_src = cute::make_layout(shape_w, stride_w);
  auto layout_dst = cute::tile_to_shape(LayoutAtomQuant{}, shape_w);
  reorder(static_cast<const QuantType*>(src), layout_src, static_cast<QuantType*>(dst), layout_dst, stream);
  return static_cast<int>(cudaGetLastError());
}

extern "C" const char* pagedlm_w4a16_cutlass_error_string(int err) {
  switch (err) {
    case -2: return "workspace smaller than the kernel needs";
    case -3: return "CUTLASS cannot implement this problem (shape or alignment)";
    case -4: return "CUTLASS kernel initialization failed";
    case -5: return "CUTLASS kernel launch failed";
    default: return cudaGetErrorString(static_cast<cudaError_t>(err));
  }
}
