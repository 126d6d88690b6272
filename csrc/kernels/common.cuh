// Shared pieces of the engine's CUDA kernels: element types, programmatic dependent launch (PDL), L2 prefetch.
//
// PDL contract, kept by every kernel of the engine (CUTLASS GEMMs keep it through CUTLASS_ENABLE_GDC_FOR_SM90):
//   1. Before `grid_dependency_wait()` a kernel may only read memory that no kernel of the forward writes (weights,
//      biases, position rows): typically an L2 prefetch of its own or of the next GEMM's weights.
//   2. Every CTA calls `grid_dependency_wait()` before it reads an activation or writes anything. Because every
//      kernel waits, completion is transitive: when kernel n+1 returns from its wait, kernels 0..n are complete.
//   3. `grid_dependents_launch()` only lets the next kernel be scheduled early; it says nothing about visibility.
// Without the launch attribute (pdl = false) the two instructions are no-ops and the stream orders kernels as usual.
#pragma once

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>

namespace ttf {

// Element type of activations and weights on the GPU. The engine runs bf16 or fp16 (fp32 accumulation everywhere).
enum class DType : int { kBF16 = 0, kFP16 = 1 };

inline const char* dtype_name(DType t) { return t == DType::kBF16 ? "bfloat16" : "float16"; }

// ---------------------------------------------------------------------------------------------------------------
// Device side
// ---------------------------------------------------------------------------------------------------------------
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void grid_dependents_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Prefetch this CTA's share of [ptr, ptr + bytes) into L2 with bulk prefetches of at most 64 KiB each, issued by one
// thread. `ptr` must be 16-byte aligned; the tail that is not a multiple of 16 bytes is left out (it is tiny).
// Used before grid_dependency_wait(): weights never change during a forward, so reading them early is safe, and the
// GEMM that consumes them then streams from L2 while the previous kernel finishes.
__device__ __forceinline__ void prefetch_l2_share(const void* ptr, size_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (ptr == nullptr || bytes < 16 || threadIdx.x != 0 || threadIdx.y != 0 || threadIdx.z != 0) return;
  const size_t ctas = size_t(gridDim.x) * gridDim.y * gridDim.z;
  const size_t cta = blockIdx.x + size_t(gridDim.x) * (blockIdx.y + size_t(gridDim.y) * blockIdx.z);
  const size_t units = bytes / 16;                        // 16-byte units
  const size_t per_cta = (units + ctas - 1) / ctas;
  size_t begin = cta * per_cta, end = begin + per_cta;
  if (end > units) end = units;
  const char* base = static_cast<const char*>(ptr);
  constexpr size_t kChunk = 65536 / 16;                   // units per prefetch instruction
  for (size_t u = begin; u < end; u += kChunk) {
    const size_t n = (end - u < kChunk) ? (end - u) : kChunk;
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(base + u * 16), "r"(uint32_t(n * 16))
                 : "memory");
  }
#endif
}

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half(v); }

// Exact (erf) GELU, as torch.nn.GELU() and the reference model.
__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// ---------------------------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------------------------
// Launch `kernel` on `stream`; with pdl = true it may start while the previous kernel on the stream finishes (the
// kernel then must follow the PDL contract above).
template <typename... KernelArgs, typename... Args>
inline cudaError_t launch_kernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem_bytes,
                                 cudaStream_t stream, bool pdl, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace ttf
