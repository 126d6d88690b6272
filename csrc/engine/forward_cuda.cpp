// The engine's forward on an sm_90 GPU: the schedule of engine.h as a chain of launches on torch's current stream,
// every one with programmatic dependent launch (common.cuh). No host synchronisation and no allocation (the
// workspace comes in), so a whole forward can be captured in a CUDA graph.
//
// Launches: stem 3 (linear) / 5 (hMLP-BN) / 7 (hMLP-LN), then 7 per block, then 2 for the head. S18x2 at batch 1:
// 3 + 18·7 + 2 = 131 launches, all from this one C++ call.
// Compiled only into the CUDA build (TTF_WITH_CUDA); the CPU build has forward_cpu.cpp alone.
#ifdef TTF_WITH_CUDA
#include "engine.h"

#include <ATen/cuda/CUDAContext.h>

#include <mutex>
#include <unordered_map>

#include "attention.h"
#include "gemm.h"
#include "rowwise.h"

namespace ttf::engine {
namespace {

DType kernel_dtype(at::ScalarType t) { return t == at::kBFloat16 ? DType::kBF16 : DType::kFP16; }

void check(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, "ttf::vit_forward: launching ", what, " failed: ", cudaGetErrorString(status));
}

const void* ptr(const at::Tensor& t) { return t.data_ptr(); }
size_t bytes(const at::Tensor& t) { return static_cast<size_t>(t.numel()) * t.element_size(); }

// One GEMM of the schedule: C = A · Wᵀ with the epilogue, checked before launch.
struct GemmCall {
  const Plan& plan;
  uint8_t* workspace;
  cudaStream_t stream;
  DType dtype;

  GemmParams params(GemmEpilogue epilogue, int64_t M, int64_t N, int64_t K, const void* A, const at::Tensor& W,
                    const void* bias, void* D, int64_t ldd, int64_t splits) const {
    GemmParams g;
    g.dtype = dtype;
    g.epilogue = epilogue;
    g.M = static_cast<int>(M);
    g.N = static_cast<int>(N);
    g.K = static_cast<int>(K);
    g.splits = static_cast<int>(splits);
    g.A = A;
    g.lda = K;
    g.B = W.data_ptr();
    g.ldb = K;
    g.bias = bias;
    g.D = D;
    g.ldd = ldd;
    g.workspace = plan.gemm_workspace_bytes ? workspace + plan.gemm_workspace : nullptr;
    g.workspace_bytes = static_cast<size_t>(plan.gemm_workspace_bytes);
    g.stream = stream;
    g.pdl = true;
    return g;
  }

  void run(const char* name, const GemmParams& g) const {
    const char* problem = gemm_check(g);
    TORCH_CHECK(problem == nullptr, "ttf::vit_forward: ", name, " GEMM (M=", g.M, ", N=", g.N, ", K=", g.K,
                ", splits=", g.splits, "): ", problem);
    check(gemm(g), name);
  }

  void bias(const char* name, int64_t M, const void* A, const at::Tensor& W, const at::Tensor& b, void* D,
            bool gelu) const {
    run(name, params(gelu ? GemmEpilogue::kBiasGelu : GemmEpilogue::kBias, M, W.size(0), W.size(1), A, W, b.data_ptr(),
                     D, W.size(0), 1));
  }

