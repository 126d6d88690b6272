"""A layout-faithful rebuild of the official feed-forward-only ViT (github.com/lukemelas/do-you-even-need-attention,
vision_transformer_linear.py, `LinearVisionTransformer` / `LinearBlock`), for tests only: the same module tree,
parameter names, shapes and forward ops, in eval mode (dropout and drop-path are identities and left out).
Rewritten from reading the official code. One deviation: the official blocks hard-code the token count
1 + (224 // patch_size)^2; here `img_size` (default 224) replaces that 224 so tiny test models can be built.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class OfficialMlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LinearBlock(nn.Module):
    def __init__(self, dim, mlp_ratio=4.0, num_tokens=197, eps=1e-6):
        super().__init__()
        self.mlp1 = OfficialMlp(dim, int(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp2 = OfficialMlp(num_tokens, int(num_tokens * mlp_ratio))
        self.norm2 = nn.LayerNorm(num_tokens, eps=eps)

    def forward(self, x):
        x = x + self.mlp1(self.norm1(x))
        x = x.transpose(-2, -1)
        x = x + self.mlp2(self.norm2(x))
        return x.transpose(-2, -1)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x)


class LearnedPositionalEncoding(nn.Module):
    def __init__(self, height, width, embed_dim):
        super().__init__()
        self.height, self.width = height, width
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, height, width))
        self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_pos_embed, std=0.02)

    def forward(self, x):
        B, C, H, W = x.shape
        if H == self.height and W == self.width:
            pos_embed = self.pos_embed
        else:
            pos_embed = F.interpolate(self.pos_embed, size=(H, W), mode="bilinear", align_corners=False)
        return self.cls_pos_embed, pos_embed


class LinearVisionTransformer(nn.Module):
    def __init__(self, *, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12, mlp_ratio=4.0,
                 learned_positional_encoding_size=(14, 14), eps=1e-6, img_size=224):
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_encoding = LearnedPositionalEncoding(*learned_positional_encoding_size, embed_dim)
        num_tokens = 1 + (img_size // patch_size) ** 2
        self.blocks = nn.ModuleList([LinearBlock(embed_dim, mlp_ratio, num_tokens, eps) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        B = x.shape[0]
        x = self.patch_embed(x)
        cls_pos_embed, pos_embed = self.pos_encoding(x)
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = x + torch.cat([cls_pos_embed, pos_embed.flatten(2).transpose(1, 2)], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


_FACTORIES = {
    "linear_tiny": dict(patch_size=16, embed_dim=192, depth=12),
    "linear_base": dict(patch_size=16, embed_dim=768, depth=12),
    "linear_large": dict(patch_size=32, embed_dim=1024, depth=24),
}


def official_model(name: str, **kwargs) -> LinearVisionTransformer:
    """The official factory `name` (linear_tiny, linear_base, linear_large) with constructor overrides."""
    return LinearVisionTransformer(**{**_FACTORIES[name], **kwargs})


def official_from_config(cfg) -> LinearVisionTransformer:
    """The official model with an FFOnlyConfig's settings (linear stem; the official model ties the token MLP
    ratio to mlp_ratio)."""
    assert cfg.stem == "linear" and cfg.token_mlp_ratio == cfg.mlp_ratio
    g = cfg.pos_grid_size
    return LinearVisionTransformer(patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
                                   embed_dim=cfg.embed_dim, depth=cfg.depth, mlp_ratio=cfg.mlp_ratio,
                                   learned_positional_encoding_size=(g, g), eps=cfg.norm_eps, img_size=cfg.img_size)
