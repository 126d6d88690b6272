// Multi-head self-attention over the packed QKV of all K branches (K·H independent heads), online softmax in fp32.
//
//   qkv (B, N, 3, heads, head_dim)  rows [q of every head | k ... | v ...], q already scaled by head_dim^-0.5
//   out (B, N, heads, head_dim)     o_h = softmax(q_h k_hᵀ) v_h
//
// Any N >= 1 (197, 577, 50, 1 ...); head_dim 32, 64, 80, 96 or 128; bf16 or fp16. FLOPs 4·B·heads·N²·head_dim.
// sm_80+ tensor-core MMAs (mma.sync), built for sm_90a with the rest of the engine.
#pragma once

#include "common.cuh"

namespace ttf::engine {

struct AttentionParams {
  DType dtype = DType::kBF16;
  int B = 0, N = 0, heads = 0, head_dim = 0;
  const void* qkv = nullptr;       // contiguous, 16-byte aligned
  void* out = nullptr;             // contiguous, 16-byte aligned
  // Weights of the next GEMM (the out-projection), prefetched into L2 before griddepcontrol.wait (may be null).
  const void* prefetch = nullptr;
  size_t prefetch_bytes = 0;
  cudaStream_t stream = nullptr;
  bool pdl = true;
};

// nullptr when supported, else a static message.
const char* attention_check(const AttentionParams& params);

cudaError_t attention(const AttentionParams& params);

}  // namespace ttf::engine
