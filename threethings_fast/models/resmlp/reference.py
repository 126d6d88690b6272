"""Reference ResMLP (Touvron et al. 2021) with optional K-parallel blocks, plain PyTorch. The oracle.

    x = stem(images)                                              (B, N, D)      N = (img / patch)^2
    Aff(x) = alpha * x + beta                                     per channel, alpha and beta (1, 1, D)
    per block, K branches each (K = 1: the paper's block):
        x = x + sum_k ls1_k * (W_k Aff1_k(x) + b_k)               W_k (N, N), b_k (N,): one Linear over tokens
        x = x + sum_k ls2_k * MLP_k(Aff2_k(x))                    MLP: D -> 4D -> D, exact-erf GELU
    logits = head(mean_N(Aff(x)))                                 (B, num_classes)
ls1, ls2 (D,) are LayerScale (paper init 0.1 / 1e-5 / 1e-6 for depth 12 / 24 / 36). Eval semantics.

Parameter layout. K = 1 is timm's `MlpMixer(block_layer=ResBlock, norm_layer=Affine)` exactly:
    stem.proj.{weight,bias}
    blocks.i.norm1.{alpha,beta}   blocks.i.linear_tokens.{weight,bias}   blocks.i.ls1
    blocks.i.norm2.{alpha,beta}   blocks.i.mlp_channels.{fc1,fc2}.{weight,bias}   blocks.i.ls2
    norm.{alpha,beta}             head.{weight,bias}
K >= 2 (the parallel-block idea of Touvron et al. 2022 applied to ResMLP): branch j of block i is
    blocks.i.token_branches.j.{norm.{alpha,beta}, linear_tokens.{weight,bias}, ls}
    blocks.i.channel_branches.j.{norm.{alpha,beta}, mlp_channels.{fc1,fc2}, ls}
All branches of a half-block read the same x; their outputs are summed into one residual update.
"""
from __future__ import annotations

import torch
from torch import nn

from ...reference.stems import build_stem
from ...reference.blocks import Mlp
from .._layers import Affine, check_model_input, init_linear_, mix_tokens
from .config import ResMLPConfig


class TokenMixingBranch(nn.Module):
    """ls * LinearOverTokens(Affine(x)): (B, N, D) -> (B, N, D)."""

    def __init__(self, cfg: ResMLPConfig):
        super().__init__()
        self.norm = Affine(cfg.embed_dim)
        self.linear_tokens = nn.Linear(cfg.num_patches, cfg.num_patches)
        self.ls = nn.Parameter(torch.full((cfg.embed_dim,), float(cfg.init_values)))

    def forward(self, x):
        return self.ls * mix_tokens(self.linear_tokens, self.norm(x))


class ChannelMixingBranch(nn.Module):
    """ls * MLP(Affine(x)) over channels: (B, N, D) -> (B, N, D)."""

    def __init__(self, cfg: ResMLPConfig):
        super().__init__()
        self.norm = Affine(cfg.embed_dim)
        self.mlp_channels = Mlp(cfg.embed_dim, cfg.channels_dim)
        self.ls = nn.Parameter(torch.full((cfg.embed_dim,), float(cfg.init_values)))

    def forward(self, x):
        return self.ls * self.mlp_channels(self.norm(x))


class ResBlock(nn.Module):
    """K token-mixing branches, then K channel-MLP branches, each half with one residual sum. K = 1 keeps timm's
    flat names (norm1, linear_tokens, ls1, norm2, mlp_channels, ls2); K >= 2 holds the branches in two ModuleLists."""

    def __init__(self, cfg: ResMLPConfig):
        super().__init__()
        self.num_parallel = cfg.num_parallel
        d, n = cfg.embed_dim, cfg.num_patches
        if cfg.num_parallel == 1:
            self.norm1 = Affine(d)
            self.linear_tokens = nn.Linear(n, n)
            self.norm2 = Affine(d)
            self.mlp_channels = Mlp(d, cfg.channels_dim)
            self.ls1 = nn.Parameter(torch.full((d,), float(cfg.init_values)))
            self.ls2 = nn.Parameter(torch.full((d,), float(cfg.init_values)))
        else:
            self.token_branches = nn.ModuleList(TokenMixingBranch(cfg) for _ in range(cfg.num_parallel))
            self.channel_branches = nn.ModuleList(ChannelMixingBranch(cfg) for _ in range(cfg.num_parallel))

    def token_mixing(self, x):
        """sum_k ls1_k * LinearTokens_k(Aff1_k(x)): the residual update of the first half, (B, N, D)."""
        if self.num_parallel == 1:
            return self.ls1 * mix_tokens(self.linear_tokens, self.norm1(x))
        return sum(branch(x) for branch in self.token_branches)

    def channel_mixing(self, x):
        """sum_k ls2_k * MLP_k(Aff2_k(x)): the residual update of the second half, (B, N, D)."""
        if self.num_parallel == 1:
            return self.ls2 * self.mlp_channels(self.norm2(x))
        return sum(branch(x) for branch in self.channel_branches)

    def forward(self, x):  # (B, N, D)
        x = x + self.token_mixing(x)
        return x + self.channel_mixing(x)


class ResMLP(nn.Module):
    """The reference ResMLP. forward(images (B, in_chans, img_size, img_size), the model's dtype and device)
    -> logits (B, num_classes), or the pooled features (B, D) when num_classes == 0."""

    def __init__(self, config: ResMLPConfig):
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.stem = build_stem(config.stem, config.patch_size, config.in_chans, d)
        self.blocks = nn.Sequential(*(ResBlock(config) for _ in range(config.depth)))
        self.norm = Affine(d)
        self.head = nn.Linear(d, config.num_classes) if config.num_classes > 0 else nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Random init as the official code: truncated normal 0.02 on linears, zero biases; Affine (1, 0) and
        LayerScale init_values are set at construction."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                init_linear_(m)

    def forward_features(self, images):
        """(B, C, H, W) -> the pooled features (B, D): mean over tokens of the final Affine's output."""
        p = self.norm.alpha
        check_model_input(images, self.config, p.dtype, p.device, "ResMLP")
        x = self.blocks(self.stem(images))
        return self.norm(x).mean(dim=1)

    def forward(self, images):
        return self.head(self.forward_features(images))
