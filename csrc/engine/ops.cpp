// The engine's ops, registered under ttf:: (the namespace the Triton ops share, hence a library fragment):
//
//   vit_forward(images, weights, config, eps, workspace=None) -> (B, head_out) logits     CPU, CUDA, Meta
//   vit_embed(images, weights, config, eps) -> (B, N, D) tokens after the stem             CPU, CUDA, Meta
//   vit_plan(config, eps, batch, dtype, sm_count) -> [total bytes, offsets..., splits...] (see Plan::as_list)
//   engine_info() -> str                                                                  what this build can run
//   engine_cuda_problem(config, eps, dtype) -> str      why the CUDA kernels cannot run a model ("" if they can)
//
// The argument checks live here (and in config.cpp), before any kernel runs: shapes, dtypes, devices, contiguity
// of the weights, and on CUDA the dtype / architecture / alignment envelope of the kernels.
#include "engine.h"

#include <torch/library.h>

#include <optional>

#ifdef TTF_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#endif

namespace ttf::engine {
namespace {

struct Prepared {
  Config cfg;
  Plan plan;
  at::Tensor workspace;
};

Prepared prepare(const at::Tensor& images, at::TensorList weights, at::IntArrayRef config, at::ArrayRef<double> eps,
                 const std::optional<at::Tensor>& workspace) {
  Prepared p;
  p.cfg = parse_config(config.vec(), eps.vec());
  TORCH_CHECK(!weights.empty() && weights[0].defined(), "ttf::vit_forward: no weights");
  const at::ScalarType dtype = weights[0].scalar_type();
  const at::Device device = weights[0].device();
  check_images(p.cfg, images, dtype, device);
  check_weights(p.cfg, weights, dtype, device);
  const int64_t batch = images.size(0);
  if (device.is_cpu()) {
    p.plan = make_plan(p.cfg, batch, dtype, /*sm_count=*/0, /*gemm_workspace_bytes=*/0);
  } else {
#ifdef TTF_WITH_CUDA
    TORCH_CHECK(device.is_cuda(), "ttf::vit_forward runs on CPU or CUDA tensors, got ", device);
    const c10::cuda::CUDAGuard guard(device);   // the plan reads this device's SM count
    p.plan = make_plan(p.cfg, batch, dtype, cuda_sm_count(device), cuda_gemm_workspace_bytes(p.cfg, batch, dtype));
#else
    TORCH_CHECK(false, "ttf::vit_forward: this build of the extension has no CUDA (torch without CUDA at build "
                "time); use backend='triton' or rebuild with a CUDA torch");
#endif
  }
  if (workspace.has_value() && workspace->defined()) {
    const at::Tensor& w = *workspace;
    TORCH_CHECK(w.scalar_type() == at::kByte && w.dim() == 1 && w.is_contiguous() && w.device() == device,
                "ttf::vit_forward: workspace must be a contiguous uint8 vector on ", device, ", got ", w.scalar_type(),
                " ", w.sizes(), " on ", w.device());
    TORCH_CHECK(w.numel() >= p.plan.total_bytes, "ttf::vit_forward: workspace of ", w.numel(),
                " bytes is smaller than the ", p.plan.total_bytes, " this batch needs (ttf::vit_plan)");
    // Regions sit at 256-byte offsets from the start: TMA wants 16-byte (and the kernels' vector accesses more)
    // aligned bases on the GPU; on the CPU the element size is what matters.
    const uintptr_t alignment = device.is_cuda() ? 256 : 16;
    TORCH_CHECK(reinterpret_cast<uintptr_t>(w.data_ptr()) % alignment == 0, "ttf::vit_forward: the workspace must "
                "start at a ", alignment, "-byte aligned address (its regions are aligned relative to it); allocate "
                "it with torch.empty rather than slicing one");
    p.workspace = w;
  } else {
    p.workspace = at::empty({p.plan.total_bytes}, images.options().dtype(at::kByte));
  }
  return p;
}

at::Tensor run(const at::Tensor& images, at::TensorList weights, at::IntArrayRef config, at::ArrayRef<double> eps,
               const std::optional<at::Tensor>& workspace, bool embed_only) {
  Prepared p = prepare(images, weights, config, eps, workspace);
  const int64_t B = images.size(0);
  at::Tensor out = embed_only ? at::empty({B, p.cfg.tokens(), p.cfg.width}, weights[0].options())
                              : at::empty({B, p.cfg.head_out}, weights[0].options());
  if (images.is_cpu()) {
    forward_cpu(p.cfg, images, weights, p.plan, p.workspace, out, embed_only);
  } else {
#ifdef TTF_WITH_CUDA
    const c10::cuda::CUDAGuard guard(images.device());
    forward_cuda(p.cfg, images, weights, p.plan, p.workspace, out, embed_only);
#endif
  }
  return out;
}

at::Tensor vit_forward(const at::Tensor& images, at::TensorList weights, at::IntArrayRef config,
                       at::ArrayRef<double> eps, const std::optional<at::Tensor>& workspace) {
  return run(images, weights, config, eps, workspace, /*embed_only=*/false);
}

at::Tensor vit_embed(const at::Tensor& images, at::TensorList weights, at::IntArrayRef config,
                     at::ArrayRef<double> eps) {
  return run(images, weights, config, eps, std::nullopt, /*embed_only=*/true);
}

// Shapes only (torch.compile / export / fake tensors): the output's shape and dtype, no checks beyond the config.
at::Tensor vit_forward_meta(const at::Tensor& images, at::TensorList weights, at::IntArrayRef config,
                            at::ArrayRef<double> eps, const std::optional<at::Tensor>&) {
  const Config cfg = parse_config(config.vec(), eps.vec());
  TORCH_CHECK(!weights.empty(), "ttf::vit_forward: no weights");
  return at::empty({images.size(0), cfg.head_out}, weights[0].options().device(images.device()));
}

at::Tensor vit_embed_meta(const at::Tensor& images, at::TensorList weights, at::IntArrayRef config,
                          at::ArrayRef<double> eps) {
  const Config cfg = parse_config(config.vec(), eps.vec());
  TORCH_CHECK(!weights.empty(), "ttf::vit_embed: no weights");
  return at::empty({images.size(0), cfg.tokens(), cfg.width}, weights[0].options().device(images.device()));
}

std::vector<int64_t> vit_plan(at::IntArrayRef config, at::ArrayRef<double> eps, int64_t batch, at::ScalarType dtype,
                              int64_t sm_count) {
  const Config cfg = parse_config(config.vec(), eps.vec());
  int64_t gemm_ws = 0;
#ifdef TTF_WITH_CUDA
  if (sm_count > 0) gemm_ws = cuda_gemm_workspace_bytes(cfg, batch, dtype);
#endif
  return make_plan(cfg, batch, dtype, static_cast<int>(sm_count), gemm_ws).as_list();
}

std::string engine_cuda_problem(at::IntArrayRef config, at::ArrayRef<double> eps, at::ScalarType dtype) {
  return cuda_envelope_problem(parse_config(config.vec(), eps.vec()), dtype);
}

std::string engine_info() {
#ifdef TTF_WITH_CUDA
#ifdef TTF_ENGINE_NO_FP16
  return "cpu,cuda:sm_90a:bf16";
#else
  return "cpu,cuda:sm_90a:bf16,fp16";
#endif
#else
  return "cpu";
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ttf, m) {
  m.def("vit_forward(Tensor images, Tensor[] weights, int[] config, float[] eps, Tensor(a!)? workspace=None) "
        "-> Tensor");
  m.def("vit_embed(Tensor images, Tensor[] weights, int[] config, float[] eps) -> Tensor");
  m.def("vit_plan(int[] config, float[] eps, int batch, ScalarType dtype, int sm_count) -> int[]", &vit_plan);
  m.def("engine_info() -> str", &engine_info);
  m.def("engine_cuda_problem(int[] config, float[] eps, ScalarType dtype) -> str", &engine_cuda_problem);
}

TORCH_LIBRARY_IMPL(ttf, CPU, m) {
  m.impl("vit_forward", &vit_forward);
  m.impl("vit_embed", &vit_embed);
}

TORCH_LIBRARY_IMPL(ttf, Meta, m) {
  m.impl("vit_forward", &vit_forward_meta);
  m.impl("vit_embed", &vit_embed_meta);
}

#ifdef TTF_WITH_CUDA
TORCH_LIBRARY_IMPL(ttf, CUDA, m) {
  m.impl("vit_forward", &vit_forward);
  m.impl("vit_embed", &vit_embed);
}
#endif

}  // namespace ttf::engine
