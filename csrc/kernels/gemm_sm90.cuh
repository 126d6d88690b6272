// sm_90a GEMM bodies shared by the instantiation TUs (gemm_sm90_<dtype>_<epilogue>_<tile>.cu) and the dispatch
// (gemm_sm90.cu). One Sm90Gemm<dtype, epilogue, tile> per CUTLASS kernel; the 12 specialisations are declared
// `extern template` below and instantiated once each, so the dispatch TU parses CUTLASS but compiles no kernel and
// the kernel TUs build in parallel.
//
// GemmParams → CUTLASS arguments (problem shape (M, N, K/L, L), L = splits):
//   A  ptr A, stride (lda, 1, K/L)       the l-th split reads columns [l·K/L, (l+1)·K/L) of every row
//   B  ptr B, stride (ldb, 1, K/L)
//   D  ptr D, stride (ldd, 1, M·ldd)     split l writes the l-th (M, ldd) slab
// The split-K batch stride K/L is smaller than the row stride, so the A descriptor is (K/L, M, L) with byte strides
// (2·lda, 2·K/L): not monotonic, which cuTensorMapEncodeTiled accepts (flash-attention 3 builds its Q/K/V
// descriptors the same way: (d, seqlen, head) with head stride d < row stride). Bounds are checked per dimension,
// so a box column k >= K/L is out of bounds even though that address holds the next split: TMA writes zeros there
// instead of reading it. M and N residues are zero-filled the same way on load and clipped on the TMA store.
// With L = 1 the (unused) batch stride is M·lda / N·ldb instead, so the plain GEMM keeps increasing strides and only
// the split-K case relies on the out-of-order ones.
#pragma once

#include "cutlass_config.h"

#include <atomic>

namespace ttf::engine::sm90 {

// Device facts the dispatch looks up once per device (gemm_sm90.cu).
struct DeviceInfo {
  int device = 0;
  int sm_count = 0;
};

template <DType kDType, GemmEpilogue kEpilogue, GemmTile kTile>
struct Sm90Gemm {
  using Config = GemmConfig<kDType, kEpilogue, kTile>;
  // nullptr when CUTLASS's can_implement accepts the arguments, else a static message.
  static const char* can_implement(const GemmParams& params, const DeviceInfo& device);
  static size_t workspace_bytes(const GemmParams& params, const DeviceInfo& device);
  // cudaErrorNotSupported when this process holds no sm_90a image of the kernel for `device`.
  static cudaError_t run(const GemmParams& params, const DeviceInfo& device);
};

// True when the build targets sm_90 at all (nvcc hands the list of -gencode targets to both passes). A build for
// other architectures only compiles the kernels out and gemm() answers cudaErrorNotSupported.
constexpr bool built_for_sm90() {
#if defined(__CUDA_ARCH_LIST__)
  constexpr int archs[] = {__CUDA_ARCH_LIST__};
  for (int arch : archs)
    if (arch == 900) return true;
#endif
  return false;
}

// ---------------------------------------------------------------------------------------------------------------
// Definitions (non-inline, so `extern template` below keeps the dispatch TU from instantiating them)
// ---------------------------------------------------------------------------------------------------------------
namespace detail {

template <class Config>
typename Config::Gemm::Arguments make_arguments(const GemmParams& p, const DeviceInfo& device) {
  using Element = typename Config::Element;
  using ElementD = typename Config::ElementD;
  using Arguments = typename Config::Gemm::Arguments;

  const int splits = p.epilogue == GemmEpilogue::kPartialF32 ? p.splits : 1;
  const int k_split = p.K / splits;
  const int64_t batch_a = splits > 1 ? int64_t(k_split) : int64_t(p.M) * p.lda;
  const int64_t batch_b = splits > 1 ? int64_t(k_split) : int64_t(p.N) * p.ldb;
  const int64_t batch_d = int64_t(p.M) * p.ldd;

  const typename Config::StrideA stride_a = cute::make_stride(int64_t(p.lda), cute::Int<1>{}, batch_a);
  const typename Config::StrideB stride_b = cute::make_stride(int64_t(p.ldb), cute::Int<1>{}, batch_b);
  const typename Config::StrideD stride_d = cute::make_stride(int64_t(p.ldd), cute::Int<1>{}, batch_d);

  cutlass::KernelHardwareInfo hw_info;
  hw_info.device_id = device.device;
  hw_info.sm_count = device.sm_count;  // set, so CUTLASS does not query the device on every call

  Arguments args;
  args.mode = splits > 1 ? cutlass::gemm::GemmUniversalMode::kBatched : cutlass::gemm::GemmUniversalMode::kGemm;
  args.problem_shape = typename Config::ProblemShape{p.M, p.N, k_split, splits};
  args.mainloop.ptr_A = static_cast<const Element*>(p.A);
  args.mainloop.dA = stride_a;
  args.mainloop.ptr_B = static_cast<const Element*>(p.B);
  args.mainloop.dB = stride_b;
  args.epilogue.ptr_C = nullptr;  // ElementC = void: no source tensor
  args.epilogue.dC = stride_d;
  args.epilogue.ptr_D = static_cast<ElementD*>(p.D);
  args.epilogue.dD = stride_d;
  auto& fusion = args.epilogue.thread;
  fusion.alpha = 1.0f;
  fusion.beta = 0.0f;  // required by can_implement for a void C
  if constexpr (Config::Epi::kHasBias) {
    fusion.bias_ptr = static_cast<const Element*>(p.bias);
    fusion.dBias = {};  // (_0, _1, 0): bias[n] for every row and every batch index
  }
  args.hw_info = hw_info;
  return args;
}

// CUTLASS reports a failed launch as Status::kErrorInternal after cudaGetLastError() has consumed the CUDA code.
inline cudaError_t to_cuda_error(cutlass::Status status) {
  switch (status) {
    case cutlass::Status::kSuccess: return cudaSuccess;
    case cutlass::Status::kErrorMisalignedOperand:
    case cutlass::Status::kErrorInvalidProblem:
    case cutlass::Status::kErrorInvalidLayout:
    case cutlass::Status::kErrorWorkspaceNull:
    case cutlass::Status::kInvalid: return cudaErrorInvalidValue;
    case cutlass::Status::kErrorNotSupported:
    case cutlass::Status::kErrorArchMismatch: return cudaErrorNotSupported;
    case cutlass::Status::kErrorInsufficientDriver: return cudaErrorInsufficientDriver;
    case cutlass::Status::kErrorMemoryAllocation: return cudaErrorMemoryAllocation;
    default: return cudaErrorUnknown;
  }
}

// Whether the fatbin holds an sm_90 image of `kernel` for `device` (an sm_80 image would be CUTLASS's error stub).
// Cached per device: cudaFuncGetAttributes loads the module, which should happen once, outside graph capture.
template <class Kernel>
bool kernel_image_ok(int device) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];  // 0 unknown, 1 ok, 2 missing
  const bool cacheable = device >= 0 && device < kMaxDevices;
  if (cacheable) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known != 0) return known == 1;
  }
  cudaFuncAttributes attributes{};
  const cudaError_t err = cudaFuncGetAttributes(&attributes, cutlass::device_kernel<Kernel>);
  const bool ok = err == cudaSuccess && attributes.binaryVersion == 90;
  if (err != cudaSuccess) (void)cudaGetLastError();  // a missing image is an answer here, not a pending error
  if (cacheable) cache[device].store(ok ? 1 : 2, std::memory_order_relaxed);
  return ok;
}

}  // namespace detail

