"""The fused gMLP forward over the ops protocol (`fused.protocol`): per block 2 normalisations, the two fc1 halves,
one token GEMM that applies the gate's LayerNorm affine, its bias and the gating in its epilogue (no transposed
copies), and fc2 with the residual — 6 launches. Weights from `fold.fold_model`."""
from __future__ import annotations

import torch

from ...fused.weights import PackedModel


def forward(ops, weights: PackedModel, images: torch.Tensor) -> torch.Tensor:
    cfg = weights.config
    eps, gate_eps = cfg.norm_eps, cfg.gate_norm_eps
    x = ops.stem_tokens(images, weights.stem, None, None)             # (B, N, D)
    b, n, d = x.shape
    x2 = x.view(b * n, d)
    for blk in weights.blocks:
        xn = ops.normalize(x2, eps)
        u = ops.linear(xn, blk["fc1u_w"], blk["fc1u_b"], activation="gelu")       # (B·N, F/2)
        v = ops.linear(xn, blk["fc1v_w"], blk["fc1v_b"], activation="gelu")       # (B·N, F/2)
        half = u.shape[1]
        z = ops.token_linear(ops.normalize(v, gate_eps).view(b, n, half), blk["sgu_w"], None,
                             scale=blk["sgu_scale"], shift=blk["sgu_shift"], gate=u.view(b, n, half))
        x2 = ops.linear(z.view(b * n, half), blk["fc2_w"], blk["fc2_b"], residual=x2)
    pooled = ops.normalize(x2, eps).view(b, n, d).mean(dim=1)
    return ops.linear(pooled, weights.head_w, weights.head_b)
