"""The fused feed-forward-only forward over the ops protocol (`fused.protocol`): the stem writes the class row and
the positions; per block a normalisation, the channel GEMM pair, a token-axis normalisation and the token GEMM pair
(no transposed copies) — 6 launches. Weights from `fold.fold_model`."""
from __future__ import annotations

import torch

from ...fused.weights import PackedModel


def forward(ops, weights: PackedModel, images: torch.Tensor) -> torch.Tensor:
    eps = weights.config.norm_eps
    x = ops.stem_tokens(images, weights.stem, weights.extra["pos"], weights.extra["cls"])   # (B, N, D)
    b, n, d = x.shape
    for blk in weights.blocks:
        x2 = x.view(b * n, d)
        h = ops.linear(ops.normalize(x2, eps), blk["fc1_w"], blk["fc1_b"], activation="gelu", workspace="fc1")
        x = ops.linear(h, blk["fc2_w"], blk["fc2_b"], residual=x2).view(b, n, d)
        t = ops.token_linear(ops.normalize_tokens(x, eps), blk["tok_w1"], blk["tok_b1"], "gelu")   # (B, T, D)
        x = ops.token_linear(t, blk["tok_w2"], blk["tok_b2"], residual=x)                        # (B, N, D)
    cls = ops.normalize(x[:, 0].contiguous(), eps)
    return ops.linear(cls, weights.head_w, weights.head_b)