  void partial(const char* name, int64_t M, const void* A, const at::Tensor& W, float* D, int64_t splits) const {
    run(name, params(GemmEpilogue::kPartialF32, M, W.size(0), W.size(1), A, W, nullptr, D, W.size(0), splits));
  }
};

Prefetch prefetch_of(const at::Tensor& a, const at::Tensor& b = at::Tensor()) {
  Prefetch p;
  p.ptr[0] = a.data_ptr();
  p.bytes[0] = bytes(a);
  if (b.defined()) {
    p.ptr[1] = b.data_ptr();
    p.bytes[1] = bytes(b);
  }
  return p;
}

// The GEMM shapes of one forward (for the CUTLASS workspace query): (epilogue, M, N, K, splits).
struct Shape {
  GemmEpilogue epilogue;
  int64_t M, N, K, splits;
};

std::vector<Shape> gemm_shapes(const Config& c, const Plan& p) {
  const int64_t B = p.batch, M = p.rows, D = c.width, KD = c.branches * c.width, KF = c.branches * c.hidden;
  const int64_t Np = B * c.patches(), E4 = c.stem_hidden();
  std::vector<Shape> s = {{GemmEpilogue::kBias, M, 3 * KD, D, 1},
                          {GemmEpilogue::kPartialF32, M, D, KD, p.splits.proj},
                          {GemmEpilogue::kBiasGelu, M, KF, D, 1},
                          {GemmEpilogue::kPartialF32, M, D, KF, p.splits.fc2},
                          {GemmEpilogue::kBias, B, c.head_out_padded, c.head_tokens * D, 1}};
  if (c.stem == StemKind::kLinear) {
    s.push_back({GemmEpilogue::kPartialF32, Np, D, c.im2col_cols(), p.splits.stem});
  } else {
    const bool ln = c.stem == StemKind::kHmlpLN;
    s.push_back({ln ? GemmEpilogue::kPartialF32 : GemmEpilogue::kBiasGelu, 16 * Np, E4, c.im2col_cols(), 1});
    s.push_back({ln ? GemmEpilogue::kPartialF32 : GemmEpilogue::kBiasGelu, 4 * Np, E4, 4 * E4, 1});
    s.push_back({GemmEpilogue::kPartialF32, Np, D, 4 * E4, p.splits.stem});
  }
  return s;
}

}  // namespace

int cuda_sm_count(const at::Device& device) {
  static std::mutex lock;
  static std::unordered_map<int, int> counts;
  const int index = device.index() >= 0 ? device.index() : at::cuda::current_device();
  std::lock_guard<std::mutex> guard(lock);
  auto it = counts.find(index);
  if (it == counts.end()) it = counts.emplace(index, at::cuda::getDeviceProperties(index)->multiProcessorCount).first;
  return it->second;
}

int64_t cuda_gemm_workspace_bytes(const Config& c, int64_t batch, at::ScalarType dtype) {
  const Plan p = make_plan(c, batch, dtype, cuda_sm_count(at::Device(at::kCUDA, at::cuda::current_device())), 0);
  int64_t most = 0;
  for (const Shape& s : gemm_shapes(c, p)) {
    GemmParams g;
    g.dtype = kernel_dtype(dtype);
    g.epilogue = s.epilogue;
    g.M = static_cast<int>(s.M);
    g.N = static_cast<int>(s.N);
    g.K = static_cast<int>(s.K);
    g.splits = static_cast<int>(s.splits);
    g.lda = g.ldb = s.K;
    g.ldd = s.N;
    most = std::max<int64_t>(most, static_cast<int64_t>(gemm_workspace_bytes(g)));
  }
  return most;
}

