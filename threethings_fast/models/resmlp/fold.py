"""Exact folding of a reference ResMLP into its packed weights (float64).

Per block, branch k (Affine (α_k, β_k), token Linear (W_k (N, N), c_k), LayerScales γ1_k, γ2_k):
    x = x + Σ_k (W_k x[b]) * tok_scale_k + tok_shift_k       tok_scale_k = α_k ⊙ γ1_k (D,),
                                                              tok_shift_k = (rowsum(W_k) ⊗ β_k + c_k ⊗ 1) ⊙ γ1_k
    x = x + fc2_w gelu(fc1_w x + fc1_b) + fc2_b               Affine folded into fc1, γ2 into fc2 (no normalisation)
    logits = head_w · mean_n(x) + head_b                      the final Affine folded into the head
The token branches differ in their column scale, so K >= 2 runs one token GEMM per branch, each adding into the
previous one's output (block keys tok{k}_w / _scale / _shift); the channel branches are one GEMM pair for all K.
"""
from __future__ import annotations

import torch

from ...fused.weights import PackedModel
from ...stem_fold import fold_stem
from .._fold import f64, fold_channel_mlp, fold_head, linear_params, norm_affine, token_epilogue
from .reference import ResMLP


def _branches(block):
    if block.num_parallel == 1:
        return ([(block.norm1, block.linear_tokens, block.ls1)],
                [(block.norm2, block.mlp_channels, f64(block.ls2))])
    return ([(b.norm, b.linear_tokens, b.ls) for b in block.token_branches],
            [(b.norm, b.mlp_channels, f64(b.ls)) for b in block.channel_branches])


@torch.no_grad()
def fold_model(model: ResMLP) -> PackedModel:
    blocks = []
    for block in model.blocks:
        tokens, channels = _branches(block)
        packed = {}
        for k, (norm, linear, ls) in enumerate(tokens):
            g, beta = norm_affine(norm)
            w, c = linear_params(linear)
            gamma = f64(ls)
            scale, shift = token_epilogue(w, g, beta)
            packed[f"tok{k}_w"] = w
            packed[f"tok{k}_scale"] = scale * gamma
            packed[f"tok{k}_shift"] = (shift + c[:, None]) * gamma[None, :]
        packed.update(fold_channel_mlp(channels))
        blocks.append(packed)
    head_w, head_b = fold_head(model.norm, model.head, model.config.embed_dim)
    return PackedModel(config=model.config, stem=fold_stem(model.stem), blocks=blocks, head_w=head_w, head_b=head_b)
