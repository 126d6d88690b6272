"""Reference MLP-Mixer (Tolstikhin et al. 2021) with optional K-parallel blocks, plain PyTorch. The oracle.

    x = stem(images)                                              (B, N, D)      N = (img / patch)^2
    per block, K branches each (K = 1: the paper's block):
        x = x + sum_k TokenMLP_k(LN1_k(x)^T)^T                    TokenMLP: N -> D_S -> N, over tokens
        x = x + sum_k ChannelMLP_k(LN2_k(x))                      ChannelMLP: D -> D_C -> D, over channels
    logits = head(mean_N(LN(x)))                                  (B, num_classes)
MLPs are fc1 -> exact-erf GELU -> fc2. Eval semantics: no dropout, no drop-path.

Parameter layout. K = 1 is timm's `MlpMixer` exactly, so its state dicts load with strict=True:
    stem.proj.{weight,bias}
    blocks.i.norm1.{weight,bias}      blocks.i.mlp_tokens.{fc1,fc2}.{weight,bias}
    blocks.i.norm2.{weight,bias}      blocks.i.mlp_channels.{fc1,fc2}.{weight,bias}
    norm.{weight,bias}                head.{weight,bias}
K >= 2 (the parallel-block idea of Touvron et al. 2022 applied to the Mixer): branch j of block i is
    blocks.i.token_branches.j.norm, blocks.i.token_branches.j.mlp_tokens.{fc1,fc2}
    blocks.i.channel_branches.j.norm, blocks.i.channel_branches.j.mlp_channels.{fc1,fc2}
All branches of a half-block read the same x; their outputs are summed into one residual update.
"""
from __future__ import annotations

import torch
from torch import nn

from ...reference.stems import build_stem
from ...reference.blocks import Mlp
from .._layers import check_model_input, init_timm_mixer_, mix_tokens
from .config import MixerConfig


def _lecun_normal_conv_(conv: nn.Conv2d) -> None:
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    nn.init.trunc_normal_(conv.weight, std=fan_in ** -0.5)
    nn.init.zeros_(conv.bias)


class TokenMixingBranch(nn.Module):
    """LayerNorm over channels, then an MLP over tokens: (B, N, D) -> (B, N, D)."""

    def __init__(self, cfg: MixerConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp_tokens = Mlp(cfg.num_patches, cfg.tokens_dim)

    def forward(self, x):
        return mix_tokens(self.mlp_tokens, self.norm(x))


class ChannelMixingBranch(nn.Module):
    """LayerNorm, then an MLP over channels: (B, N, D) -> (B, N, D)."""

    def __init__(self, cfg: MixerConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp_channels = Mlp(cfg.embed_dim, cfg.channels_dim)

    def forward(self, x):
        return self.mlp_channels(self.norm(x))


class MixerBlock(nn.Module):
    """K token-mixing branches, then K channel-MLP branches, each half with one residual sum. K = 1 keeps timm's
    flat names (norm1, mlp_tokens, norm2, mlp_channels); K >= 2 holds the branches in two ModuleLists."""

    def __init__(self, cfg: MixerConfig):
        super().__init__()
        self.num_parallel = cfg.num_parallel
        if cfg.num_parallel == 1:
            self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
            self.mlp_tokens = Mlp(cfg.num_patches, cfg.tokens_dim)
            self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
            self.mlp_channels = Mlp(cfg.embed_dim, cfg.channels_dim)
        else:
            self.token_branches = nn.ModuleList(TokenMixingBranch(cfg) for _ in range(cfg.num_parallel))
            self.channel_branches = nn.ModuleList(ChannelMixingBranch(cfg) for _ in range(cfg.num_parallel))

    def token_mixing(self, x):
        """sum_k TokenMLP_k(LN1_k(x)^T)^T: the residual update of the first half, (B, N, D)."""
        if self.num_parallel == 1:
            return mix_tokens(self.mlp_tokens, self.norm1(x))
        return sum(branch(x) for branch in self.token_branches)

    def channel_mixing(self, x):
        """sum_k ChannelMLP_k(LN2_k(x)): the residual update of the second half, (B, N, D)."""
        if self.num_parallel == 1:
            return self.mlp_channels(self.norm2(x))
        return sum(branch(x) for branch in self.channel_branches)

    def forward(self, x):  # (B, N, D)
        x = x + self.token_mixing(x)
        return x + self.channel_mixing(x)


class MlpMixer(nn.Module):
    """The reference MLP-Mixer. forward(images (B, in_chans, img_size, img_size), the model's dtype and device)
    -> logits (B, num_classes), or the pooled features (B, D) when num_classes == 0."""

    def __init__(self, config: MixerConfig):
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.stem = build_stem(config.stem, config.patch_size, config.in_chans, d)
        self.blocks = nn.Sequential(*(MixerBlock(config) for _ in range(config.depth)))
        self.norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.head = nn.Linear(d, config.num_classes) if config.num_classes > 0 else nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Random init close to timm's (`init_timm_mixer_`), with a lecun-normal-like stem."""
        init_timm_mixer_(self, _lecun_normal_conv_)

    def forward_features(self, images):
        """(B, C, H, W) -> the pooled features (B, D): mean over tokens of the final LayerNorm's output."""
        p = self.norm.weight
        check_model_input(images, self.config, p.dtype, p.device, "MlpMixer")
        x = self.blocks(self.stem(images))
        return self.norm(x).mean(dim=1)

    def forward(self, images):
        return self.head(self.forward_features(images))
