"""The fused MLP-Mixer forward over the ops protocol (`fused.protocol`): per block 2 normalisations, 2 token GEMMs
(no transposed copies), 2 channel GEMMs — 6 launches whatever K is. With norm="fused" (Triton) no normalised copy
is written: the token GEMM normalises its input rows in its main loop from row statistics written by the previous
block's fc2 (after the stem: one `row_stats` launch), and fc1 normalises in its epilogue from a `row_stats` launch
(token GEMMs write no statistics) — 5 launches. Weights from `fold.fold_model`."""
from __future__ import annotations

import torch

from ...fused.weights import PackedModel


def forward(ops, weights: PackedModel, images: torch.Tensor) -> torch.Tensor:
    cfg = weights.config
    eps = cfg.norm_eps
    x = ops.stem_tokens(images, weights.stem, None, None)             # (B, N, D)
    b, n, d = x.shape
    xn = ops.normalize(x.view(b * n, d), eps)
    last = len(weights.blocks) - 1
    for i, blk in enumerate(weights.blocks):
        h = ops.token_linear(xn.view(b, n, d), blk["tok_w1"], None, "gelu", scale=blk["tok_scale"],
                             shift=blk["tok_shift"])                    # (B, K·T, D)
        x = ops.token_linear(h, blk["tok_w2"], blk["tok_b2"], residual=x)   # (B, N, D)
        x2 = x.view(b * n, d)
        hc = ops.linear(ops.normalize(x2, eps), blk["fc1_w"], blk["fc1_b"], activation="gelu", workspace="fc1")
        out = ops.linear(hc, blk["fc2_w"], blk["fc2_b"], residual=x2, then_normalize=eps if i < last else None)
        x2, xn = out if i < last else (out, None)
        x = x2.view(b, n, d)
    pooled = ops.layer_norm(x.view(b * n, d), eps).view(b, n, d).mean(dim=1)
    return ops.linear(pooled, weights.head_w, weights.head_b)
