// Row-wise kernels of the engine (interfaces and semantics in rowwise.h).
//
// Rows are short (D = 384 for ViT-S, 768 for ViT-B) and few at batch 1-8 (197·B), so one warp owns a row and
// passes over it several times from L1/L2 instead of holding it in registers: any width works, and the LayerNorm
// statistics are two-pass (mean, then Σ(x − mean)²) over the values as stored, so the consumer GEMM normalises
// exactly what the residual stream holds. Floors (ViT-S, batch 1): a residual_ln pass reads the fp32 partials
// (splits·197·384·4 B, 0.3-4.8 MB, L2-resident: written by the GEMM just before) and writes 2·197·384·2 B.
#include "rowwise.h"

#include <algorithm>

namespace ttf::engine {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kRowThreads = 32 * kWarpsPerBlock;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return to_float<T>(from_float<T>(v));
}

// Two-pass mean and 1/sqrt(var + eps) of value(0..n), over one warp (value is evaluated twice per column).
template <typename Value>
__device__ __forceinline__ void warp_stats(Value value, int n, float eps, int lane, float& mean, float& rstd) {
  float s = 0.f;
  for (int j = lane; j < n; j += 32) s += value(j);
  mean = warp_sum(s) / n;
  float q = 0.f;
  for (int j = lane; j < n; j += 32) {
    const float d = value(j) - mean;
    q += d * d;
  }
  rstd = 1.0f / sqrtf(warp_sum(q) / n + eps);
}

// The same over a stored row (run dtype): the statistics of exactly what the next consumer reads.
template <typename T>
__device__ __forceinline__ void row_stats(const T* row, int n, float eps, int lane, float& mean, float& rstd) {
  warp_stats([&](int j) { return to_float<T>(row[j]); }, n, eps, lane, mean, rstd);
}

// Row kernels: each warp owns one row; -1 past the end.
__device__ __forceinline__ int64_t warp_row(int64_t rows) {
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  return r < rows ? r : -1;
}

__device__ __forceinline__ void prefetch_both(const Prefetch& p) {
  prefetch_l2_share(p.ptr[0], p.bytes[0]);
  prefetch_l2_share(p.ptr[1], p.bytes[1]);
}

// ---------------------------------------------------------------------------------------------------------------
template <typename T>
__global__ void im2col_kernel(const Im2colParams p, int64_t total) {
  grid_dependency_wait();
  grid_dependents_launch();
  const T* img = static_cast<const T*>(p.images);
  T* out = static_cast<T*>(p.out);
  const int s = p.hmlp ? 4 : p.patch;                    // pixels per side of one row's (sub-)patch
  const int gw = p.W / p.patch, gh = p.H / p.patch;
  const int64_t per_image = int64_t(gh) * gw * (p.hmlp ? 16 : 1);
  const int real_cols = p.C * s * s;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / p.cols;
    const int col = static_cast<int>(idx % p.cols);
    T v = from_float<T>(0.f);
    if (col < real_cols) {
      const int c = col / (s * s), r = col % (s * s), ky = r / s, kx = r % s;
      const int64_t b = row / per_image, within = row % per_image;
      int y0, x0;
      if (p.hmlp) {
        const int patch = static_cast<int>(within / 16), sub = static_cast<int>(within % 16);
        const int g = sub / 4, q = sub % 4;
        y0 = (patch / gw) * 16 + (g / 2) * 8 + (q / 2) * 4;
        x0 = (patch % gw) * 16 + (g % 2) * 8 + (q % 2) * 4;
      } else {
        y0 = static_cast<int>(within / gw) * p.patch;
        x0 = static_cast<int>(within % gw) * p.patch;
      }
      v = img[b * p.stride_b + c * p.stride_c + (y0 + ky) * p.stride_h + (x0 + kx) * p.stride_w];
    }
    out[idx] = v;
  }
}

