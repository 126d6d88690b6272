"""The fused MLP-Mixer forward over the ops protocol (`fused.protocol`): per block 2 normalisations, 2 token GEMMs
(no transposed copies), 2 channel GEMMs — 6 launches whatever K is. Weights from `fold.fold_model`."""
from __future__ import annotations

import torch

from ...fused.weights import PackedModel


def forward(ops, weights: PackedModel, images: torch.Tensor) -> torch.Tensor:
    cfg = weights.config
    eps = cfg.norm_eps
    x = ops.stem_tokens(images, weights.stem, None, None)             # (B, N, D)
    b, n, d = x.shape
    for blk in weights.blocks:
        xn = ops.normalize(x.view(b * n, d), eps).view(b, n, d)
        h = ops.token_linear(xn, blk["tok_w1"], None, "gelu", scale=blk["tok_scale"],
                             shift=blk["tok_shift"])                    # (B, K·T, D)
        x = ops.token_linear(h, blk["tok_w2"], blk["tok_b2"], residual=x)   # (B, N, D)
        x2 = x.view(b * n, d)
        hc = ops.linear(ops.normalize(x2, eps), blk["fc1_w"], blk["fc1_b"], activation="gelu", workspace="fc1")
        x = ops.linear(hc, blk["fc2_w"], blk["fc2_b"], residual=x2).view(b, n, d)
    pooled = ops.normalize(x.view(b * n, d), eps).view(b, n, d).mean(dim=1)
    return ops.linear(pooled, weights.head_w, weights.head_b)
