"""The fused forward pass, written once over a small set of ops that each backend provides.

Per block (any K): normalise, QKV GEMM, attention over K*H heads, out-proj GEMM (+residual), normalise,
fc1 GEMM (+GELU), fc2 GEMM (+residual): 7 launches whatever K is, against about 12*K unfused — or 5 when the ops
fuse the normalisations into the GEMMs (Triton backend, norm="fused").

An ops object provides:
    embed(images, weights) -> (B, N, D) tokens: prefix rows, then the stem's patch tokens + positions
    layer_norm(x (M, D), eps, weight=None, bias=None) -> (M, D) tensor: LayerNorm, affine when given (norm_pre, and
        the per-token norm of average pooling)
    normalize(x (M, D), eps) -> x̂: LayerNorm without affine, as whatever `linear` accepts for x (a tensor, or a
        handle carrying x and its row statistics when the GEMM normalises in its epilogue)
    linear(x (M, K), w (N, K), b (N,), activation=None|"gelu", residual=None|(M, N), workspace=None,
           then_normalize=None|eps) -> (M, N)
        may update `residual` in place and return it; `workspace` names a buffer the ops may reuse for the output
        across calls (the output is then only valid until the next call with that name); with `then_normalize`
        returns (y, normalize(y, eps)) — the residual GEMMs can produce the statistics in their epilogue
    attention(qkv (B, N, 3*Hh*d), num_heads=Hh, head_dim=d) -> (B, N, Hh*d)   scale already folded into q
"""
from __future__ import annotations

import torch

from .folding import head_layout
from ...fused.weights import FusedWeights


def vit_forward(ops, weights: FusedWeights, images: torch.Tensor) -> torch.Tensor:
    cfg = weights.config
    eps = cfg.norm_eps
    heads = cfg.num_parallel * cfg.num_heads
    x = ops.embed(images, weights)                     # (B, N, D)
    b, n, d = x.shape
    x = x.reshape(b * n, d)
    if weights.norm_pre is not None:                   # CLIP: the normalised embeddings are the residual stream
        x = ops.layer_norm(x, eps, weights.norm_pre["weight"], weights.norm_pre["bias"])
    xn = ops.normalize(x, eps)
    last = len(weights.blocks) - 1
    for i, blk in enumerate(weights.blocks):
        qkv = ops.linear(xn, blk.w_qkv, blk.b_qkv, workspace="qkv")                         # (B*N, 3KD)
        o = ops.attention(qkv.view(b, n, -1), num_heads=heads, head_dim=cfg.head_dim)      # (B, N, KD)
        x, xn = ops.linear(o.view(b * n, -1), blk.w_proj, blk.b_proj, residual=x,
                           then_normalize=eps)                                             # (B*N, D)
        h = ops.linear(xn, blk.w_fc1, blk.b_fc1, activation="gelu", workspace="fc1")       # (B*N, KF)
        if i < last:
            x, xn = ops.linear(h, blk.w_fc2, blk.b_fc2, residual=x, then_normalize=eps)    # (B*N, D)
        else:
            x = ops.linear(h, blk.w_fc2, blk.b_fc2, residual=x)
    return ops.linear(head_features(ops, x.view(b, n, d), cfg), weights.head_w, weights.head_b)


def head_features(ops, x: torch.Tensor, cfg) -> torch.Tensor:
    """The head's input from the final residual stream x (B, N, D), as `folding.head_layout` says: the class
    (and distillation) token rows or the mean of the patch rows, normalised without affine before or after."""
    pool, norm, tokens = head_layout(cfg)
    b, n, d = x.shape
    eps = cfg.norm_eps
    if pool == "token":
        rows = x[:, :tokens].contiguous().view(b * tokens, d)    # only these rows reach the head
        if norm == "none":
            return rows.view(b, tokens * d)
        if tokens == 1:
            return ops.normalize(rows, eps)            # a handle the head GEMM may normalise with
        return ops.layer_norm(rows, eps).view(b, tokens * d)
    patches = x[:, cfg.num_prefix_tokens:]
    if norm == "before":
        patches = ops.layer_norm(patches.reshape(-1, d), eps).view(b, -1, d)
    pooled = patches.mean(dim=1)
    return ops.normalize(pooled, eps) if norm == "after" else pooled