// ---------------------------------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kRowThreads) embed_finish_kernel(const EmbedFinishParams p) {
  prefetch_both(p.prefetch);
  grid_dependency_wait();
  grid_dependents_launch();
  const int lane = threadIdx.x % 32;
  const int64_t r = warp_row(int64_t(p.B) * p.N);
  if (r < 0) return;
  const int D = p.D, Np = p.N - p.P;
  const int64_t b = r / p.N;
  const int t = static_cast<int>(r % p.N);
  T* xrow = static_cast<T*>(p.x) + r * D;
  if (t < p.P) {
    const T* src = static_cast<const T*>(p.prefix) + int64_t(t) * D;
    for (int j = lane; j < D; j += 32) xrow[j] = src[j];
  } else {
    const int64_t m = b * Np + (t - p.P);
    const int64_t split_stride = int64_t(p.B) * Np * D;
    const T* bias = static_cast<const T*>(p.bias);
    auto value = [&](int j) {
      float u = to_float<T>(bias[j]);
      for (int s = 0; s < p.splits; ++s) u += p.partial[s * split_stride + m * D + j];
      return u;
    };
    float mean = 0.f, rstd = 1.f;
    if (p.ln_w != nullptr) warp_stats(value, D, p.ln_eps, lane, mean, rstd);   // the hMLP-LN stem's last norm,
                                                                                // on the unrounded stage-3 output
    const T* pos = static_cast<const T*>(p.pos) + int64_t(t - p.P) * D;
    const T* ln_w = static_cast<const T*>(p.ln_w);
    const T* ln_b = static_cast<const T*>(p.ln_b);
    for (int j = lane; j < D; j += 32) {
      float u = value(j);
      if (ln_w != nullptr) u = (u - mean) * rstd * to_float<T>(ln_w[j]) + to_float<T>(ln_b[j]);
      xrow[j] = from_float<T>(u + to_float<T>(pos[j]));
    }
  }
  if (p.pre_w != nullptr) {   // norm_pre over the stored row (prefix rows included), rounded again
    float mean, rstd;
    row_stats(xrow, D, p.eps, lane, mean, rstd);
    const T* w = static_cast<const T*>(p.pre_w);
    const T* bb = static_cast<const T*>(p.pre_b);
    for (int j = lane; j < D; j += 32)
      xrow[j] = from_float<T>((to_float<T>(xrow[j]) - mean) * rstd * to_float<T>(w[j]) + to_float<T>(bb[j]));
  }
  if (p.xn != nullptr) {
    float mean, rstd;
    row_stats(xrow, D, p.eps, lane, mean, rstd);
    T* xn = static_cast<T*>(p.xn) + r * D;
    for (int j = lane; j < D; j += 32) xn[j] = from_float<T>((to_float<T>(xrow[j]) - mean) * rstd);
  }
}

// ---------------------------------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kRowThreads) bias_ln_gelu_kernel(const BiasLnGeluParams p) {
  grid_dependency_wait();
  grid_dependents_launch();
  const int lane = threadIdx.x % 32;
  const int64_t r = warp_row(p.rows);
  if (r < 0) return;
  const int n = p.cols;
  const float* in = p.partial + r * n;
  const T* bias = static_cast<const T*>(p.bias);
  auto value = [&](int j) { return in[j] + to_float<T>(bias[j]); };
  float mean, rstd;
  warp_stats(value, n, p.eps, lane, mean, rstd);
  const T* w = static_cast<const T*>(p.ln_w);
  const T* b = static_cast<const T*>(p.ln_b);
  T* out = static_cast<T*>(p.out) + r * n;
  for (int j = lane; j < n; j += 32)
    out[j] = from_float<T>(gelu_erf((value(j) - mean) * rstd * to_float<T>(w[j]) + to_float<T>(b[j])));
}

