// The engine's row-wise kernels: everything between the GEMMs and the attention that needs whole rows (LayerNorm
// statistics, pooling) or gathers pixels (im2col). Memory-bound and small at batch 1-8: a ViT-S row is 384 values.
// Each owns whole rows, one warp per row, and computes LayerNorm statistics in two passes over the stored row
// (exact: no E[x²] − E[x]² cancellation on residual streams with large channels).
//
// All follow the PDL contract of common.cuh: they prefetch the next GEMM's weights into L2 (`prefetch`), then wait.
#pragma once

#include "common.cuh"

namespace ttf::engine {

// Up to two weight ranges a row kernel prefetches into L2 for the GEMMs that follow it.
struct Prefetch {
  const void* ptr[2] = {nullptr, nullptr};
  size_t bytes[2] = {0, 0};
};

// im2col of the stem. Linear stem: row (b, py, px), columns (c, ky, kx) of the p×p patch. hMLP stem: row
// (b, py, px, gy, gx, qy, qx), the 4×4 sub-patch at pixel (16py + 8gy + 4qy, 16px + 8gx + 4qx), columns (c, ky, kx).
// Columns beyond C·s·s are zero (the padded K of the GEMM).
struct Im2colParams {
  DType dtype = DType::kBF16;
  const void* images = nullptr;          // (B, C, H, W) in the run dtype, any strides (elements)
  int64_t stride_b = 0, stride_c = 0, stride_h = 0, stride_w = 0;
  int B = 0, C = 0, H = 0, W = 0;
  int patch = 16;
  bool hmlp = false;
  int cols = 0;                          // padded columns (multiple of 8)
  void* out = nullptr;                   // (rows, cols)
  cudaStream_t stream = nullptr;
  bool pdl = true;
};

// End of the stem: for every sample, rows [prefix (P rows); Σ_s partial[s] + bias (then LN_affine when ln_w is set:
// the hMLP-LN stem's last norm) + pos (Np rows)], rounded; then norm_pre (LN with affine) when pre_w is set; then
// x̂ = LN(x) without affine.
struct EmbedFinishParams {
  DType dtype = DType::kBF16;
  int B = 0, N = 0, P = 0, D = 0;        // Np = N − P
  const float* partial = nullptr;        // (splits, B·Np, D)
  int splits = 1;
  const void* bias = nullptr;            // (D,)
  const void* pos = nullptr;             // (Np, D)
  const void* prefix = nullptr;          // (P, D), may be null when P = 0
  const void* ln_w = nullptr;            // (D,) hMLP-LN stage-3 norm, or null
  const void* ln_b = nullptr;
  float ln_eps = 1e-6f;
  const void* pre_w = nullptr;           // (D,) norm_pre, or null
  const void* pre_b = nullptr;
  float eps = 1e-6f;
  void* x = nullptr;                     // (B·N, D)
  void* xn = nullptr;                    // (B·N, D), or null (embedding only)
  Prefetch prefetch;
  cudaStream_t stream = nullptr;
  bool pdl = true;
};

// hMLP-LN stages 1 and 2: out = gelu(LN_affine(partial + bias)) over rows of `cols` channels.
struct BiasLnGeluParams {
  DType dtype = DType::kBF16;
  int rows = 0, cols = 0;
  const float* partial = nullptr;        // (rows, cols), one split
  const void* bias = nullptr;
  const void* ln_w = nullptr;
  const void* ln_b = nullptr;
  float eps = 1e-6f;
  void* out = nullptr;
  cudaStream_t stream = nullptr;
  bool pdl = true;
};

// The residual GEMMs' epilogue: x += Σ_s partial[s] + bias (rounded once), then x̂ = LN(x) without affine.
struct ResidualLnParams {
  DType dtype = DType::kBF16;
  int rows = 0, cols = 0;
  const float* partial = nullptr;        // (splits, rows, cols)
  int splits = 1;
  const void* bias = nullptr;            // (cols,)
  void* x = nullptr;                     // (rows, cols), updated in place
  void* xn = nullptr;                    // (rows, cols)
  float eps = 1e-6f;
  Prefetch prefetch;
  cudaStream_t stream = nullptr;
  bool pdl = true;
};

// The head's input per sample. pool 0 (token): the first T rows, of x̂ (norm 1) or x (norm 0), concatenated.
// pool 1 (avg): the mean of the Np patch rows of x, then LN (norm 1); of x (norm 0); of x̂ (norm 2).
struct HeadFeaturesParams {
  DType dtype = DType::kBF16;
  int B = 0, N = 0, P = 0, D = 0, T = 1;
  int pool = 0, norm = 1;
  const void* x = nullptr;
  const void* xn = nullptr;
  float eps = 1e-6f;
  void* out = nullptr;                   // (B, T·D)
  Prefetch prefetch;
  cudaStream_t stream = nullptr;
  bool pdl = true;
};

cudaError_t im2col(const Im2colParams& p);
cudaError_t embed_finish(const EmbedFinishParams& p);
cudaError_t bias_ln_gelu(const BiasLnGeluParams& p);
cudaError_t residual_ln(const ResidualLnParams& p);
cudaError_t head_features(const HeadFeaturesParams& p);

}  // namespace ttf::engine
