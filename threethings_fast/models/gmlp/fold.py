"""Exact folding of a reference gMLP into its packed weights (float64).

Per block (fc1 D -> F, spatial gating unit over F/2 channels with LayerNorm (g, β) and token projection
(W_s (N, N), c_s), fc2 F/2 -> D), x̂ = LayerNorm(x) and v̂ = LayerNorm(v) without affine:
    u = gelu(fc1u_w x̂ + fc1u_b), v = gelu(fc1v_w x̂ + fc1v_b)   fc1's two halves, the block LayerNorm folded in:
                                                                 two GEMMs so that u and v are contiguous rows
    z = ((W_s v̂[b]) * sgu_scale + sgu_shift) * u[b]             sgu_scale = g, sgu_shift = rowsum(W_s) ⊗ β + c_s ⊗ 1:
                                                                 the gate's LayerNorm affine through the token
                                                                 GEMM, and the projection's bias
    x = x + fc2_w z + fc2_b
    logits = head_w · mean_n(x̂) + head_b
"""
from __future__ import annotations

import torch

from ...fused.weights import PackedModel
from ...stem_fold import fold_stem
from .._fold import affine_into_linear, fold_head, linear_params, norm_affine, token_epilogue
from .reference import GMLP


@torch.no_grad()
def fold_model(model: GMLP) -> PackedModel:
    half = model.config.gate_dim
    blocks = []
    for block in model.blocks:
        mlp = block.mlp_channels
        w1, c1 = affine_into_linear(*norm_affine(block.norm), *linear_params(mlp.fc1))
        w_s, c_s = linear_params(mlp.gate.proj)
        scale, shift = token_epilogue(w_s, *norm_affine(mlp.gate.norm))
        w2, c2 = linear_params(mlp.fc2)
        blocks.append({"fc1u_w": w1[:half], "fc1u_b": c1[:half], "fc1v_w": w1[half:], "fc1v_b": c1[half:],
                       "sgu_w": w_s, "sgu_scale": scale, "sgu_shift": shift + c_s[:, None],
                       "fc2_w": w2, "fc2_b": c2})
    head_w, head_b = fold_head(model.norm, model.head, model.config.embed_dim)
    return PackedModel(config=model.config, stem=fold_stem(model.stem), blocks=blocks, head_w=head_w, head_b=head_b)
