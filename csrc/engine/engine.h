// The small-batch engine: the whole fused ViT forward as one C++ op (ttf::vit_forward), with a CPU implementation
// over ATen (the same schedule, buffers and packing; tested against the float64 reference) and a CUDA
// implementation over the kernels of csrc/kernels (sm_90a).
//
// Schedule of one forward, M = B·N rows (N = P prefix tokens + Np patches), per block of K branches:
//   qkv = x̂ · Wqkvᵀ + b                    GEMM, bias epilogue                       (M, 3KD)
//   o   = attention(qkv) over K·H heads     one launch                                (M, KD)
//   x  += Σ_s (o · Wprojᵀ)_s + b; x̂ = LN(x) split-K GEMM (fp32 partials) + row kernel  (M, D)
//   h   = gelu(x̂ · Wfc1ᵀ + b)               GEMM, bias + GELU epilogue                (M, KF)
//   x  += Σ_s (h · Wfc2ᵀ)_s + b; x̂ = LN(x)  split-K GEMM + row kernel                 (M, D)
// 7 launches per block whatever K is. The row kernel owns whole rows, so it computes the LayerNorm statistics
// exactly (two passes over the row, no E[x²]−E[x]² cancellation) and writes x̂ for the next GEMM; the LayerNorm
// affine parts are folded into the weights by the Python packer (threethings_fast.folding).
// Stem (once): im2col of the patches (or of the hMLP's 4×4 sub-patches) + GEMMs + a row kernel that adds the
// bias and positions, writes the prefix rows, applies norm_pre and writes x and x̂.
// Head (once): a row kernel pools / normalises the features, a GEMM applies the folded head.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ttf::engine {

// Layout version of the int config list; the Python packer writes the same number.
constexpr int64_t kConfigVersion = 1;

enum class StemKind : int64_t { kLinear = 0, kHmlpBN = 1, kHmlpLN = 2 };
enum class Pool : int64_t { kToken = 0, kAvg = 1 };
enum class HeadNorm : int64_t { kNone = 0, kAfter = 1, kBefore = 2 };

// The int list passed to ttf::vit_forward, in this order (indices are part of the op's contract).
enum ConfigIndex : int {
  kVersion = 0, kDepth, kBranches, kWidth, kHeads, kHeadDim, kHidden, kHeadOut, kStem, kPatch, kImgSize, kInChans,
  kPrefix, kPool, kHeadNorm, kHeadTokens, kNormPre, kConfigLength
};
// The float list: [block LayerNorm eps, hMLP LayerNorm eps (0 unless the stem is hmlp_ln)].
enum EpsIndex : int { kEps = 0, kStemEps, kEpsLength };

struct Config {
  int64_t depth = 0, branches = 0, width = 0, heads = 0, head_dim = 0, hidden = 0;  // D = width, F = hidden
  int64_t head_out = 0;          // logits per sample (num_classes, or D for a feature head)
  int64_t head_out_padded = 0;   // rows of the packed head weight: head_out rounded up to a multiple of 8
  StemKind stem = StemKind::kLinear;
  int64_t patch = 16, img_size = 224, in_chans = 3;
  int64_t prefix = 1;            // P prefix tokens
  Pool pool = Pool::kToken;
  HeadNorm head_norm = HeadNorm::kAfter;
  int64_t head_tokens = 1;       // rows per sample feeding the head (2: class + distillation token)
  bool norm_pre = false;
  double eps = 1e-6, stem_eps = 0.0;

  int64_t grid() const { return img_size / patch; }
  int64_t patches() const { return grid() * grid(); }                  // Np
  int64_t tokens() const { return prefix + patches(); }                // N
  int64_t stem_hidden() const { return width / 4; }                    // hMLP E/4
  int64_t patch_inputs() const { return in_chans * patch * patch; }    // linear stem K
  // Columns of the im2col matrix: C·p·p (linear) or C·4·4 (hMLP stage 1), padded to a multiple of 8 (TMA needs
  // 16-byte rows); the packed stem weight has the same zero-padded columns.
  int64_t im2col_cols() const;
  int64_t im2col_rows_per_image() const { return stem == StemKind::kLinear ? patches() : 16 * patches(); }
  std::string describe() const;
};

// Parse and validate the int / float lists (TORCH_CHECK with a message naming the field).
Config parse_config(const std::vector<int64_t>& ints, const std::vector<double>& eps);

