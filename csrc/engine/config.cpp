// Parsing of the engine's config lists and the argument checks shared by the CPU and CUDA forwards.
#include "engine.h"

#include <cstdint>
#include <sstream>
#include <utility>

namespace ttf::engine {
namespace {

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

std::string shape_str(at::IntArrayRef shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

// (name, shape) of every weight, in the order of WeightIndex.
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_weights(const Config& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> w;
  const int64_t D = c.width, KD = c.branches * c.width, KF = c.branches * c.hidden, E4 = c.stem_hidden();
  if (c.stem == StemKind::kLinear) {
    w.push_back({"stem weight", {D, c.im2col_cols()}});
    w.push_back({"stem bias", {D}});
  } else {
    w.push_back({"hMLP w1", {E4, c.im2col_cols()}});
    w.push_back({"hMLP b1", {E4}});
    w.push_back({"hMLP w2", {E4, 4 * E4}});
    w.push_back({"hMLP b2", {E4}});
    w.push_back({"hMLP w3", {D, 4 * E4}});
    w.push_back({"hMLP b3", {D}});
    if (c.stem == StemKind::kHmlpLN) {
      for (int i = 1; i <= 3; ++i) {
        const int64_t n = i < 3 ? E4 : D;
        w.push_back({"hMLP ln" + std::to_string(i) + " weight", {n}});
        w.push_back({"hMLP ln" + std::to_string(i) + " bias", {n}});
      }
    }
  }
  w.push_back({"prefix", {c.prefix, D}});
  w.push_back({"pos", {c.patches(), D}});
  if (c.norm_pre) {
    w.push_back({"norm_pre weight", {D}});
    w.push_back({"norm_pre bias", {D}});
  }
  const char* names[WeightIndex::kPerBlock] = {"w_qkv", "b_qkv", "w_proj", "b_proj", "w_fc1", "b_fc1", "w_fc2",
                                               "b_fc2"};
  const std::vector<int64_t> shapes[WeightIndex::kPerBlock] = {{3 * KD, D}, {3 * KD}, {D, KD}, {D},
                                                               {KF, D},     {KF},     {D, KF},  {D}};
  for (int64_t i = 0; i < c.depth; ++i)
    for (int j = 0; j < WeightIndex::kPerBlock; ++j)
      w.push_back({"block " + std::to_string(i) + " " + names[j], shapes[j]});
  w.push_back({"head weight", {c.head_out_padded, c.head_tokens * D}});
  w.push_back({"head bias", {c.head_out_padded}});
  return w;
}

}  // namespace

int64_t Config::im2col_cols() const {
  const int64_t raw = stem == StemKind::kLinear ? patch_inputs() : in_chans * 16;
  return round_up(raw, 8);
}

std::string Config::describe() const {
  std::ostringstream s;
  s << "depth=" << depth << " K=" << branches << " D=" << width << " heads=" << heads << " head_dim=" << head_dim
    << " F=" << hidden << " stem=" << static_cast<int>(stem) << " patch=" << patch << " img=" << img_size
    << " prefix=" << prefix << " pool=" << static_cast<int>(pool) << " head_norm=" << static_cast<int>(head_norm)
    << " head_tokens=" << head_tokens << " head_out=" << head_out << " norm_pre=" << norm_pre;
  return s.str();
}

Config parse_config(const std::vector<int64_t>& v, const std::vector<double>& eps) {
  TORCH_CHECK(v.size() == kConfigLength, "ttf::vit_forward: config must hold ", int(kConfigLength),
              " ints (threethings_fast's engine packer writes it), got ", v.size());
  TORCH_CHECK(v[kVersion] == kConfigVersion, "ttf::vit_forward: config layout version ", v[kVersion],
              " does not match the extension's ", kConfigVersion, "; rebuild the extension (pip install -e .)");
  TORCH_CHECK(eps.size() == kEpsLength, "ttf::vit_forward: eps must hold ", int(kEpsLength), " floats, got ",
              eps.size());
  Config c;
  c.depth = v[kDepth];
  c.branches = v[kBranches];
  c.width = v[kWidth];
  c.heads = v[kHeads];
  c.head_dim = v[kHeadDim];
  c.hidden = v[kHidden];
  c.head_out = v[kHeadOut];
  c.patch = v[kPatch];
  c.img_size = v[kImgSize];
  c.in_chans = v[kInChans];
  c.prefix = v[kPrefix];
  c.head_tokens = v[kHeadTokens];
  c.eps = eps[kEps];
  c.stem_eps = eps[kStemEps];
  for (auto [value, name] : {std::pair{c.depth, "depth"}, {c.branches, "branches"}, {c.width, "width"},
                             {c.heads, "heads"}, {c.hidden, "hidden"}, {c.head_out, "head_out"},
                             {c.patch, "patch"}, {c.img_size, "img_size"}, {c.in_chans, "in_chans"}}) {
    TORCH_CHECK(value >= 1, "ttf::vit_forward: config ", name, " must be >= 1, got ", value);
  }
  TORCH_CHECK(c.width % c.heads == 0 && c.head_dim == c.width / c.heads, "ttf::vit_forward: head_dim ", c.head_dim,
              " is not width ", c.width, " / heads ", c.heads);
  TORCH_CHECK(v[kStem] >= 0 && v[kStem] <= 2, "ttf::vit_forward: stem kind must be 0 (linear), 1 (hmlp_bn) or 2 "
              "(hmlp_ln), got ", v[kStem]);
  c.stem = static_cast<StemKind>(v[kStem]);
  TORCH_CHECK(c.img_size % c.patch == 0, "ttf::vit_forward: img_size ", c.img_size, " is not a multiple of patch ",
              c.patch);
  if (c.stem != StemKind::kLinear) {
    TORCH_CHECK(c.patch == 16 && c.width % 4 == 0, "ttf::vit_forward: the hMLP stem needs 16-pixel patches and a "
                "width divisible by 4, got patch ", c.patch, ", width ", c.width);
  }
  TORCH_CHECK(v[kPool] == 0 || v[kPool] == 1, "ttf::vit_forward: pool must be 0 (token) or 1 (avg), got ",
              v[kPool]);
  c.pool = static_cast<Pool>(v[kPool]);
  TORCH_CHECK(v[kHeadNorm] >= 0 && v[kHeadNorm] <= 2, "ttf::vit_forward: head_norm must be 0, 1 or 2, got ",
              v[kHeadNorm]);
  c.head_norm = static_cast<HeadNorm>(v[kHeadNorm]);
  TORCH_CHECK(v[kNormPre] == 0 || v[kNormPre] == 1, "ttf::vit_forward: norm_pre must be 0 or 1");
  c.norm_pre = v[kNormPre] == 1;
  TORCH_CHECK(c.prefix >= 0, "ttf::vit_forward: prefix tokens must be >= 0, got ", c.prefix);
  TORCH_CHECK(c.head_tokens == 1 || c.head_tokens == 2, "ttf::vit_forward: head_tokens must be 1 or 2");
  if (c.pool == Pool::kToken) {
    TORCH_CHECK(c.prefix >= c.head_tokens, "ttf::vit_forward: token pooling reads ", c.head_tokens,
                " prefix token(s) but the model has ", c.prefix);
  } else {
    TORCH_CHECK(c.head_tokens == 1, "ttf::vit_forward: average pooling feeds one row per sample to the head");
  }
  TORCH_CHECK(c.head_norm != HeadNorm::kBefore || c.pool == Pool::kAvg,
              "ttf::vit_forward: a LayerNorm before pooling is only distinct for average pooling");
  TORCH_CHECK(c.eps > 0, "ttf::vit_forward: LayerNorm eps must be > 0, got ", c.eps);
  TORCH_CHECK(c.stem != StemKind::kHmlpLN || c.stem_eps > 0, "ttf::vit_forward: the hMLP LayerNorm eps must be > 0");
  c.head_out_padded = round_up(c.head_out, 8);
  return c;
}

WeightIndex::WeightIndex(const Config& c) {
  stem = 0;
  stem_count = c.stem == StemKind::kLinear ? 2 : (c.stem == StemKind::kHmlpBN ? 6 : 12);
  prefix = stem + stem_count;
  pos = prefix + 1;
  int64_t next = pos + 1;
  if (c.norm_pre) {
    norm_pre = next;
    next += 2;
  }
  blocks = next;
  head = blocks + kPerBlock * c.depth;
  total = head + 2;
}

void check_weights(const Config& cfg, const at::TensorList& weights, at::ScalarType dtype, const at::Device& device) {
  const auto expected = expected_weights(cfg);
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == static_cast<int64_t>(expected.size()),
              "ttf::vit_forward: expected ", expected.size(), " weight tensors for ", cfg.describe(), ", got ",
              weights.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const at::Tensor& t = weights[i];
    const auto& [name, shape] = expected[i];
    TORCH_CHECK(t.defined(), "ttf::vit_forward: weight ", i, " (", name, ") is undefined");
    TORCH_CHECK(t.sizes().vec() == shape, "ttf::vit_forward: weight ", i, " (", name, ") must have shape ",
                shape_str(shape), ", got ", shape_str(t.sizes()));
    TORCH_CHECK(t.scalar_type() == dtype, "ttf::vit_forward: weight ", i, " (", name, ") is ", t.scalar_type(),
                ", the images are ", dtype);
    TORCH_CHECK(t.device() == device, "ttf::vit_forward: weight ", i, " (", name, ") is on ", t.device(),
                ", the images on ", device);
    TORCH_CHECK(t.is_contiguous(), "ttf::vit_forward: weight ", i, " (", name, ") must be contiguous");
    // TMA loads and the L2 bulk prefetch need 16-byte aligned bases (a view at an odd offset would fault on the
    // device, after earlier launches were queued, instead of failing here).
    TORCH_CHECK(!device.is_cuda() || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, "ttf::vit_forward: "
                "weight ", i, " (", name, ") must start at a 16-byte aligned address (a fresh tensor, not a view)");
  }
}

void check_images(const Config& cfg, const at::Tensor& images, at::ScalarType dtype, const at::Device& device) {
  TORCH_CHECK(images.dim() == 4, "ttf::vit_forward: images must be (B, ", cfg.in_chans, ", ", cfg.img_size, ", ",
              cfg.img_size, "), got rank ", images.dim());
  TORCH_CHECK(images.size(0) >= 1, "ttf::vit_forward: empty batch (B = 0)");
  TORCH_CHECK(images.size(1) == cfg.in_chans && images.size(2) == cfg.img_size && images.size(3) == cfg.img_size,
              "ttf::vit_forward: images must be (B, ", cfg.in_chans, ", ", cfg.img_size, ", ", cfg.img_size,
              "), got ", shape_str(images.sizes()));
  TORCH_CHECK(images.scalar_type() == dtype, "ttf::vit_forward: images are ", images.scalar_type(),
              ", the weights ", dtype);
  TORCH_CHECK(images.device() == device, "ttf::vit_forward: images are on ", images.device(), ", the weights on ",
              device);
}

std::string cuda_envelope_problem(const Config& c, at::ScalarType dtype) {
  std::ostringstream why;
  if (dtype != at::kBFloat16 && dtype != at::kHalf) {
    why << "the CUDA engine runs bfloat16 or float16, not " << dtype;
  } else if (c.head_dim != 32 && c.head_dim != 64 && c.head_dim != 80 && c.head_dim != 96 && c.head_dim != 128) {
    why << "head_dim " << c.head_dim << " (the attention kernel takes 32, 64, 80, 96, 128)";
  } else if (c.width % 8 != 0) {
    why << "width " << c.width << " is not a multiple of 8 (TMA needs 16-byte rows)";
  } else if ((c.branches * c.hidden) % 8 != 0) {
    why << "K·F = " << c.branches * c.hidden << " is not a multiple of 8 (TMA needs 16-byte rows)";
  } else if (c.stem != StemKind::kLinear && c.stem_hidden() % 8 != 0) {
    why << "the hMLP stem's width E/4 = " << c.stem_hidden() << " is not a multiple of 8";
  } else if (c.width > 12288) {
    why << "width " << c.width << " exceeds 12288 (the head kernel keeps a pooled row in 48 KB of shared memory)";
  }
  return why.str();
}

at::Tensor region(at::Tensor& workspace, int64_t offset, at::IntArrayRef shape, at::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t s : shape) numel *= s;
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(dtype));
  TORCH_CHECK(offset >= 0 && offset + bytes <= workspace.numel(), "ttf::vit_forward: workspace region [", offset,
              ", ", offset + bytes, ") outside a workspace of ", workspace.numel(), " bytes");
  return workspace.narrow(0, offset, bytes).view(dtype).view(shape);
}

}  // namespace ttf::engine
