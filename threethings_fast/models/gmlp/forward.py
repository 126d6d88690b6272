"""The fused gMLP forward over the ops protocol (`fused.protocol`): per block a normalisation, the two fc1 halves
(the gate half hands its LayerNorm'd rows on: as a normalised copy, or with norm="fused" as row statistics written
by its GEMM), one token GEMM that applies the gate's LayerNorm (norm="fused": in its main loop), its affine, its
bias and the gating (no transposed copies), and fc2 with the residual (norm="fused": it writes the row statistics
of the next block's LayerNorm) — 6 launches per block with norm="separate", 4 with norm="fused". Weights from
`fold.fold_model`."""
from __future__ import annotations

import torch

from ...fused.weights import PackedModel


def forward(ops, weights: PackedModel, images: torch.Tensor) -> torch.Tensor:
    cfg = weights.config
    eps, gate_eps = cfg.norm_eps, cfg.gate_norm_eps
    x = ops.stem_tokens(images, weights.stem, None, None)             # (B, N, D)
    b, n, d = x.shape
    x2 = x.view(b * n, d)
    xn = ops.normalize(x2, eps)
    last = len(weights.blocks) - 1
    for i, blk in enumerate(weights.blocks):
        u = ops.linear(xn, blk["fc1u_w"], blk["fc1u_b"], activation="gelu")                       # (B·N, F/2)
        _, vn = ops.linear(xn, blk["fc1v_w"], blk["fc1v_b"], activation="gelu", then_normalize=gate_eps)
        half = u.shape[1]
        z = ops.token_linear(vn.view(b, n, half), blk["sgu_w"], None, scale=blk["sgu_scale"],
                             shift=blk["sgu_shift"], gate=u.view(b, n, half))
        out = ops.linear(z.view(b * n, half), blk["fc2_w"], blk["fc2_b"], residual=x2,
                         then_normalize=eps if i < last else None)
        x2, xn = out if i < last else (out, None)
    pooled = ops.layer_norm(x2, eps).view(b, n, d).mean(dim=1)
    return ops.linear(pooled, weights.head_w, weights.head_b)
