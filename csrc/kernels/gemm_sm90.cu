// gemm.h on sm_90a: argument checks, tile choice and dispatch onto the 12 CUTLASS kernels of gemm_sm90_*.cu.
//
//   D[s] = epilogue(A[:, Ks] · B[:, Ks]ᵀ),  A (M, K), B (N, K), Ks = s-th of `splits` K chunks (1 chunk unless
//   kPartialF32). FLOPs 2·M·N·K. Bytes ≥ e·(M·K + N·K) + |D|, e = 2 (bf16/fp16), |D| = 2·M·N (kBias, kBiasGelu)
//   or 4·splits·M·N (kPartialF32); the bias adds 2·N.
//
// Tile rule (bench/notes/engine_gemm.md): with tiles64 = ⌈M/64⌉·⌈N/128⌉·splits, use the 64×128 pingpong kernel
// when tiles64 <= SMs, i.e. when every CTA of the persistent grid gets exactly one small tile; otherwise the 128×128
// cooperative kernel. A CTA with one 64-row tile loads 192 rows of operands per k-step where a 128×128 CTA loads 256
// and runs half the MMAs, so below one wave the small tile finishes first and spreads the work over twice the SMs.
// Above one wave a pingpong CTA would run two small tiles back to back (its two warpgroups take turns on the tensor
// cores): 384 rows per k-step against 256 for one big tile, so the big tile wins. ViT-S/B at batch 1 (M = 197): QKV,
// fc1 and the split-K GEMMs of ViT-S are 36-96 small tiles; at batch 8 every block GEMM is 128×128.
#include "gemm.h"

#include "gemm_sm90.cuh"

#include <atomic>
#include <cstdint>

namespace ttf::engine {
namespace {

using sm90::DeviceInfo;
using sm90::GemmTile;

// TMA global strides must stay below 2^40 bytes.
constexpr int64_t kMaxStrideBytes = int64_t(1) << 40;
// Tile choice when no device can be queried (gemm_check on a machine without a GPU): H100/H200 SXM.
constexpr int kDefaultSmCount = 132;

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int effective_splits(const GemmParams& p) { return p.epilogue == GemmEpilogue::kPartialF32 ? p.splits : 1; }

bool valid_enums(const GemmParams& p) {
  return (p.dtype == DType::kBF16 || p.dtype == DType::kFP16) &&
         (p.epilogue == GemmEpilogue::kBias || p.epilogue == GemmEpilogue::kBiasGelu ||
          p.epilogue == GemmEpilogue::kPartialF32);
}

// Checks of gemm.h's requirements that need no device and no CUTLASS type; nullptr when all hold. Without
// `pointers`, only the shapes and strides (what the workspace size depends on).
const char* check_arguments(const GemmParams& p, bool pointers = true) {
  if (!valid_enums(p)) return "gemm: dtype must be bfloat16 or float16 and epilogue one of GemmEpilogue";
  if (p.dtype == DType::kFP16 && !gemm_has_fp16()) return "gemm: this build has no float16 kernels (TTF_ENGINE_NO_FP16)";
  if (p.M < 1 || p.N < 1 || p.K < 1) return "gemm: M, N and K must be >= 1";
  if (p.splits < 1) return "gemm: splits must be >= 1";
  if (p.epilogue != GemmEpilogue::kPartialF32 && p.splits != 1) return "gemm: splits must be 1 unless kPartialF32";
  if (p.K % p.splits != 0) return "gemm: K must be a multiple of splits";
  if ((p.K / p.splits) % 8 != 0) return "gemm: K / splits must be a multiple of 8 (TMA: 16-byte rows)";
  if (p.N % 8 != 0) return "gemm: N must be a multiple of 8";
  if (p.lda % 8 != 0 || p.ldb % 8 != 0 || p.ldd % 8 != 0) return "gemm: lda, ldb and ldd must be multiples of 8";
  if (p.lda < p.K || p.ldb < p.K) return "gemm: lda and ldb must be >= K";
  if (p.ldd < p.N) return "gemm: ldd must be >= N";
  if (!pointers) return nullptr;
  if (p.A == nullptr || p.B == nullptr || p.D == nullptr) return "gemm: A, B and D must be non-null";
  if (!aligned16(p.A) || !aligned16(p.B) || !aligned16(p.D)) return "gemm: A, B and D must be 16-byte aligned";
  if (p.epilogue != GemmEpilogue::kPartialF32) {
    if (p.bias == nullptr) return "gemm: bias must be non-null for kBias and kBiasGelu";
    if (!aligned16(p.bias)) return "gemm: bias must be 16-byte aligned";
  }
  // The largest strides of the TMA descriptors: rows, the split slab of D, and A/B's unused batch stride at L = 1.
  const int64_t d_size = p.epilogue == GemmEpilogue::kPartialF32 ? 4 : 2;
  if (int64_t(p.M) * p.lda * 2 >= kMaxStrideBytes || int64_t(p.N) * p.ldb * 2 >= kMaxStrideBytes ||
      int64_t(p.M) * p.ldd * d_size >= kMaxStrideBytes)
    return "gemm: operands exceed TMA's 2^40-byte stride limit";
  return nullptr;
}

// SM count and compute capability of the current device, looked up once per device (no synchronisation; safe
// while a stream is being captured).
struct DeviceFacts {
  DeviceInfo info;
  int cc = 0;  // 10·major + minor
};

cudaError_t device_facts(DeviceFacts* out) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];  // (cc << 16) | sm_count, 0 = not looked up yet
  int packed = device < kMaxDevices ? cache[device].load(std::memory_order_relaxed) : 0;
  if (packed == 0) {
    int sms = 0, major = 0, minor = 0;
    if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess) return err;
    if ((err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device)) != cudaSuccess) return err;
    if ((err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device)) != cudaSuccess) return err;
    packed = ((10 * major + minor) << 16) | (sms & 0xffff);
    if (device < kMaxDevices) cache[device].store(packed, std::memory_order_relaxed);
  }
  out->info.device = device;
  out->info.sm_count = packed & 0xffff;
  out->cc = packed >> 16;
  return cudaSuccess;
}