// The weight list, in order:
//   stem     linear:  w (D, Kpad) columns (c, ky, kx) zero-padded, b (D,)
//            hmlp_bn: w1 (E4, Kpad1) columns (c, ky, kx) over 4×4 sub-patches, b1, w2 (E4, 4·E4) columns (q, c)
//                     with q the 2×2 position (row-major) of the sub-patch, b2, w3 (E, 4·E4) columns (q, c), b3
//                     (BatchNorm folded)
//            hmlp_ln: the same six, then ln1_w, ln1_b, ln2_w, ln2_b, ln3_w, ln3_b
//   prefix (P, D), pos (Np, D), [norm_pre_w (D,), norm_pre_b (D,)]
//   per block: w_qkv (3KD, D), b_qkv, w_proj (D, KD), b_proj, w_fc1 (KF, D), b_fc1, w_fc2 (D, KF), b_fc2
//   head_w (head_out_padded, T·D), head_b (head_out_padded,)
struct WeightIndex {
  int64_t stem = 0;          // first stem tensor
  int64_t stem_count = 0;
  int64_t prefix = 0, pos = 0, norm_pre = -1;
  int64_t blocks = 0;        // first tensor of block 0; block i starts at blocks + 8 i
  int64_t head = 0;          // head_w; head_b follows
  int64_t total = 0;
  static constexpr int64_t kPerBlock = 8;
  explicit WeightIndex(const Config& cfg);
  int64_t block(int64_t i, int64_t which) const { return blocks + kPerBlock * i + which; }
};

// Check every weight: count, shape, dtype == `dtype`, device == `device`, contiguous. TORCH_CHECK failures name
// the tensor ("block 3 w_fc1").
void check_weights(const Config& cfg, const at::TensorList& weights, at::ScalarType dtype, const at::Device& device);

// Check the images against the config: (B >= 1, in_chans, img_size, img_size), dtype, device. Any strides.
void check_images(const Config& cfg, const at::Tensor& images, at::ScalarType dtype, const at::Device& device);

// Why the CUDA kernels cannot run this model in this dtype ("" when they can): dtype, head_dim, 16-byte alignment of
// every GEMM operand. Needs no GPU, so convert() can refuse early and tests can check it on the CPU.
std::string cuda_envelope_problem(const Config& cfg, at::ScalarType dtype);

// Split counts of the split-K GEMMs for a batch (1 on the CPU).
struct Splits {
  int64_t proj = 1, fc2 = 1, stem = 1;
};

// Byte offsets of every buffer inside one workspace (256-byte aligned regions). The same plan drives the CPU and
// the CUDA forward; regions whose lifetimes do not overlap share memory (see plan.cpp).
struct Plan {
  int64_t batch = 0, rows = 0;                // B, M = B·N
  at::ScalarType dtype = at::kBFloat16;       // run dtype of activations and weights
  at::ScalarType partial_dtype = at::kFloat;  // split-K partial sums: fp32 (fp64 for a float64 CPU run)
  Splits splits;
  int64_t x = 0, xn = 0;                      // (M, D) residual stream and its LayerNorm (run dtype)
  int64_t wide = 0;                           // qkv (M, 3KD), then h (M, KF); the stem's scratch before block 0
  int64_t attn = 0;                           // (M, KD)
  int64_t partial = 0;                        // fp32 split-K partial sums (splits, rows, D or E4)
  int64_t features = 0;                       // (B, T·D) head input
  int64_t logits = 0;                         // (B, head_out_padded) when head_out is not a multiple of 8
  int64_t gemm_workspace = 0, gemm_workspace_bytes = 0;
  int64_t stem_im2col = 0, stem_h1 = 0, stem_h2 = 0;   // inside `wide`: im2col rows, hMLP stage 1 / 2 outputs
  int64_t total_bytes = 0;
  std::vector<int64_t> as_list() const;       // for tests: [total, x, xn, wide, attn, partial, features, logits,
                                              //   gemm_ws, im2col, h1, h2, split proj, split fc2, split stem]
};

// sm_count <= 0: the CPU plan (no split-K). gemm_workspace_bytes: what the CUDA GEMMs need (0 on the CPU).
Plan make_plan(const Config& cfg, int64_t batch, at::ScalarType dtype, int sm_count, int64_t gemm_workspace_bytes);

// Split count for a GEMM of (rows, cols, inner) on `sm_count` SMs with 128×128 tiles: as many splits as keep every
// split's K a multiple of 64 and the grid within one wave. 1 when the tile grid already fills the GPU.
int64_t choose_splits(int64_t rows, int64_t cols, int64_t inner, int sm_count, int64_t max_splits = 16);

// The forwards. `workspace` is a uint8 tensor of at least plan.total_bytes on the images' device; `out` is
// (B, head_out) in the run dtype. `stop_after_embed`: write only x (for the stem tests) and return.
void forward_cpu(const Config& cfg, const at::Tensor& images, const at::TensorList& weights, const Plan& plan,
                 at::Tensor& workspace, at::Tensor& out, bool stop_after_embed);
#ifdef TTF_WITH_CUDA
void forward_cuda(const Config& cfg, const at::Tensor& images, const at::TensorList& weights, const Plan& plan,
                  at::Tensor& workspace, at::Tensor& out, bool stop_after_embed);
int64_t cuda_gemm_workspace_bytes(const Config& cfg, int64_t batch, at::ScalarType dtype);
int cuda_sm_count(const at::Device& device);
#endif

// Typed view of a workspace region: (shape) tensor of `dtype` at byte offset `offset`.
at::Tensor region(at::Tensor& workspace, int64_t offset, at::IntArrayRef shape, at::ScalarType dtype);

}  // namespace ttf::engine