template <DType kDType, GemmEpilogue kEpilogue, GemmTile kTile>
const char* Sm90Gemm<kDType, kEpilogue, kTile>::can_implement(const GemmParams& params, const DeviceInfo& device) {
  if constexpr (!built_for_sm90()) {
    return "gemm: the extension was built without an sm_90a target";
  } else {
    const auto args = detail::make_arguments<Config>(params, device);
    if (Config::Gemm::can_implement(args) != cutlass::Status::kSuccess)
      return "gemm: CUTLASS can_implement rejected the arguments (TMA needs 16-byte aligned K/ld strides)";
    return nullptr;
  }
}

template <DType kDType, GemmEpilogue kEpilogue, GemmTile kTile>
size_t Sm90Gemm<kDType, kEpilogue, kTile>::workspace_bytes(const GemmParams& params, const DeviceInfo& device) {
  if constexpr (!built_for_sm90()) {
    return 0;
  } else {
    return Config::Gemm::get_workspace_size(detail::make_arguments<Config>(params, device));
  }
}

template <DType kDType, GemmEpilogue kEpilogue, GemmTile kTile>
cudaError_t Sm90Gemm<kDType, kEpilogue, kTile>::run(const GemmParams& params, const DeviceInfo& device) {
  if constexpr (!built_for_sm90()) {
    return cudaErrorNotSupported;
  } else {
    if (!detail::kernel_image_ok<typename Config::Kernel>(device.device)) return cudaErrorNotSupported;
    const auto args = detail::make_arguments<Config>(params, device);
    typename Config::Gemm gemm_op;
    // run() = initialize (TMA descriptors on the host, smem opt-in) + launch; with launch_with_pdl it launches with
    // cudaLaunchAttributeProgrammaticStreamSerialization through cudaLaunchKernelEx.
    const cutlass::Status status =
        gemm_op.run(args, params.workspace, params.stream, /*cuda_adapter=*/nullptr, /*launch_with_pdl=*/params.pdl);
    return detail::to_cuda_error(status);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The 12 instantiations, each compiled in exactly one gemm_sm90_<dtype>_<epilogue>_<tile>.cu
// ---------------------------------------------------------------------------------------------------------------
#define TTF_SM90_GEMM_EXTERN(DT, EPI)                                                   \
  extern template struct Sm90Gemm<DType::DT, GemmEpilogue::EPI, GemmTile::k128x128>;  \
  extern template struct Sm90Gemm<DType::DT, GemmEpilogue::EPI, GemmTile::k64x128>;
TTF_SM90_GEMM_EXTERN(kBF16, kBias)
TTF_SM90_GEMM_EXTERN(kBF16, kBiasGelu)
TTF_SM90_GEMM_EXTERN(kBF16, kPartialF32)
TTF_SM90_GEMM_EXTERN(kFP16, kBias)
TTF_SM90_GEMM_EXTERN(kFP16, kBiasGelu)
TTF_SM90_GEMM_EXTERN(kFP16, kPartialF32)
#undef TTF_SM90_GEMM_EXTERN

}  // namespace ttf::engine::sm90