// Device facts for the checks: the current device's when there is one, else an H100-like default (the tile choice
// only changes which can_implement is asked; both tiles have the same alignment rules).
DeviceInfo device_for_checks() {
  DeviceFacts facts;
  if (device_facts(&facts) == cudaSuccess) return facts.info;
  (void)cudaGetLastError();  // no device: not an error of the caller's stream
  DeviceInfo fallback;
  fallback.sm_count = kDefaultSmCount;
  return fallback;
}

GemmTile choose_tile(const GemmParams& p, int sm_count) {
  const int64_t small_tiles = cdiv(p.M, 64) * cdiv(p.N, 128) * effective_splits(p);
  return small_tiles <= sm_count ? GemmTile::k64x128 : GemmTile::k128x128;
}

struct GemmEntry {
  const char* (*can_implement)(const GemmParams&, const DeviceInfo&);
  size_t (*workspace_bytes)(const GemmParams&, const DeviceInfo&);
  cudaError_t (*run)(const GemmParams&, const DeviceInfo&);
};

template <DType kDType, GemmEpilogue kEpilogue, GemmTile kTile>
constexpr GemmEntry entry() {
  using G = sm90::Sm90Gemm<kDType, kEpilogue, kTile>;
  return {&G::can_implement, &G::workspace_bytes, &G::run};
}

template <DType kDType, GemmEpilogue kEpilogue>
constexpr GemmEntry entry(GemmTile tile) {
  return tile == GemmTile::k128x128 ? entry<kDType, kEpilogue, GemmTile::k128x128>()
                                    : entry<kDType, kEpilogue, GemmTile::k64x128>();
}

template <DType kDType>
GemmEntry entry(GemmEpilogue epilogue, GemmTile tile) {
  switch (epilogue) {
    case GemmEpilogue::kBias: return entry<kDType, GemmEpilogue::kBias>(tile);
    case GemmEpilogue::kBiasGelu: return entry<kDType, GemmEpilogue::kBiasGelu>(tile);
    default: return entry<kDType, GemmEpilogue::kPartialF32>(tile);
  }
}

// Only after check_arguments(p).
GemmEntry select(const GemmParams& p, const DeviceInfo& device) {
  const GemmTile tile = choose_tile(p, device.sm_count);
#ifdef TTF_ENGINE_NO_FP16
  return entry<DType::kBF16>(p.epilogue, tile);
#else
  return p.dtype == DType::kBF16 ? entry<DType::kBF16>(p.epilogue, tile) : entry<DType::kFP16>(p.epilogue, tile);
#endif
}

}  // namespace

bool gemm_has_fp16() {
#ifdef TTF_ENGINE_NO_FP16
  return false;
#else
  return true;
#endif
}

const char* gemm_check(const GemmParams& params) {
  if (const char* message = check_arguments(params)) return message;
  const DeviceInfo device = device_for_checks();
  const GemmEntry e = select(params, device);
  const size_t needed = e.workspace_bytes(params, device);
  if (needed > 0 && (params.workspace == nullptr || !aligned16(params.workspace)))
    return "gemm: workspace must be non-null and 16-byte aligned (gemm_workspace_bytes > 0)";
  if (needed > params.workspace_bytes) return "gemm: workspace_bytes is smaller than gemm_workspace_bytes(params)";
  return e.can_implement(params, device);
}

size_t gemm_workspace_bytes(const GemmParams& params) {
  if (check_arguments(params, /*pointers=*/false) != nullptr) return 0;
  const DeviceInfo device = device_for_checks();
  return select(params, device).workspace_bytes(params, device);
}

cudaError_t gemm(const GemmParams& params) {
  if (!sm90::built_for_sm90()) return cudaErrorNotSupported;  // the build has no sm_90a kernels at all
  if (gemm_check(params) != nullptr) return cudaErrorInvalidValue;
  DeviceFacts facts;
  if (const cudaError_t err = device_facts(&facts); err != cudaSuccess) return err;
  // The kernels are sm_90a code (wgmma, setmaxnreg, TMA); Hopper is compute capability 9.0 only.
  if (facts.cc != 90) return cudaErrorNotSupported;
  return select(params, facts.info).run(params, facts.info);
}

}  // namespace ttf::engine
