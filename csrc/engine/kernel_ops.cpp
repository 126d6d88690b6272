// Single-kernel ops for the GPU tests (CUDA build only): each engine kernel alone on caller tensors, so a wrong
// result on the GPU points at one kernel before the whole forward is looked at. Outputs are NaN-poisoned before
// the kernel runs, so an element it forgets to write fails the comparison.
//
//   engine_gemm(a (M, K), w (N, K), bias (N,)?, epilogue 0 bias | 1 bias+gelu | 2 fp32 partials, splits)
//       -> (M, N) run dtype, or (splits, M, N) float32 for the partials
//   engine_attention(qkv (B, N, 3·heads·head_dim), heads, head_dim) -> (B, N, heads·head_dim)
#ifdef TTF_WITH_CUDA
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "attention.h"
#include "gemm.h"

namespace ttf::engine {
namespace {

DType dtype_of(const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf, "engine kernels take bfloat16 or "
              "float16, got ", t.scalar_type());
  return t.scalar_type() == at::kBFloat16 ? DType::kBF16 : DType::kFP16;
}

at::Tensor engine_gemm(const at::Tensor& a, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                       int64_t epilogue, int64_t splits) {
  TORCH_CHECK(a.is_cuda() && w.is_cuda() && a.dim() == 2 && w.dim() == 2 && a.size(1) == w.size(1) &&
                  a.is_contiguous() && w.is_contiguous() && a.scalar_type() == w.scalar_type(),
              "engine_gemm: a (M, K) and w (N, K), contiguous CUDA tensors of one dtype");
  TORCH_CHECK(epilogue >= 0 && epilogue <= 2, "engine_gemm: epilogue 0, 1 or 2");
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t M = a.size(0), N = w.size(0), K = a.size(1);
  const bool partial = epilogue == 2;
  at::Tensor out = partial ? at::full({splits, M, N}, std::numeric_limits<float>::quiet_NaN(),
                                      a.options().dtype(at::kFloat))
                           : at::full({M, N}, std::numeric_limits<float>::quiet_NaN(), a.options());
  GemmParams g;
  g.dtype = dtype_of(a);
  g.epilogue = static_cast<GemmEpilogue>(epilogue);
  g.M = static_cast<int>(M);
  g.N = static_cast<int>(N);
  g.K = static_cast<int>(K);
  g.splits = static_cast<int>(partial ? splits : 1);
  g.A = a.data_ptr();
  g.lda = K;
  g.B = w.data_ptr();
  g.ldb = K;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->is_contiguous() && bias->numel() == N && bias->scalar_type() == a.scalar_type(),
                "engine_gemm: bias (N,) of the run dtype");
    g.bias = bias->data_ptr();
  }
  g.D = out.data_ptr();
  g.ldd = N;
  g.stream = at::cuda::getCurrentCUDAStream().stream();
  g.pdl = true;
  const size_t ws_bytes = gemm_workspace_bytes(g);
  at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes) + 16}, a.options().dtype(at::kByte));
  g.workspace = ws_bytes ? ws.data_ptr() : nullptr;
  g.workspace_bytes = ws_bytes;
  const char* problem = gemm_check(g);
  TORCH_CHECK(problem == nullptr, "engine_gemm: ", problem);
  const cudaError_t status = gemm(g);
  TORCH_CHECK(status == cudaSuccess, "engine_gemm: launch failed: ", cudaGetErrorString(status));
  return out;
}

at::Tensor engine_attention(const at::Tensor& qkv, int64_t heads, int64_t head_dim) {
  TORCH_CHECK(qkv.is_cuda() && qkv.dim() == 3 && qkv.is_contiguous() && qkv.size(2) == 3 * heads * head_dim,
              "engine_attention: qkv (B, N, 3·heads·head_dim), contiguous CUDA");
  const c10::cuda::CUDAGuard guard(qkv.device());
  at::Tensor out = at::full({qkv.size(0), qkv.size(1), heads * head_dim}, std::numeric_limits<float>::quiet_NaN(),
                            qkv.options());
  AttentionParams p;
  p.dtype = dtype_of(qkv);
  p.B = static_cast<int>(qkv.size(0));
  p.N = static_cast<int>(qkv.size(1));
  p.heads = static_cast<int>(heads);
  p.head_dim = static_cast<int>(head_dim);
  p.qkv = qkv.data_ptr();
  p.out = out.data_ptr();
  p.stream = at::cuda::getCurrentCUDAStream().stream();
  p.pdl = true;
  const char* problem = attention_check(p);
  TORCH_CHECK(problem == nullptr, "engine_attention: ", problem);
  const cudaError_t status = attention(p);
  TORCH_CHECK(status == cudaSuccess, "engine_attention: launch failed: ", cudaGetErrorString(status));
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ttf, m) {
  m.def("engine_gemm(Tensor a, Tensor w, Tensor? bias, int epilogue, int splits) -> Tensor");
  m.def("engine_attention(Tensor qkv, int heads, int head_dim) -> Tensor");
}

TORCH_LIBRARY_IMPL(ttf, CUDA, m) {
  m.impl("engine_gemm", &engine_gemm);
  m.impl("engine_attention", &engine_attention);
}

}  // namespace ttf::engine
#endif  // TTF_WITH_CUDA
