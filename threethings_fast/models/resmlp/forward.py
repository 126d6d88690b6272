"""The fused ResMLP forward over the ops protocol (`fused.protocol`): no normalisation at all (the Affines are
folded), per block K token GEMMs (no transposed copies) and one channel GEMM pair — 3 launches at K = 1.
Weights from `fold.fold_model`."""
from __future__ import annotations

import torch

from ...fused.weights import PackedModel


def forward(ops, weights: PackedModel, images: torch.Tensor) -> torch.Tensor:
    k_branches = weights.config.num_parallel
    x = ops.stem_tokens(images, weights.stem, None, None)             # (B, N, D)
    b, n, d = x.shape
    for blk in weights.blocks:
        update = x
        for k in range(k_branches):   # every branch reads the block input x; the sum accumulates in `update`
            update = ops.token_linear(x, blk[f"tok{k}_w"], None, scale=blk[f"tok{k}_scale"],
                                      shift=blk[f"tok{k}_shift"], residual=update)
        x2 = update.view(b * n, d)
        h = ops.linear(x2, blk["fc1_w"], blk["fc1_b"], activation="gelu", workspace="fc1")
        x = ops.linear(h, blk["fc2_w"], blk["fc2_b"], residual=x2).view(b, n, d)
    return ops.linear(x.mean(dim=1), weights.head_w, weights.head_b)
