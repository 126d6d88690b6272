"""Reference feed-forward-only ViT (Melas-Kyriazi 2021, "Do You Even Need Attention?"), plain PyTorch, eval mode.

A DeiT with every attention layer replaced by an MLP over the token dimension (the official `LinearBlock`):

    x = [cls; stem(images)] + [cls_pos; pos]                 (B, N, D), N = 1 + (img/patch)^2
    per block:  x = x + MLP_c(LN_D(x))                       channel MLP  D -> r*D -> D over the features
                x = x + MLP_t(LN_N(x^T))^T                   token MLP    N -> t*N -> N over the tokens (x^T: (B, D, N))
    logits = head(LN_D(x)[:, 0])                             (B, num_classes), class-token pooling

Note the channel MLP comes first and the token LayerNorm normalises over the N tokens of each channel (its weight has
N entries). GELU is the exact erf form; LayerNorms have eps 1e-6 (the official `linear_*` factories).
The learned positions are a (1, D, g, g) table plus a class-token position (1, 1, D); a table whose side differs
from the token grid is bilinearly resized (align_corners=False) on every call, as the official code does.

Cost per block: 2*N*D*F (channel MLP) + 2*D*N*T (token MLP) MACs, F = r*D, T = t*N. Parameter names are the official
ones (patch_embed.proj, cls_token, pos_encoding.{pos_embed, cls_pos_embed}, blocks.i.{mlp1, norm1, mlp2, norm2},
norm, head), so an official state dict loads with strict=True (linear stem).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ...reference.blocks import Mlp, init_trunc_normal_
from ...reference.stems import build_stem
from ...validation import check_images
from .config import FFOnlyConfig, resolve_name


class LearnedPositionalEncoding(nn.Module):
    """Positions (1, D, g, g) for the patches and (1, 1, D) for the class token; returns (1, 1 + grid^2, D)."""

    def __init__(self, grid: int, embed_dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
        self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))

    def forward(self, grid: int):
        pos = self.pos_embed
        if pos.shape[-2:] != (grid, grid):
            pos = F.interpolate(pos, size=(grid, grid), mode="bilinear", align_corners=False)
        return torch.cat([self.cls_pos_embed, pos.flatten(2).transpose(1, 2)], dim=1)


class FeedForwardBlock(nn.Module):
    """Channel MLP then token MLP, each pre-norm with a residual, on (B, N, D). The official `LinearBlock`."""

    def __init__(self, cfg: FFOnlyConfig):
        super().__init__()
        self.mlp1 = Mlp(cfg.embed_dim, cfg.mlp_hidden)
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp2 = Mlp(cfg.num_tokens, cfg.token_mlp_hidden)
        self.norm2 = nn.LayerNorm(cfg.num_tokens, eps=cfg.norm_eps)

    def forward(self, x):  # (B, N, D)
        x = x + self.mlp1(self.norm1(x))
        t = x.transpose(1, 2)                    # (B, D, N): the token MLP mixes the N tokens of each channel
        t = t + self.mlp2(self.norm2(t))
        return t.transpose(1, 2)


class FFOnly(nn.Module):
    """The reference feed-forward-only ViT. forward(images (B, in_chans, img_size, img_size), the model's dtype)
    -> (B, num_classes) logits ((B, D) class-token features when num_classes == 0)."""

    def __init__(self, config: FFOnlyConfig):
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.patch_embed = build_stem(config.stem, config.patch_size, config.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_encoding = LearnedPositionalEncoding(config.pos_grid_size, d)
        self.blocks = nn.ModuleList(FeedForwardBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.head = nn.Linear(d, config.num_classes) if config.num_classes > 0 else nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """The official init: truncated normal 0.02 on the tokens, positions and every Linear; zero biases; unit
        LayerNorms; the stem keeps PyTorch's default."""
        for p in (self.cls_token, self.pos_encoding.pos_embed, self.pos_encoding.cls_pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        init_trunc_normal_(self)

    def forward_tokens(self, images):
        """(B, C, H, W) -> the tokens after the blocks and the final LayerNorm (B, N, D)."""
        cfg = self.config
        check_images(images, in_chans=cfg.in_chans, img_size=cfg.img_size, patch_size=cfg.patch_size,
                     dtype=self.cls_token.dtype, device=self.cls_token.device, who="FFOnly")
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_encoding(cfg.grid_size)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_features(self, images):
        """(B, C, H, W) -> the pooled features (B, D): the class token after the final norm."""
        return self.forward_tokens(images)[:, 0]

    def forward(self, images):
        return self.head(self.forward_features(images))


def create_reference(config) -> FFOnly:
    """A randomly initialised reference model from an FFOnlyConfig or a model name."""
    return FFOnly(resolve_name(config) if isinstance(config, str) else config)
