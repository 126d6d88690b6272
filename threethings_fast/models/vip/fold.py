"""Exact folding of a reference Vision Permutator into its packed weights (float64).

Tokens are rows of x (B·H·W, C) in grid order (the patch stem is a linear stem of patch p). Per Permutator block:
    x̃ = LayerNorm(x) with norm1's affine: the height / width projections mix (position, channel-in-segment) pairs of
         every segment with one weight, so a per-channel scale cannot fold into them (it would need one weight copy
         per segment); the affine is applied once and x̃ feeds all three projections
    h, w, c = the projections of x̃ (mlp_h / mlp_w on the segment-permuted rows, mlp_c on x̃ itself)
    a = softmax over the 3 of reweight(mean_tokens(h + w + c))           (B, C, 3)
    x = x + proj_w (h·a0 + w·a1 + c·a2) + proj_b                        proj_w, proj_b = proj / skip_lam
    x = x + fc2_w gelu(fc1_w x̂ + fc1_b) + fc2_b                         norm2's affine in fc1, 1/skip_lam in fc2
Downsample: a k×k, stride-k convolution on channels-last tokens = a GEMM over the k·k·C values of each output cell,
    columns ordered (ky, kx, c) (`down_w` (C_out, k·k·C_in)).
Head: mean over tokens of x̂ (final LayerNorm without affine), the affine folded into head_w / head_b.
"""
from __future__ import annotations

import torch

from ...fused.weights import PackedModel
from ...stem_fold import LinearStemFold
from .._fold import f64, fold_channel_mlp, fold_head, linear_params, norm_affine
from .reference import Downsample, VisionPermutator


def _block(block, skip_lam: float) -> dict:
    attn = block.attn
    g, beta = norm_affine(block.norm1)
    proj_w, proj_b = linear_params(attn.proj)
    mlp = fold_channel_mlp([(block.norm2, block.mlp, None)])
    packed = {"ln1_w": g, "ln1_b": beta,
              "proj_w": proj_w / skip_lam, "proj_b": proj_b / skip_lam,
              "rw1_w": f64(attn.reweight.fc1.weight), "rw1_b": f64(attn.reweight.fc1.bias),
              "rw2_w": f64(attn.reweight.fc2.weight), "rw2_b": f64(attn.reweight.fc2.bias),
              "fc1_w": mlp["fc1_w"], "fc1_b": mlp["fc1_b"],
              "fc2_w": mlp["fc2_w"] / skip_lam, "fc2_b": mlp["fc2_b"] / skip_lam}
    for name in ("mlp_h", "mlp_w", "mlp_c"):
        w, c = linear_params(getattr(attn, name))
        packed[f"{name}_w"], packed[f"{name}_b"] = w, c
    return packed


def _downsample(layer: Downsample) -> dict:
    w = f64(layer.proj.weight)                                   # (C_out, C_in, k, k)
    return {"down_w": w.permute(0, 2, 3, 1).reshape(w.shape[0], -1), "down_b": f64(layer.proj.bias)}


@torch.no_grad()
def fold_model(model: VisionPermutator) -> PackedModel:
    """Blocks are packed in network order; a downsample layer becomes a dict holding `down_w` / `down_b` (its kernel
    size is the config's `downsample_kernel`)."""
    cfg = model.config
    layers = []
    for layer in model.network:
        if isinstance(layer, Downsample):
            layers.append(_downsample(layer))
        else:
            layers.extend(_block(block, cfg.skip_lam) for block in layer)
    conv = model.patch_embed.proj
    w = f64(conv.weight)
    stem = LinearStemFold(weight=w.reshape(w.shape[0], -1), bias=f64(conv.bias), patch=cfg.patch_size)
    head_w, head_b = fold_head(model.norm, model.head, cfg.num_features)
    return PackedModel(config=cfg, stem=stem, blocks=layers, head_w=head_w, head_b=head_b)
