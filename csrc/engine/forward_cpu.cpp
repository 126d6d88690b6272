// The engine's forward on the CPU: the CUDA schedule (engine.h) over ATen ops, on the same workspace plan and the
// same packed weights. It is how the packing, the im2col orderings, the split-K partial buffers, the buffer reuse
// and the argument checks are tested without a GPU, against the float64 reference.
//
// Numerics follow the CUDA kernels: GEMMs accumulate in fp32 (fp64 for a float64 run) and round once when they
// store; bias, GELU, residual, LayerNorm and positions are applied in the accumulation dtype before that rounding.
#include "engine.h"

namespace ttf::engine {
namespace {

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// out = [gelu](A · Wᵀ + bias), accumulated in the wide dtype, rounded once.
void gemm_bias(const at::Tensor& A, const at::Tensor& W, const at::Tensor& bias, bool gelu, at::Tensor out) {
  const auto acc = acc_type(out.scalar_type());
  at::Tensor y = at::addmm(bias.to(acc), A.to(acc), W.to(acc).t());
  if (gelu) y = at::gelu(y);
  out.copy_(y);
}

// partial (1, rows, cols) = A · Wᵀ in the partial dtype (the CPU plan has one split).
void gemm_partial(const at::Tensor& A, const at::Tensor& W, at::Tensor partial) {
  const auto acc = partial.scalar_type();
  at::Tensor dst = partial.select(0, 0);
  at::mm_out(dst, A.to(acc), W.to(acc).t());
}

at::Tensor layer_norm(const at::Tensor& v, int64_t width, double eps, const at::Tensor& w = {},
                      const at::Tensor& b = {}) {
  const auto acc = v.scalar_type();
  return at::layer_norm(v, {width}, w.defined() ? w.to(acc) : w, b.defined() ? b.to(acc) : b, eps);
}

// Linear stem rows (b, py, px), columns (c, ky, kx) — the order of the packed weight — zero-padded to `cols`.
void im2col_linear(const at::Tensor& images, int64_t p, at::Tensor out) {
  const int64_t B = images.size(0), C = images.size(1), g = images.size(2) / p;
  at::Tensor t = images.reshape({B, C, g, p, g, p}).permute({0, 2, 4, 1, 3, 5}).reshape({B * g * g, C * p * p});
  out.zero_();
  out.narrow(1, 0, C * p * p).copy_(t);
}

// hMLP stage-1 rows (b, py, px, gy, gx, qy, qx): the 4×4 sub-patch at pixel (16 py + 8 gy + 4 qy, 16 px + 8 gx +
// 4 qx). Four consecutive rows (qy, qx) then form the 2×2 input of stage 2 and four consecutive stage-2 rows
// (gy, gx) the input of stage 3, so the stage outputs need no reordering, only a reshape.
void im2col_hmlp(const at::Tensor& images, at::Tensor out) {
  const int64_t B = images.size(0), C = images.size(1), g = images.size(2) / 16;
  at::Tensor t = images.reshape({B, C, g, 2, 2, 4, g, 2, 2, 4})       // b c py gy qy ky px gx qx kx
                     .permute({0, 2, 6, 3, 7, 4, 8, 1, 5, 9})           // b py px gy gx qy qx c ky kx
                     .reshape({B * g * g * 16, C * 16});
  out.zero_();
  out.narrow(1, 0, C * 16).copy_(t);
}

// hMLP-LN stage: h = gelu(LN_affine(A · Wᵀ + b)) over the E4 channels of each sub-patch.
void hmlp_ln_stage(const at::Tensor& A, const at::Tensor& W, const at::Tensor& b, const at::Tensor& ln_w,
                   const at::Tensor& ln_b, double eps, at::Tensor partial, at::Tensor out) {
  gemm_partial(A, W, partial);
  at::Tensor v = partial.select(0, 0) + b.to(partial.scalar_type());
  out.copy_(at::gelu(layer_norm(v, v.size(1), eps, ln_w, ln_b)));
}

void attention(const at::Tensor& qkv, int64_t B, int64_t N, int64_t heads, int64_t d, at::Tensor out) {
  const auto acc = acc_type(qkv.scalar_type());
  at::Tensor t = qkv.view({B, N, 3, heads, d}).to(acc);
  at::Tensor q = t.select(2, 0).transpose(1, 2), k = t.select(2, 1).transpose(1, 2), v = t.select(2, 2).transpose(1, 2);
  at::Tensor o = at::matmul(at::softmax(at::matmul(q, k.transpose(-2, -1)), -1), v);   // q is pre-scaled
  out.view({B, N, heads, d}).copy_(o.transpose(1, 2));
}

// x += Σ_s partial[s] + bias (rounded once), then x̂ = LN(x) of the stored x.
void residual_ln(at::Tensor x, at::Tensor xn, const at::Tensor& partial, const at::Tensor& bias, double eps) {
  const auto acc = partial.scalar_type();
  x.copy_(x.to(acc) + partial.sum(0) + bias.to(acc));
  xn.copy_(layer_norm(x.to(acc), x.size(1), eps));
}

}  // namespace

void forward_cpu(const Config& c, const at::Tensor& images, const at::TensorList& w, const Plan& plan,
                 at::Tensor& ws, at::Tensor& out, bool stop_after_embed) {
  const WeightIndex wi(c);
  const auto dt = plan.dtype, pt = plan.partial_dtype;
  const int64_t B = plan.batch, N = c.tokens(), Np = c.patches(), P = c.prefix, D = c.width, M = plan.rows;
  const int64_t KD = c.branches * c.width, KF = c.branches * c.hidden, E4 = c.stem_hidden();
  at::Tensor x = region(ws, plan.x, {M, D}, dt), xn = region(ws, plan.xn, {M, D}, dt);
  at::Tensor im2col = region(ws, plan.stem_im2col, {B * c.im2col_rows_per_image(), c.im2col_cols()}, dt);

  // ---- stem: patch rows -> fp32/fp64 partial (splits, B·Np, D)
  at::Tensor stem_partial = region(ws, plan.partial, {1, B * Np, D}, pt);
  const at::Tensor& stem_bias = c.stem == StemKind::kLinear ? w[wi.stem + 1] : w[wi.stem + 5];
  if (c.stem == StemKind::kLinear) {
    im2col_linear(images, c.patch, im2col);
    gemm_partial(im2col, w[wi.stem], stem_partial);
  } else {
    im2col_hmlp(images, im2col);
    at::Tensor h1 = region(ws, plan.stem_h1, {16 * B * Np, E4}, dt);
    at::Tensor h2 = region(ws, plan.stem_h2, {4 * B * Np, E4}, dt);
    if (c.stem == StemKind::kHmlpBN) {
      gemm_bias(im2col, w[wi.stem], w[wi.stem + 1], /*gelu=*/true, h1);
      gemm_bias(h1.view({4 * B * Np, 4 * E4}), w[wi.stem + 2], w[wi.stem + 3], true, h2);
    } else {
      hmlp_ln_stage(im2col, w[wi.stem], w[wi.stem + 1], w[wi.stem + 6], w[wi.stem + 7], c.stem_eps,
                    region(ws, plan.partial, {1, 16 * B * Np, E4}, pt), h1);
      hmlp_ln_stage(h1.view({4 * B * Np, 4 * E4}), w[wi.stem + 2], w[wi.stem + 3], w[wi.stem + 8], w[wi.stem + 9],
                    c.stem_eps, region(ws, plan.partial, {1, 4 * B * Np, E4}, pt), h2);
    }
    gemm_partial(h2.view({B * Np, 4 * E4}), w[wi.stem + 4], stem_partial);
  }
  // ---- embed finish: prefix rows, bias (+ hMLP-LN's last norm) + positions, norm_pre, x̂
  at::Tensor xv = x.view({B, N, D});
  if (P > 0) xv.narrow(1, 0, P).copy_(w[wi.prefix].unsqueeze(0).expand({B, P, D}));
  at::Tensor v = stem_partial.sum(0) + stem_bias.to(pt);
  if (c.stem == StemKind::kHmlpLN) v = layer_norm(v, D, c.stem_eps, w[wi.stem + 10], w[wi.stem + 11]);
  xv.narrow(1, P, Np).copy_(v.view({B, Np, D}) + w[wi.pos].to(pt));
  if (c.norm_pre) x.copy_(layer_norm(x.to(pt), D, c.eps, w[wi.norm_pre], w[wi.norm_pre + 1]));
  if (stop_after_embed) {
    out.copy_(xv);
    return;
  }
  xn.copy_(layer_norm(x.to(pt), D, c.eps));

  // ---- blocks
  at::Tensor qkv = region(ws, plan.wide, {M, 3 * KD}, dt), h = region(ws, plan.wide, {M, KF}, dt);
  at::Tensor o = region(ws, plan.attn, {M, KD}, dt), partial = region(ws, plan.partial, {1, M, D}, pt);
  for (int64_t i = 0; i < c.depth; ++i) {
    gemm_bias(xn, w[wi.block(i, 0)], w[wi.block(i, 1)], false, qkv);
    attention(qkv, B, N, c.branches * c.heads, c.head_dim, o);
    gemm_partial(o, w[wi.block(i, 2)], partial);
    residual_ln(x, xn, partial, w[wi.block(i, 3)], c.eps);
    gemm_bias(xn, w[wi.block(i, 4)], w[wi.block(i, 5)], true, h);
    gemm_partial(h, w[wi.block(i, 6)], partial);
    residual_ln(x, xn, partial, w[wi.block(i, 7)], c.eps);
  }

  // ---- head: pooled / normalised features, then the folded head
  at::Tensor features = region(ws, plan.features, {B, c.head_tokens * D}, dt);
  at::Tensor xnv = xn.view({B, N, D});
  if (c.pool == Pool::kToken) {
    const at::Tensor& src = c.head_norm == HeadNorm::kNone ? xv : xnv;
    features.view({B, c.head_tokens, D}).copy_(src.narrow(1, 0, c.head_tokens));
  } else if (c.head_norm == HeadNorm::kBefore) {
    features.copy_(xnv.narrow(1, P, Np).to(pt).mean(1));
  } else {
    at::Tensor pooled = xv.narrow(1, P, Np).to(pt).mean(1);
    features.copy_(c.head_norm == HeadNorm::kAfter ? layer_norm(pooled, D, c.eps) : pooled);
  }
  const bool padded = c.head_out % 8 != 0;
  at::Tensor logits = padded ? region(ws, plan.logits, {B, c.head_out_padded}, dt) : out;
  gemm_bias(features, w[wi.head], w[wi.head + 1], false, logits);
  if (padded) out.copy_(logits.narrow(1, 0, c.head_out));
}

}  // namespace ttf::engine
