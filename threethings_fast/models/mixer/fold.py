"""Exact folding of a reference MLP-Mixer into its packed weights (float64).

Per block with K branches (token MLP N -> T -> N, channel MLP D -> C -> D), x̂ = LayerNorm(x) without affine:
    h   = gelu((W1 x̂[b]) * tok_scale + tok_shift)             tok_w1 (K·T, N): the branches' fc1 stacked; the
                                                                LayerNorm affine (g_k, β_k) of branch k folded as
                                                                scale g_k on its rows, shift rowsum(W1_k) ⊗ β_k
                                                                + c1_k ⊗ 1 (fc1's bias, one value per row)
    x   = x + tok_w2 h[b] + tok_b2                             tok_w2 (N, K·T) = [W2_1 | … | W2_K], tok_b2 = Σ_k c2_k
    x   = x + fc2_w gelu(fc1_w x̂ + fc1_b) + fc2_b             the channel branches as in the ViT's FFN fold
    logits = head_w · mean_n(x̂) + head_b                       the final LayerNorm's affine folded into the head
tok_scale is (D,) for K = 1 and (K·T, D) (each branch's g on its T rows) for K >= 2.
"""
from __future__ import annotations

import torch

from ...fused.weights import PackedModel
from ...stem_fold import fold_stem
from .._fold import fold_channel_mlp, fold_head, linear_params, norm_affine, token_epilogue
from .reference import MlpMixer


def _branches(block):
    if block.num_parallel == 1:
        return [(block.norm1, block.mlp_tokens)], [(block.norm2, block.mlp_channels, None)]
    return ([(b.norm, b.mlp_tokens) for b in block.token_branches],
            [(b.norm, b.mlp_channels, None) for b in block.channel_branches])


def fold_token_mlps(branches) -> dict:
    w1s, scales, shifts, w2s, b2 = [], [], [], [], 0
    for norm, mlp in branches:
        g, beta = norm_affine(norm)
        w1, c1 = linear_params(mlp.fc1)
        scale, shift = token_epilogue(w1, g, beta)
        w2, c2 = linear_params(mlp.fc2)
        w1s.append(w1)
        scales.append(scale[None, :].expand(w1.shape[0], -1))
        shifts.append(shift + c1[:, None])     # the row bias joins the shift: one epilogue operand
        w2s.append(w2)
        b2 = b2 + c2
    scale = scales[0][0] if len(branches) == 1 else torch.cat(scales, 0)
    return {"tok_w1": torch.cat(w1s, 0), "tok_scale": scale,
            "tok_shift": torch.cat(shifts, 0), "tok_w2": torch.cat(w2s, 1), "tok_b2": b2}


@torch.no_grad()
def fold_model(model: MlpMixer) -> PackedModel:
    blocks = []
    for block in model.blocks:
        tokens, channels = _branches(block)
        blocks.append({**fold_token_mlps(tokens), **fold_channel_mlp(channels)})
    head_w, head_b = fold_head(model.norm, model.head, model.config.embed_dim)
    return PackedModel(config=model.config, stem=fold_stem(model.stem), blocks=blocks, head_w=head_w, head_b=head_b)
