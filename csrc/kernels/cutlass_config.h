// CUTLASS 3.x type configuration of the engine's sm_90a GEMMs (gemm.h), in one place.
//
//   D[m, n, l] = epilogue( Σ_k A[m, k, l] · B[n, k, l] )      fp32 accumulation, l = split index (kPartialF32)
//
//   A  (M, K, L)  strides (lda, 1, K/L)   activations, K-major ("RowMajor" A)
//   B  (N, K, L)  strides (ldb, 1, K/L)   nn.Linear weights, K-major ("ColumnMajor" B: TN GEMM)
//   D  (M, N, L)  strides (ldd, 1, M·ldd) N-major
//
// Every kernel is the warp-specialized TMA + WGMMA design: one producer warp issues TMA loads into a multi-stage smem
// ring, consumer warpgroups run wgmma.mma_async on it, and the epilogue goes registers → smem → TMA store. There is no
// C operand (ElementC = void): the epilogue never reads D's old contents, so D is write-only traffic.
//
// Two tile configurations (GemmTile):
//   k128x128   cooperative: two consumer warpgroups split one 128×128 tile by rows (64 rows each).
//   k64x128    pingpong: each consumer warpgroup owns its own 64×128 tile; the two alternate between MMA and
//              epilogue. Cooperative needs TileM >= 128 (a static_assert in the kernel), so pingpong is CUTLASS's
//              way to a 64-row tile, which doubles the CTA count at the engine's small M (197·batch).
// Both use cluster 1×1×1 and the static persistent tile scheduler (grid = min(tiles, SMs), no workspace).
//
// Epilogues (see the FusionCallbacks in cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp):
//   kBias        LinCombPerColBias:        D = alpha·acc + bias[n] (Sm90RowBroadcast, stride (_0,_1,l): one value per
//                                           column n, broadcast along the rows m). alpha = 1.
//   kBiasGelu    LinCombPerColBiasEltAct<thread::GELU>: D = GELU(alpha·acc + bias[n]); GELU<float> is the exact
//                                           0.5·x·(1 + erff(x/√2)) (GELU_taylor is the tanh form; not used).
//   kPartialF32  LinearCombination:        D = alpha·acc in float, alpha = 1 (exact).
// ElementSource is void in all three, so the "beta·C" node of the EVT tree compiles out (Sm90SrcFetch<void>) rather
// than multiplying 0 by uninitialised registers.
#pragma once

#include "gemm.h"

// The kernels are launched with programmatic stream serialization (params.pdl) and must then execute
// griddepcontrol.wait before touching activations; CUTLASS emits it only under this macro. Every TU that includes
// this header must agree on it (the kernel templates would otherwise differ between TUs), hence an error, not a
// silent default.
#if !defined(CUTLASS_ENABLE_GDC_FOR_SM90)
#error "build the engine GEMMs with -DCUTLASS_ENABLE_GDC_FOR_SM90 (PDL: the kernels must run griddepcontrol.wait)"
#endif

// An sm_90 (not sm_90a) image would hold CUTLASS's "arch conditional MMA" error stub instead of the kernel and leave
// D unwritten with no launch error; the host cannot tell the two images apart, so refuse to build one.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "the engine GEMMs need sm_90a: use -gencode=arch=compute_90a,code=sm_90a"
#endif

// CuTe/CUTLASS device-side asserts (e.g. "k_tile_count >= 1" in the sm90 mainloop) compile to calls to __assertfail;
// a call inside the wgmma pipeline makes ptxas serialise every wgmma.mma_async of the kernel (warning C7510).
// CUTLASS's own release builds define NDEBUG; the engine build may not, so the CUTLASS headers are parsed with
// NDEBUG set and assert() is re-armed after them. (The host-side asserts this drops, on TMA descriptor arguments,
// are the conditions gemm_check enforces before any launch.)
#if !defined(NDEBUG)
#define NDEBUG
#define TTF_CUTLASS_CONFIG_DEFINED_NDEBUG
#endif
#include <cassert>

// The collective builders also pull in the sm100 collectives, whose lambdas capture `this` implicitly: deprecated in
// C++20 (nvcc warning 2908) and irrelevant here; silenced for these headers only.
#pragma nv_diag_suppress 2908
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/numeric_types.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/epilogue/thread/activation.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/gemm.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/arch/grid_dependency_control.h"
#pragma nv_diag_default 2908

#if defined(TTF_CUTLASS_CONFIG_DEFINED_NDEBUG)
#undef NDEBUG
#undef TTF_CUTLASS_CONFIG_DEFINED_NDEBUG
#include <cassert>  // <cassert> may be re-included; this restores the active assert() for what follows
#endif

#include <type_traits>

