"""Exact folding of a reference feed-forward-only ViT into its packed weights (float64).

Tokens: row 0 is cls_token + cls_pos_embed, the patch rows get the (resized, at fold time) position table.
Per block, x (B, N, D) with N = 1 + patches:
    x = x + fc2_w gelu(fc1_w x̂ + fc1_b) + fc2_b          x̂ = LayerNorm over D without affine; norm1's affine folded
                                                         into fc1 (the ViT's FFN fold)
    x = x + tok_w2 gelu(tok_w1 x̃[b] + tok_b1) + tok_b2    x̃ = LayerNorm over the N tokens of each channel, without
                                                         affine; norm2's affine (g, β) (N,) acts per token, i.e. on
                                                         the rows of x̃[b]: W1 (diag(g) x̃ + β 1ᵀ) = (W1 diag g) x̃ +
                                                         (W1 β) 1ᵀ, so tok_w1 = W1 diag g, tok_b1 = W1 β + c1
    logits = head_w · x̂[:, 0] + head_b                    the final LayerNorm's affine folded into the head
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...fused.weights import PackedModel
from ...stem_fold import fold_stem
from .._fold import affine_into_linear, f64, fold_channel_mlp, fold_head, linear_params, norm_affine
from .reference import FFOnly


def _positions(model: FFOnly) -> torch.Tensor:
    """(N_p, D) patch positions at the model's grid, resized in float64 as the reference resizes its table."""
    pos = f64(model.pos_encoding.pos_embed)
    grid = model.config.grid_size
    if pos.shape[-2:] != (grid, grid):
        pos = F.interpolate(pos, size=(grid, grid), mode="bilinear", align_corners=False)
    return pos.flatten(2).transpose(1, 2)[0]


@torch.no_grad()
def fold_model(model: FFOnly) -> PackedModel:
    blocks = []
    for block in model.blocks:
        w1, c1 = affine_into_linear(*norm_affine(block.norm2), *linear_params(block.mlp2.fc1))
        w2, c2 = linear_params(block.mlp2.fc2)
        blocks.append({**fold_channel_mlp([(block.norm1, block.mlp1, None)]),
                       "tok_w1": w1, "tok_b1": c1, "tok_w2": w2, "tok_b2": c2})
    head_w, head_b = fold_head(model.norm, model.head, model.config.embed_dim)
    packed = PackedModel(config=model.config, stem=fold_stem(model.patch_embed), blocks=blocks, head_w=head_w,
                         head_b=head_b)
    packed.extra.update(cls=(f64(model.cls_token) + f64(model.pos_encoding.cls_pos_embed)).reshape(-1),
                        pos=_positions(model))
    return packed