// ---------------------------------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kRowThreads) residual_ln_kernel(const ResidualLnParams p) {
  prefetch_both(p.prefetch);
  grid_dependency_wait();
  grid_dependents_launch();
  const int lane = threadIdx.x % 32;
  const int64_t r = warp_row(p.rows);
  if (r < 0) return;
  const int n = p.cols;
  const int64_t split_stride = int64_t(p.rows) * n;
  const T* bias = static_cast<const T*>(p.bias);
  T* xrow = static_cast<T*>(p.x) + r * n;
  float s1 = 0.f;
  for (int j = lane; j < n; j += 32) {
    float v = to_float<T>(xrow[j]) + to_float<T>(bias[j]);
    for (int s = 0; s < p.splits; ++s) v += p.partial[s * split_stride + r * n + j];
    const T stored = from_float<T>(v);
    xrow[j] = stored;
    s1 += to_float<T>(stored);
  }
  const float mean = warp_sum(s1) / n;   // the first pass summed the stored values on the way
  float s2 = 0.f;
  for (int j = lane; j < n; j += 32) {
    const float d = to_float<T>(xrow[j]) - mean;
    s2 += d * d;
  }
  const float rstd = 1.0f / sqrtf(warp_sum(s2) / n + p.eps);
  T* xn = static_cast<T*>(p.xn) + r * n;
  for (int j = lane; j < n; j += 32) xn[j] = from_float<T>((to_float<T>(xrow[j]) - mean) * rstd);
}

// ---------------------------------------------------------------------------------------------------------------
constexpr int kHeadThreads = 256;

__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();   // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kHeadThreads / 32; ++w) total += scratch[w];
  return total;
}

// One CTA per sample. Dynamic shared memory: D floats (the pooled row before its LayerNorm).
template <typename T>
__global__ void __launch_bounds__(kHeadThreads) head_features_kernel(const HeadFeaturesParams p) {
  extern __shared__ float pooled[];
  __shared__ float scratch[kHeadThreads / 32];
  prefetch_both(p.prefetch);
  grid_dependency_wait();
  grid_dependents_launch();
  const int64_t b = blockIdx.x;
  const int D = p.D, Np = p.N - p.P;
  T* out = static_cast<T*>(p.out) + b * int64_t(p.T) * D;
  if (p.pool == 0) {
    const T* src = static_cast<const T*>(p.norm == 0 ? p.x : p.xn) + b * int64_t(p.N) * D;
    for (int j = threadIdx.x; j < p.T * D; j += blockDim.x) out[j] = src[j];   // rows 0..T-1 are contiguous
    return;
  }
  const T* src = static_cast<const T*>(p.norm == 2 ? p.xn : p.x) + (b * p.N + p.P) * int64_t(D);
  float s1 = 0.f;
  for (int j = threadIdx.x; j < D; j += blockDim.x) {
    float acc = 0.f;
    for (int i = 0; i < Np; ++i) acc += to_float<T>(src[int64_t(i) * D + j]);
    pooled[j] = acc / Np;
    s1 += pooled[j];
  }
  if (p.norm != 1) {
    for (int j = threadIdx.x; j < D; j += blockDim.x) out[j] = from_float<T>(pooled[j]);
    return;
  }
  const float mean = block_sum(s1, scratch) / D;
  float s2 = 0.f;
  for (int j = threadIdx.x; j < D; j += blockDim.x) {
    const float d = pooled[j] - mean;
    s2 += d * d;
  }
  const float rstd = 1.0f / sqrtf(block_sum(s2, scratch) / D + p.eps);
  for (int j = threadIdx.x; j < D; j += blockDim.x) out[j] = from_float<T>((pooled[j] - mean) * rstd);
}

template <template <typename> class Launch, typename Params>
cudaError_t dispatch(const Params& p) {
  return p.dtype == DType::kBF16 ? Launch<__nv_bfloat16>::run(p) : Launch<__half>::run(p);
}

unsigned row_blocks(int64_t rows) { return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock); }