void forward_cuda(const Config& c, const at::Tensor& images, const at::TensorList& w, const Plan& plan,
                  at::Tensor& workspace, at::Tensor& out, bool stop_after_embed) {
  const std::string problem = cuda_envelope_problem(c, plan.dtype);
  TORCH_CHECK(problem.empty(), "ttf::vit_forward: ", problem, "; use backend='triton' for this model");
  TORCH_CHECK(plan.dtype != at::kHalf || gemm_has_fp16(), "ttf::vit_forward: this build of the engine has no "
              "float16 GEMMs (built with TTF_ENGINE_NO_FP16=1); rebuild without it or run bfloat16");
  const auto* props = at::cuda::getDeviceProperties(images.device().index());
  TORCH_CHECK(props->major == 9 && props->minor == 0, "ttf::vit_forward: the engine's kernels are built for sm_90a "
              "(H100 / H200); this GPU is sm_", props->major, props->minor, ". Use backend='triton'");

  const WeightIndex wi(c);
  const DType dt = kernel_dtype(plan.dtype);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream(images.device().index()).stream();
  uint8_t* ws = workspace.data_ptr<uint8_t>();
  const GemmCall gemm_call{plan, ws, stream, dt};
  const int64_t B = plan.batch, N = c.tokens(), Np = c.patches(), D = c.width, M = plan.rows;
  const int64_t E4 = c.stem_hidden();
  void* x = ws + plan.x;
  void* xn = ws + plan.xn;
  void* wide = ws + plan.wide;
  void* attn = ws + plan.attn;
  float* partial = reinterpret_cast<float*>(ws + plan.partial);

  // ---- stem
  Im2colParams ic;
  ic.dtype = dt;
  ic.images = images.data_ptr();
  ic.stride_b = images.stride(0);
  ic.stride_c = images.stride(1);
  ic.stride_h = images.stride(2);
  ic.stride_w = images.stride(3);
  ic.B = static_cast<int>(B);
  ic.C = static_cast<int>(c.in_chans);
  ic.H = ic.W = static_cast<int>(c.img_size);
  ic.patch = static_cast<int>(c.patch);
  ic.hmlp = c.stem != StemKind::kLinear;
  ic.cols = static_cast<int>(c.im2col_cols());
  ic.out = ws + plan.stem_im2col;
  ic.stream = stream;
  check(im2col(ic), "im2col");
  const void* im2col_out = ws + plan.stem_im2col;
  const at::Tensor* stem_bias = &w[wi.stem + 1];
  if (c.stem == StemKind::kLinear) {
    gemm_call.partial("patch embedding", B * Np, im2col_out, w[wi.stem], partial, plan.splits.stem);
  } else {
    stem_bias = &w[wi.stem + 5];
    void* h1 = ws + plan.stem_h1;
    void* h2 = ws + plan.stem_h2;
    if (c.stem == StemKind::kHmlpBN) {
      gemm_call.bias("hMLP stage 1", 16 * B * Np, im2col_out, w[wi.stem], w[wi.stem + 1], h1, /*gelu=*/true);
      gemm_call.bias("hMLP stage 2", 4 * B * Np, h1, w[wi.stem + 2], w[wi.stem + 3], h2, true);
    } else {
      const struct { const void* in; int64_t rows; int w; void* out; } stages[2] = {
          {im2col_out, 16 * B * Np, 0, h1}, {h1, 4 * B * Np, 2, h2}};
      for (int s = 0; s < 2; ++s) {
        gemm_call.partial(s == 0 ? "hMLP stage 1" : "hMLP stage 2", stages[s].rows, stages[s].in,
                          w[wi.stem + stages[s].w], partial, 1);
        BiasLnGeluParams bl;
        bl.dtype = dt;
        bl.rows = static_cast<int>(stages[s].rows);
        bl.cols = static_cast<int>(E4);
        bl.partial = partial;
        bl.bias = ptr(w[wi.stem + stages[s].w + 1]);
        bl.ln_w = ptr(w[wi.stem + 6 + 2 * s]);
        bl.ln_b = ptr(w[wi.stem + 7 + 2 * s]);
        bl.eps = static_cast<float>(c.stem_eps);
        bl.out = stages[s].out;
        bl.stream = stream;
        check(bias_ln_gelu(bl), "hMLP norm + GELU");
      }
    }
    gemm_call.partial("hMLP stage 3", B * Np, h2, w[wi.stem + 4], partial, plan.splits.stem);
  }
  EmbedFinishParams ef;
  ef.dtype = dt;
  ef.B = static_cast<int>(B);
  ef.N = static_cast<int>(N);
  ef.P = static_cast<int>(c.prefix);
  ef.D = static_cast<int>(D);
  ef.partial = partial;
  ef.splits = static_cast<int>(plan.splits.stem);
  ef.bias = ptr(*stem_bias);
  ef.pos = ptr(w[wi.pos]);
  ef.prefix = c.prefix ? ptr(w[wi.prefix]) : nullptr;
  if (c.stem == StemKind::kHmlpLN) {
    ef.ln_w = ptr(w[wi.stem + 10]);
    ef.ln_b = ptr(w[wi.stem + 11]);
    ef.ln_eps = static_cast<float>(c.stem_eps);
  }
  if (c.norm_pre) {
    ef.pre_w = ptr(w[wi.norm_pre]);
    ef.pre_b = ptr(w[wi.norm_pre + 1]);
  }
  ef.eps = static_cast<float>(c.eps);
  ef.x = x;
  ef.xn = stop_after_embed ? nullptr : xn;
  ef.prefetch = prefetch_of(w[wi.block(0, 0)]);
  ef.stream = stream;
  check(embed_finish(ef), "embedding finish");
  if (stop_after_embed) {
    check(cudaMemcpyAsync(out.data_ptr(), x, bytes(out), cudaMemcpyDeviceToDevice, stream), "copy of the tokens");
    return;
  }

  // ---- blocks
  AttentionParams ap;
  ap.dtype = dt;
  ap.B = static_cast<int>(B);
  ap.N = static_cast<int>(N);
  ap.heads = static_cast<int>(c.branches * c.heads);
  ap.head_dim = static_cast<int>(c.head_dim);
  ap.qkv = wide;
  ap.out = attn;
  ap.stream = stream;
  const char* attention_problem = attention_check(ap);
  TORCH_CHECK(attention_problem == nullptr, "ttf::vit_forward: attention: ", attention_problem);
  ResidualLnParams rl;
  rl.dtype = dt;
  rl.rows = static_cast<int>(M);
  rl.cols = static_cast<int>(D);
  rl.partial = partial;
  rl.x = x;
  rl.xn = xn;
  rl.eps = static_cast<float>(c.eps);
  rl.stream = stream;
  for (int64_t i = 0; i < c.depth; ++i) {
    const bool last = i + 1 == c.depth;
    gemm_call.bias("qkv", M, xn, w[wi.block(i, 0)], w[wi.block(i, 1)], wide, false);
    ap.prefetch = ptr(w[wi.block(i, 2)]);
    ap.prefetch_bytes = bytes(w[wi.block(i, 2)]);
    check(attention(ap), "attention");
    gemm_call.partial("out-projection", M, attn, w[wi.block(i, 2)], partial, plan.splits.proj);
    rl.splits = static_cast<int>(plan.splits.proj);
    rl.bias = ptr(w[wi.block(i, 3)]);
    rl.prefetch = prefetch_of(w[wi.block(i, 4)], w[wi.block(i, 6)]);
    check(residual_ln(rl), "residual + LayerNorm (attention)");
    gemm_call.bias("fc1", M, xn, w[wi.block(i, 4)], w[wi.block(i, 5)], wide, /*gelu=*/true);
    gemm_call.partial("fc2", M, wide, w[wi.block(i, 6)], partial, plan.splits.fc2);
    rl.splits = static_cast<int>(plan.splits.fc2);
    rl.bias = ptr(w[wi.block(i, 7)]);
    rl.prefetch = last ? prefetch_of(w[wi.head]) : prefetch_of(w[wi.block(i + 1, 0)]);
    check(residual_ln(rl), "residual + LayerNorm (MLP)");
  }

  // ---- head
  HeadFeaturesParams hf;
  hf.dtype = dt;
  hf.B = static_cast<int>(B);
  hf.N = static_cast<int>(N);
  hf.P = static_cast<int>(c.prefix);
  hf.D = static_cast<int>(D);
  hf.T = static_cast<int>(c.head_tokens);
  hf.pool = static_cast<int>(c.pool);
  hf.norm = static_cast<int>(c.head_norm);
  hf.x = x;
  hf.xn = xn;
  hf.eps = static_cast<float>(c.eps);
  hf.out = ws + plan.features;
  hf.stream = stream;
  check(head_features(hf), "head features");
  const bool padded = c.head_out % 8 != 0;
  void* logits = padded ? static_cast<void*>(ws + plan.logits) : out.data_ptr();
  gemm_call.bias("head", B, ws + plan.features, w[wi.head], w[wi.head + 1], logits, false);
  if (padded) {
    const size_t es = out.element_size();
    check(cudaMemcpy2DAsync(out.data_ptr(), c.head_out * es, logits, c.head_out_padded * es, c.head_out * es, B,
                            cudaMemcpyDeviceToDevice, stream),
          "copy of the logits");
  }
}

}  // namespace ttf::engine
#endif  // TTF_WITH_CUDA
