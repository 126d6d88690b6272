"""The fused Vision Permutator forward over the ops protocol (`fused.protocol`). Weights from `fold.fold_model`.

Per Permutator block: the affine LayerNorm once; the height, width and channel projections of x̃ in one
`permute_projections` call, which hands back [h, w, c] (3, B, H, W, C) in the token layout (the Triton backend
reads x̃ and writes the three outputs through index math: no segment-permuted copy of x̃, h or w); the re-weighting
on the per-sample means of h + w + c (B rows: small GEMMs); the weighted sum; the output projection with the
residual (skip_lam folded), which hands on the channel MLP's LayerNorm (norm="fused": as row statistics of its
output); the channel MLP as two GEMMs.
"""
from __future__ import annotations

import torch

from ...fused.weights import PackedModel


def _permute_mlp(ops, blk: dict, xt: torch.Tensor, b: int, hh: int, ww: int, segments: int) -> torch.Tensor:
    c = xt.shape[1]
    n = hh * ww
    hwc = ops.permute_projections(xt.view(b, hh, ww, c), blk["mlp_h_w"], blk["mlp_h_b"], blk["mlp_w_w"],
                                  blk["mlp_w_b"], blk["mlp_c_w"], blk["mlp_c_b"], segments).view(3, b, n, c)
    # mean_tokens(h + w + c): per-branch token sums (3, B, C), accumulated and added in at least fp32 (h, w and c
    # may largely cancel), then the branches; h + w + c is never materialised
    wide = torch.promote_types(hwc.dtype, torch.float32)
    mean = (hwc.sum(dim=2, dtype=wide).sum(dim=0) / n).to(hwc.dtype)                   # (B, C)
    a = ops.linear(ops.linear(mean, blk["rw1_w"], blk["rw1_b"], activation="gelu"), blk["rw2_w"], blk["rw2_b"])
    a = a.view(b, c, 3).softmax(dim=-1).permute(2, 0, 1).unsqueeze(2)                   # (3, B, 1, C)
    # h·a0 + w·a1 + c·a2 in place: one output pass per branch and no (3, B, N, C) temporary (the CPU measured a
    # broadcast product + sum over the branches 5x slower at ViP-S/7 stage 1, batch 16)
    mixed = torch.mul(hwc[0], a[0])
    return mixed.addcmul_(hwc[1], a[1]).addcmul_(hwc[2], a[2]).view(b * n, c)


def _downsample(ops, blk: dict, x: torch.Tensor, b: int, hh: int, ww: int, k: int):
    c = x.shape[1]
    if k > 1:
        x = x.view(b, hh // k, k, ww // k, k, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, k * k * c)
    return ops.linear(x, blk["down_w"], blk["down_b"]), hh // k, ww // k


def forward(ops, weights: PackedModel, images: torch.Tensor) -> torch.Tensor:
    cfg = weights.config
    eps = cfg.norm_eps
    tokens = ops.stem_tokens(images, weights.stem, None, None)                    # (B, H0·W0, C0)
    b = tokens.shape[0]
    hh = ww = cfg.img_size // cfg.patch_size
    x = tokens.reshape(-1, tokens.shape[-1])
    layers = iter(weights.blocks)
    for stage in range(cfg.num_stages):
        for _ in range(cfg.layers[stage]):
            blk = next(layers)
            xt = ops.layer_norm(x, eps, blk["ln1_w"], blk["ln1_b"])
            mixed = _permute_mlp(ops, blk, xt, b, hh, ww, cfg.segment_dim[stage])
            x, xn = ops.linear(mixed, blk["proj_w"], blk["proj_b"], residual=x, then_normalize=eps)
            h = ops.linear(xn, blk["fc1_w"], blk["fc1_b"], activation="gelu", workspace="fc1")
            x = ops.linear(h, blk["fc2_w"], blk["fc2_b"], residual=x)
        kernel = cfg.downsample_kernel(stage)
        if kernel is not None:
            x, hh, ww = _downsample(ops, next(layers), x, b, hh, ww, kernel)
    pooled = ops.layer_norm(x, eps).view(b, hh * ww, -1).mean(dim=1)
    return ops.linear(pooled, weights.head_w, weights.head_b)