template <typename T> struct Im2colLaunch {
  static cudaError_t run(const Im2colParams& p) {
    const int64_t rows = int64_t(p.B) * (p.H / p.patch) * (p.W / p.patch) * (p.hmlp ? 16 : 1);
    const int64_t total = rows * p.cols;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 65535 * 8));
    return launch_kernel(im2col_kernel<T>, dim3(blocks), dim3(256), 0, p.stream, p.pdl, p, total);
  }
};
template <typename T> struct EmbedFinishLaunch {
  static cudaError_t run(const EmbedFinishParams& p) {
    return launch_kernel(embed_finish_kernel<T>, dim3(row_blocks(int64_t(p.B) * p.N)), dim3(kRowThreads), 0,
                         p.stream, p.pdl, p);
  }
};
template <typename T> struct BiasLnGeluLaunch {
  static cudaError_t run(const BiasLnGeluParams& p) {
    return launch_kernel(bias_ln_gelu_kernel<T>, dim3(row_blocks(p.rows)), dim3(kRowThreads), 0, p.stream, p.pdl,
                         p);
  }
};
template <typename T> struct ResidualLnLaunch {
  static cudaError_t run(const ResidualLnParams& p) {
    return launch_kernel(residual_ln_kernel<T>, dim3(row_blocks(p.rows)), dim3(kRowThreads), 0, p.stream, p.pdl,
                         p);
  }
};
template <typename T> struct HeadFeaturesLaunch {
  static cudaError_t run(const HeadFeaturesParams& p) {
    return launch_kernel(head_features_kernel<T>, dim3(p.B), dim3(kHeadThreads), size_t(p.D) * sizeof(float),
                         p.stream, p.pdl, p);
  }
};

}  // namespace

cudaError_t im2col(const Im2colParams& p) {
  if (p.B < 1 || p.patch < 1 || p.H % p.patch || p.W % p.patch || (p.hmlp && p.patch != 16) || p.cols % 8 ||
      p.cols < p.C * (p.hmlp ? 16 : p.patch * p.patch) || !p.images || !p.out)
    return cudaErrorInvalidValue;
  return dispatch<Im2colLaunch>(p);
}

cudaError_t embed_finish(const EmbedFinishParams& p) {
  if (p.B < 1 || p.N <= p.P || p.P < 0 || p.D < 1 || p.splits < 1 || !p.partial || !p.bias || !p.pos || !p.x ||
      (p.P > 0 && !p.prefix) || ((p.ln_w == nullptr) != (p.ln_b == nullptr)) ||
      ((p.pre_w == nullptr) != (p.pre_b == nullptr)))
    return cudaErrorInvalidValue;
  return dispatch<EmbedFinishLaunch>(p);
}

cudaError_t bias_ln_gelu(const BiasLnGeluParams& p) {
  if (p.rows < 1 || p.cols < 1 || !p.partial || !p.bias || !p.ln_w || !p.ln_b || !p.out) return cudaErrorInvalidValue;
  return dispatch<BiasLnGeluLaunch>(p);
}

cudaError_t residual_ln(const ResidualLnParams& p) {
  if (p.rows < 1 || p.cols < 1 || p.splits < 1 || !p.partial || !p.bias || !p.x || !p.xn) return cudaErrorInvalidValue;
  return dispatch<ResidualLnLaunch>(p);
}

cudaError_t head_features(const HeadFeaturesParams& p) {
  if (p.B < 1 || p.D < 1 || p.N <= p.P || (p.T != 1 && p.T != 2) || p.pool < 0 || p.pool > 1 || p.norm < 0 ||
      p.norm > 2 || (p.pool == 0 && p.P < p.T) || !p.x || !p.xn || !p.out || size_t(p.D) * sizeof(float) > 48 * 1024)
    return cudaErrorInvalidValue;
  return dispatch<HeadFeaturesLaunch>(p);
}

}  // namespace ttf::engine