namespace ttf::engine::sm90 {

enum class GemmTile : int { k128x128 = 0, k64x128 = 1 };

// ---------------------------------------------------------------------------------------------------------------
// Element types
// ---------------------------------------------------------------------------------------------------------------
template <DType T> struct ElementOf;
template <> struct ElementOf<DType::kBF16> { using type = cutlass::bfloat16_t; };
template <> struct ElementOf<DType::kFP16> { using type = cutlass::half_t; };

using ElementAccumulator = float;
using ElementCompute = float;  // epilogue math (bias add, GELU) in fp32, one rounding to the output type at the end

// TMA needs 16-byte aligned global strides and bases: 8 elements of bf16/fp16, 4 of float.
template <class Element> inline constexpr int kAlignment = 128 / cutlass::sizeof_bits<Element>::value;

// ---------------------------------------------------------------------------------------------------------------
// Tiles and schedules
// ---------------------------------------------------------------------------------------------------------------
template <GemmTile kTile> struct TileConfig;

template <> struct TileConfig<GemmTile::k128x128> {
  using TileShape = cute::Shape<cute::_128, cute::_128, cute::_64>;  // BLK_K 64 bf16 = 128 B rows: 128B swizzle
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using MainloopSchedule = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;
  static constexpr int kTileM = 128, kTileN = 128;
};

template <> struct TileConfig<GemmTile::k64x128> {
  using TileShape = cute::Shape<cute::_64, cute::_128, cute::_64>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using MainloopSchedule = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecialized;  // the pingpong kernel's epilogue schedule
  static constexpr int kTileM = 64, kTileN = 128;
};

// ---------------------------------------------------------------------------------------------------------------
// Epilogues
// ---------------------------------------------------------------------------------------------------------------
template <class Element, GemmEpilogue kEpilogue> struct EpilogueConfig;

template <class Element> struct EpilogueConfig<Element, GemmEpilogue::kBias> {
  using ElementD = Element;
  using FusionOp = cutlass::epilogue::fusion::LinCombPerColBias<
      ElementD, ElementCompute, /*ElementBias=*/Element, /*ElementSource=*/void, /*ElementScalar=*/ElementCompute,
      kAlignment<Element>, cutlass::FloatRoundStyle::round_to_nearest>;
  static constexpr bool kHasBias = true;
};

template <class Element> struct EpilogueConfig<Element, GemmEpilogue::kBiasGelu> {
  using ElementD = Element;
  using FusionOp = cutlass::epilogue::fusion::LinCombPerColBiasEltAct<
      cutlass::epilogue::thread::GELU, ElementD, ElementCompute, /*ElementBias=*/Element, /*ElementSource=*/void,
      /*ElementScalar=*/ElementCompute, kAlignment<Element>, cutlass::FloatRoundStyle::round_to_nearest>;
  static constexpr bool kHasBias = true;
};

template <class Element> struct EpilogueConfig<Element, GemmEpilogue::kPartialF32> {
  using ElementD = float;
  using FusionOp = cutlass::epilogue::fusion::LinearCombination<
      ElementD, ElementCompute, /*ElementSource=*/void, /*ElementScalar=*/ElementCompute,
      cutlass::FloatRoundStyle::round_to_nearest>;
  static constexpr bool kHasBias = false;
};

// ---------------------------------------------------------------------------------------------------------------
// The kernel for one (dtype, epilogue, tile)
// ---------------------------------------------------------------------------------------------------------------
template <DType kDType, GemmEpilogue kEpilogue, GemmTile kTile>
struct GemmConfig {
  using Element = typename ElementOf<kDType>::type;
  using Tile = TileConfig<kTile>;
  using Epi = EpilogueConfig<Element, kEpilogue>;
  using ElementD = typename Epi::ElementD;

  using LayoutA = cutlass::layout::RowMajor;     // (M, K), K contiguous
  using LayoutB = cutlass::layout::ColumnMajor;  // (N, K), K contiguous
  using LayoutD = cutlass::layout::RowMajor;     // (M, N), N contiguous

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      typename Tile::TileShape, typename Tile::ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto,
      ElementAccumulator, ElementCompute,
      /*ElementC=*/void, LayoutD, kAlignment<ElementD>,
      ElementD, LayoutD, kAlignment<ElementD>,
      typename Tile::EpilogueSchedule,
      typename Epi::FusionOp>::CollectiveOp;

  // Whatever smem the epilogue does not take goes to mainloop stages.
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      Element, LayoutA, kAlignment<Element>,
      Element, LayoutB, kAlignment<Element>,
      ElementAccumulator,
      typename Tile::TileShape, typename Tile::ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Tile::MainloopSchedule>::CollectiveOp;

  using ProblemShape = cute::Shape<int, int, int, int>;  // (M, N, K, L)
  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue,
                                                      cutlass::gemm::PersistentScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  using StrideA = typename Kernel::StrideA;
  using StrideB = typename Kernel::StrideB;
  using StrideD = typename Kernel::StrideD;

  // The argument mapping in gemm_sm90.cuh relies on these exact stride types.
  static_assert(std::is_same_v<StrideA, cute::Stride<int64_t, cute::Int<1>, int64_t>>, "A must be (M,K,L):(lda,1,l)");
  static_assert(std::is_same_v<StrideB, cute::Stride<int64_t, cute::Int<1>, int64_t>>, "B must be (N,K,L):(ldb,1,l)");
  static_assert(std::is_same_v<StrideD, cute::Stride<int64_t, cute::Int<1>, int64_t>>, "D must be (M,N,L):(ldd,1,l)");
  static_assert(std::is_void_v<typename Kernel::ElementC>, "no C source: D is never read");
  static_assert(std::is_same_v<typename Kernel::ElementD, ElementD>);
  static_assert(std::is_same_v<typename CollectiveMainloop::ElementA, Element> &&
                std::is_same_v<typename CollectiveMainloop::ElementB, Element>);
  static_assert(cute::size<0>(typename Tile::TileShape{}) == Tile::kTileM &&
                cute::size<1>(typename Tile::TileShape{}) == Tile::kTileN);
  static_assert(cute::size(typename Tile::ClusterShape{}) == 1, "the launch path assumes no clusters");
  static_assert(Kernel::SharedStorageSize <= 227 * 1024, "exceeds the sm_90 opt-in shared memory per block");
};

}  // namespace ttf::engine::sm90
