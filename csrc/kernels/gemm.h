// The engine's GEMMs: D = epilogue(A · Bᵀ), A (M, K) activations, B (N, K) weights (the layout nn.Linear stores),
// both row-major; fp32 accumulation. sm_90a: CUTLASS 3.x warp-specialized TMA + WGMMA kernels (gemm_sm90.cu,
// configuration in cutlass_config.h).
//
// Epilogues:
//   kBias        D = (A·Bᵀ + bias)                      (M, N) in the run dtype
//   kBiasGelu    D = gelu_erf(A·Bᵀ + bias)              (M, N) in the run dtype
//   kPartialF32  D[s] = A[:, Ks] · B[:, Ks]ᵀ             (splits, M, N) float32, Ks = s-th of `splits` equal K chunks
//                (split-K: a row-wise kernel sums the splits and applies bias / residual / LayerNorm; used where
//                 the M·N tiles alone cannot fill the GPU, e.g. the out-projection and fc2 at batch 1-8)
//
// Requirements (TMA: 16-byte aligned bases and strides): K / splits, lda, ldb, ldd multiples of 8 elements; N a
// multiple of 8; all pointers 16-byte aligned. `gemm_check` says which one fails. M may be anything >= 1.
//
// PDL: the kernels are built with CUTLASS_ENABLE_GDC_FOR_SM90 and launched with programmatic stream serialization
// when params.pdl is true, so they follow the contract in common.cuh.
#pragma once

#include "common.cuh"

namespace ttf::engine {

enum class GemmEpilogue : int { kBias = 0, kBiasGelu = 1, kPartialF32 = 2 };

struct GemmParams {
  DType dtype = DType::kBF16;                 // of A, B, bias and (except kPartialF32) D
  GemmEpilogue epilogue = GemmEpilogue::kBias;
  int M = 0, N = 0, K = 0;
  int splits = 1;                             // kPartialF32 only; 1 otherwise
  const void* A = nullptr; int64_t lda = 0;   // (M, K)
  const void* B = nullptr; int64_t ldb = 0;   // (N, K)
  const void* bias = nullptr;                 // (N,), kBias / kBiasGelu
  void* D = nullptr; int64_t ldd = 0;         // (M, N); kPartialF32: float (splits, M, ldd), split stride M * ldd
  void* workspace = nullptr;                  // gemm_workspace_bytes(params) bytes, 16-byte aligned (may be 0)
  size_t workspace_bytes = 0;                 // size of `workspace`
  cudaStream_t stream = nullptr;
  bool pdl = true;
};

// nullptr when the arguments are supported, else a static message naming the failed requirement.
const char* gemm_check(const GemmParams& params);

// Device workspace the CUTLASS kernel needs for these arguments (0 for the data-parallel schedules). Reads only the
// shapes, strides, dtype and epilogue: pointers may still be null.
size_t gemm_workspace_bytes(const GemmParams& params);

// Whether this build holds the float16 kernels (a build may leave them out to save compile time: TTF_ENGINE_NO_FP16;
// bf16 and fp16 kernels are the same templates).
bool gemm_has_fp16();

// Launch on params.stream. Returns cudaErrorInvalidValue when gemm_check fails, else the launch status.
cudaError_t gemm(const GemmParams& params);

}  // namespace ttf::engine
