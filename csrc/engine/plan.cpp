// Workspace planning and split-K choice. One plan per (config, batch, dtype, GPU); the CPU forward uses the same
// plan with no split-K, so the CPU tests exercise the layout the CUDA kernels write into.
//
// Lifetimes inside one forward (why regions can be shared):
//   stem scratch (im2col, hMLP stage outputs)  from the first stem launch to the stem's last GEMM
//   qkv                                         block i: QKV GEMM -> attention
//   h                                           block i: fc1 GEMM -> fc2 GEMM
// The stem is done before block 0's QKV GEMM writes, and qkv is dead before fc1 writes h, so all three live in
// `wide`. Launches run in stream order (PDL waits are transitive: common.cuh), so reuse across launches is safe.
#include "engine.h"

#include <algorithm>

namespace ttf::engine {
namespace {

constexpr int64_t kAlign = 256;
int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

class Allocator {
 public:
  int64_t take(int64_t bytes) {
    const int64_t at = offset_;
    offset_ = round_up(offset_ + std::max<int64_t>(bytes, 0), kAlign);
    return at;
  }
  int64_t size() const { return offset_; }

 private:
  int64_t offset_ = 0;
};

}  // namespace

int64_t choose_splits(int64_t rows, int64_t cols, int64_t inner, int sm_count, int64_t max_splits) {
  if (sm_count <= 0) return 1;
  const int64_t tiles = ceil_div(rows, 128) * ceil_div(cols, 128);
  int64_t best = 1;
  for (int64_t s = 2; s <= max_splits; ++s) {
    if (tiles * s > sm_count) break;
    if (inner % s == 0 && (inner / s) % 64 == 0) best = s;
  }
  return best;
}

Plan make_plan(const Config& c, int64_t batch, at::ScalarType dtype, int sm_count, int64_t gemm_workspace_bytes) {
  TORCH_CHECK(batch >= 1, "ttf::vit_forward: empty batch (B = 0)");
  Plan p;
  p.batch = batch;
  p.rows = batch * c.tokens();
  p.dtype = dtype;
  p.partial_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t es = static_cast<int64_t>(c10::elementSize(dtype));
  const int64_t ps = static_cast<int64_t>(c10::elementSize(p.partial_dtype));
  const int64_t M = p.rows, D = c.width, KD = c.branches * c.width, KF = c.branches * c.hidden;
  const int64_t patch_rows = batch * c.patches(), E4 = c.stem_hidden();

  p.splits.proj = choose_splits(M, D, KD, sm_count);
  p.splits.fc2 = choose_splits(M, D, KF, sm_count);
  const int64_t stem_inner = c.stem == StemKind::kLinear ? c.im2col_cols() : 4 * E4;
  p.splits.stem = choose_splits(patch_rows, D, stem_inner, sm_count);

  // Stem scratch, laid out from the start of `wide`.
  const int64_t im2col_bytes = batch * c.im2col_rows_per_image() * c.im2col_cols() * es;
  int64_t stem_bytes = round_up(im2col_bytes, kAlign);
  p.stem_im2col = 0;
  if (c.stem != StemKind::kLinear) {
    p.stem_h1 = stem_bytes;                                     // (16·B·Np, E4)
    stem_bytes += round_up(16 * patch_rows * E4 * es, kAlign);
    p.stem_h2 = stem_bytes;                                     // (4·B·Np, E4)
    stem_bytes += round_up(4 * patch_rows * E4 * es, kAlign);
  }
  const int64_t wide_bytes = std::max({M * 3 * KD * es, M * KF * es, stem_bytes});

  // Partial sums: the out-projection, fc2, the stem's last GEMM, and (hMLP-LN) its first two stages.
  int64_t partial_elems = std::max({p.splits.proj * M * D, p.splits.fc2 * M * D, p.splits.stem * patch_rows * D});
  if (c.stem == StemKind::kHmlpLN) partial_elems = std::max(partial_elems, 16 * patch_rows * E4);

  Allocator a;
  p.x = a.take(M * D * es);
  p.xn = a.take(M * D * es);
  p.wide = a.take(wide_bytes);
  p.stem_im2col += p.wide;
  if (c.stem != StemKind::kLinear) {
    p.stem_h1 += p.wide;
    p.stem_h2 += p.wide;
  }
  p.attn = a.take(M * KD * es);
  p.partial = a.take(partial_elems * ps);
  p.features = a.take(batch * c.head_tokens * D * es);
  p.logits = a.take(c.head_out % 8 ? batch * c.head_out_padded * es : 0);
  p.gemm_workspace_bytes = gemm_workspace_bytes;
  p.gemm_workspace = a.take(gemm_workspace_bytes);
  p.total_bytes = a.size();
  return p;
}

std::vector<int64_t> Plan::as_list() const {
  return {total_bytes, x, xn, wide, attn, partial, features, logits, gemm_workspace, stem_im2col, stem_h1, stem_h2,
          splits.proj, splits.fc2, splits.stem};
}

}  // namespace ttf::engine
