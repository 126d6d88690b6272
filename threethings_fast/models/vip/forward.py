"""The fused Vision Permutator forward over the ops protocol (`fused.protocol`). Weights from `fold.fold_model`.

Per Permutator block: the affine LayerNorm once; the channel projection on x̃ as it is; the height and width
projections as GEMMs on segment-permuted copies of x̃ (their rows mix positions and channels of one segment, which
no strided view of x̃ gives); the re-weighting on the per-sample means (B rows: small GEMMs); the weighted sum; the
output projection with the residual (skip_lam folded); the channel MLP as two GEMMs.
"""
from __future__ import annotations

import torch

from ...fused.weights import PackedModel


def _permute_mlp(ops, blk: dict, xt: torch.Tensor, b: int, hh: int, ww: int, segments: int) -> torch.Tensor:
    c = xt.shape[1]
    s = c // segments
    grid = xt.view(b, hh, ww, segments, s)
    rows_h = grid.permute(0, 2, 3, 1, 4).reshape(b * ww * segments, hh * s)       # (b, w, k) x (h, s)
    h = ops.linear(rows_h, blk["mlp_h_w"], blk["mlp_h_b"])
    h = h.view(b, ww, segments, hh, s).permute(0, 3, 1, 2, 4).reshape(b * hh * ww, c)
    rows_w = grid.permute(0, 1, 3, 2, 4).reshape(b * hh * segments, ww * s)       # (b, h, k) x (w, s)
    w = ops.linear(rows_w, blk["mlp_w_w"], blk["mlp_w_b"])
    w = w.view(b, hh, segments, ww, s).permute(0, 1, 3, 2, 4).reshape(b * hh * ww, c)
    cc = ops.linear(xt, blk["mlp_c_w"], blk["mlp_c_b"])
    mean = (h + w + cc).view(b, hh * ww, c).mean(dim=1)                            # (B, C)
    a = ops.linear(ops.linear(mean, blk["rw1_w"], blk["rw1_b"], activation="gelu"), blk["rw2_w"], blk["rw2_b"])
    a = a.view(b, 1, c, 3).softmax(dim=-1)
    mixed = h.view(b, hh * ww, c) * a[..., 0] + w.view(b, hh * ww, c) * a[..., 1] + cc.view(b, hh * ww, c) * a[..., 2]
    return mixed.view(b * hh * ww, c)


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
            x = ops.linear(mixed, blk["proj_w"], blk["proj_b"], residual=x)
            h = ops.linear(ops.normalize(x, eps), blk["fc1_w"], blk["fc1_b"], activation="gelu", workspace="fc1")
            x = ops.linear(h, blk["fc2_w"], blk["fc2_b"], residual=x)
        kernel = cfg.downsample_kernel(stage)
        if kernel is not None:
            x, hh, ww = _downsample(ops, next(layers), x, b, hh, ww, kernel)
    pooled = ops.normalize(x, eps).view(b, hh * ww, -1).mean(dim=1)
    return ops.linear(pooled, weights.head_w, weights.head_b)
