"""A layout-faithful rebuild of the official Vision Permutator (github.com/Andrew-Qibin/VisionPermutator,
models/vip.py), for tests only: the same module tree, parameter names and shapes, and the same forward ops in the
same order (the official permute / reshape sequence, Linear(C, C) height / width projections), in eval mode
(dropout and drop-path are identities and left out). timm's trunc_normal_ is torch's. Rewritten from reading the
official code; its constructor takes the official arguments and the factories carry the official settings.
"""
from __future__ import annotations

from torch import nn


class OfficialMlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features or in_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features or in_features, out_features or in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class WeightedPermuteMLP(nn.Module):
    def __init__(self, dim, segment_dim=8, qkv_bias=False):
        super().__init__()
        self.segment_dim = segment_dim
        self.mlp_c = nn.Linear(dim, dim, bias=qkv_bias)
        self.mlp_h = nn.Linear(dim, dim, bias=qkv_bias)
        self.mlp_w = nn.Linear(dim, dim, bias=qkv_bias)
        self.reweight = OfficialMlp(dim, dim // 4, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, H, W, C = x.shape
        g = self.segment_dim
        S = C // g
        h = x.reshape(B, H, W, g, S).permute(0, 3, 2, 1, 4).reshape(B, g, W, H * S)
        h = self.mlp_h(h).reshape(B, g, W, H, S).permute(0, 3, 2, 1, 4).reshape(B, H, W, C)
        w = x.reshape(B, H, W, g, S).permute(0, 1, 3, 2, 4).reshape(B, H, g, W * S)
        w = self.mlp_w(w).reshape(B, H, g, W, S).permute(0, 1, 3, 2, 4).reshape(B, H, W, C)
        c = self.mlp_c(x)
        a = (h + w + c).permute(0, 3, 1, 2).flatten(2).mean(2)
        a = self.reweight(a).reshape(B, C, 3).permute(2, 0, 1).softmax(dim=0).unsqueeze(2).unsqueeze(2)
        return self.proj(h * a[0] + w * a[1] + c * a[2])


class PermutatorBlock(nn.Module):
    def __init__(self, dim, segment_dim, mlp_ratio=4.0, qkv_bias=False, skip_lam=1.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WeightedPermuteMLP(dim, segment_dim=segment_dim, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = OfficialMlp(dim, int(dim * mlp_ratio))
        self.skip_lam = skip_lam

    def forward(self, x):
        x = x + self.attn(self.norm1(x)) / self.skip_lam
        return x + self.mlp(self.norm2(x)) / self.skip_lam


class PatchEmbed(nn.Module):
    def __init__(self, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x)


class Downsample(nn.Module):
    def __init__(self, in_embed_dim, out_embed_dim, patch_size):
        super().__init__()
        self.proj = nn.Conv2d(in_embed_dim, out_embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class OfficialVisionPermutator(nn.Module):
    def __init__(self, layers, patch_size=4, in_chans=3, num_classes=1000, embed_dims=None, transitions=None,
                 segment_dim=None, mlp_ratios=None, skip_lam=1.0, qkv_bias=False):
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dims[0])
        network = []
        for i in range(len(layers)):
            network.append(nn.Sequential(*[
                PermutatorBlock(embed_dims[i], segment_dim[i], mlp_ratios[i], qkv_bias, skip_lam)
                for _ in range(layers[i])]))
            if i >= len(layers) - 1:
                break
            if transitions[i] or embed_dims[i] != embed_dims[i + 1]:
                network.append(Downsample(embed_dims[i], embed_dims[i + 1], 2 if transitions[i] else 1))
        self.network = nn.ModuleList(network)
        self.norm = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        for layer in self.network:
            x = layer(x)
        B, H, W, C = x.shape
        x = self.norm(x.reshape(B, -1, C))
        return self.head(x.mean(1))


_FACTORIES = {
    "vip_s14": dict(layers=[4, 3, 8, 3], transitions=[False, False, False, False], segment_dim=[16, 16, 16, 16],
                    mlp_ratios=[3, 3, 3, 3], embed_dims=[384, 384, 384, 384], patch_size=14),
    "vip_s7": dict(layers=[4, 3, 8, 3], transitions=[True, False, False, False], segment_dim=[32, 16, 16, 16],
                   mlp_ratios=[3, 3, 3, 3], embed_dims=[192, 384, 384, 384], patch_size=7),
    "vip_m7": dict(layers=[4, 3, 14, 3], transitions=[False, True, False, False], segment_dim=[32, 32, 16, 16],
                   mlp_ratios=[3, 3, 3, 3], embed_dims=[256, 256, 512, 512], patch_size=7),
    "vip_l7": dict(layers=[8, 8, 16, 4], transitions=[True, False, False, False], segment_dim=[32, 16, 16, 16],
                   mlp_ratios=[3, 3, 3, 3], embed_dims=[256, 512, 512, 512], patch_size=7),
}


def official_model(name: str, **kwargs) -> OfficialVisionPermutator:
    """The official factory `name` (vip_s14, vip_s7, vip_m7, vip_l7) with constructor overrides."""
    return OfficialVisionPermutator(**{**_FACTORIES[name], **kwargs})


def official_from_config(cfg) -> OfficialVisionPermutator:
    """The official model with a ViPConfig's settings (valid only where the official sizing holds: grid = segments
    in every stage, and the official LayerNorm eps 1e-5)."""
    assert cfg.norm_eps == 1e-5, "the official model's LayerNorms have eps 1e-5"
    return OfficialVisionPermutator(
        list(cfg.layers), patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
        embed_dims=list(cfg.embed_dims), transitions=list(cfg.transitions), segment_dim=list(cfg.segment_dim),
        mlp_ratios=list(cfg.mlp_ratios), skip_lam=cfg.skip_lam, qkv_bias=cfg.qkv_bias)
