"""Reference gMLP (Liu et al. 2021, "Pay Attention to MLPs"), plain PyTorch. The oracle.

    x = stem(images)                                              (B, N, D)      N = (img / patch)^2
    per block:
        z = GELU(fc1(LN(x)))                                      (B, N, F)      exact-erf GELU
        u, v = z[..., :F/2], z[..., F/2:]                         (B, N, F/2) each
        v = W LN_g(v) + b                                         W (N, N), b (N,): a Linear over tokens
        x = x + fc2(u * v)                                        fc2: F/2 -> D
    logits = head(mean_N(LN(x)))                                  (B, num_classes)
The spatial projection starts near zero with bias 1, so a fresh block is close to an ordinary MLP (u * 1). Eval
semantics. No K-parallel variant: the gating unit already sits inside the channel MLP.

Parameter layout, timm's `MlpMixer(block_layer=SpatialGatingBlock, mlp_layer=GatedMlp)` exactly:
    stem.proj.{weight,bias}
    blocks.i.norm.{weight,bias}
    blocks.i.mlp_channels.fc1.{weight,bias}
    blocks.i.mlp_channels.gate.norm.{weight,bias}     blocks.i.mlp_channels.gate.proj.{weight,bias}
    blocks.i.mlp_channels.fc2.{weight,bias}
    norm.{weight,bias}                                head.{weight,bias}
"""
from __future__ import annotations

import torch
from torch import nn

from ...reference.stems import build_stem
from .._layers import check_model_input, init_linear_, init_timm_mixer_, mix_tokens
from .config import GMLPConfig


class SpatialGatingUnit(nn.Module):
    """(B, N, F) -> (B, N, F/2): u * proj_over_tokens(LN(v)) with u, v the two channel halves."""

    def __init__(self, cfg: GMLPConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.gate_dim, eps=cfg.gate_norm_eps)
        self.proj = nn.Linear(cfg.num_patches, cfg.num_patches)

    def forward(self, z):
        u, v = z.chunk(2, dim=-1)
        return u * mix_tokens(self.proj, self.norm(v))


class GatedMlp(nn.Module):
    """fc1 (D -> F) -> exact-erf GELU -> spatial gating (F -> F/2) -> fc2 (F/2 -> D)."""

    def __init__(self, cfg: GMLPConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.ffn_dim)
        self.act = nn.GELU()
        self.gate = SpatialGatingUnit(cfg)
        self.fc2 = nn.Linear(cfg.gate_dim, cfg.embed_dim)

    def forward(self, x):
        return self.fc2(self.gate(self.act(self.fc1(x))))


class SpatialGatingBlock(nn.Module):
    """x + GatedMlp(LN(x)): (B, N, D) -> (B, N, D)."""

    def __init__(self, cfg: GMLPConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp_channels = GatedMlp(cfg)

    def forward(self, x):
        return x + self.mlp_channels(self.norm(x))


class GMLP(nn.Module):
    """The reference gMLP. forward(images (B, in_chans, img_size, img_size), the model's dtype and device)
    -> logits (B, num_classes), or the pooled features (B, D) when num_classes == 0."""

    def __init__(self, config: GMLPConfig):
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.stem = build_stem(config.stem, config.patch_size, config.in_chans, d)
        self.blocks = nn.Sequential(*(SpatialGatingBlock(config) for _ in range(config.depth)))
        self.norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.head = nn.Linear(d, config.num_classes) if config.num_classes > 0 else nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Random init close to timm's: Xavier-uniform linears, unit norms; the spatial projection per the paper
        (weights ~ 0, bias 1); a small random head (timm's is zero) so fresh logits depend on the input."""
        init_timm_mixer_(self, init_linear_)
        for block in self.blocks:
            nn.init.trunc_normal_(block.mlp_channels.gate.proj.weight, std=1e-6)
            nn.init.ones_(block.mlp_channels.gate.proj.bias)

    def forward_features(self, images):
        """(B, C, H, W) -> the pooled features (B, D): mean over tokens of the final LayerNorm's output."""
        p = self.norm.weight
        check_model_input(images, self.config, p.dtype, p.device, "GMLP")
        x = self.blocks(self.stem(images))
        return self.norm(x).mean(dim=1)

    def forward(self, images):
        return self.head(self.forward_features(images))
