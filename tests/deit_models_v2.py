"""A layout-faithful rebuild of the official deit `models_v2` ViT (DeiT III / "Three things" models) for tests.

deit is not a pip package, so `convert(deit_module)` is tested against this rebuild: the same class names,
attribute names, parameter shapes and forward semantics as deit's `vit_models`, `Attention`, `Block`,
`Layer_scale_init_Block`, `Block_paralx2`, `Layer_scale_init_Block_paralx2` and `hMLP_stem` (and timm's `Mlp` /
`PatchEmbed`, which deit imports). Notable semantics kept: positions only for the patches (the class token is
concatenated after adding pos_embed), `qk_scale` overriding head_dim^-0.5, `dropout_rate` on the class-token
features in train mode, SyncBatchNorm as the hMLP stem's default norm.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class PatchEmbed(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class hMLP_stem(nn.Module):  # noqa: N801  (deit's name)
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, norm_layer=nn.SyncBatchNorm):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.num_patches = (img_size // patch_size) ** 2
        q = embed_dim // 4
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, q, kernel_size=4, stride=4), norm_layer(q), nn.GELU(),
            nn.Conv2d(q, q, kernel_size=2, stride=2), norm_layer(q), nn.GELU(),
            nn.Conv2d(q, embed_dim, kernel_size=2, stride=2), norm_layer(embed_dim))

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(B, N, C)))


def _branches(self, dim, num_heads, mlp_ratio, qkv_bias, qk_scale, k, layer_scale, init_values, norm_layer):
    for j in range(k):
        sfx = str(j) if j else ""
        setattr(self, f"norm1{sfx}", norm_layer(dim))
        setattr(self, f"attn{sfx}", Attention(dim, num_heads, qkv_bias, qk_scale))
        setattr(self, f"norm2{sfx}", norm_layer(dim))
        setattr(self, f"mlp{sfx}", Mlp(dim, int(dim * mlp_ratio)))
    if layer_scale:
        for j in range(k):
            sfx = f"_{j}" if j else ""
            setattr(self, f"gamma_1{sfx}", nn.Parameter(init_values * torch.ones(dim)))
            setattr(self, f"gamma_2{sfx}", nn.Parameter(init_values * torch.ones(dim)))


class _DeitBlock(nn.Module):
    K = 1
    LAYER_SCALE = False

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, drop_path=0.0,
                 norm_layer=nn.LayerNorm, init_values=1e-4):
        super().__init__()
        _branches(self, dim, num_heads, mlp_ratio, qkv_bias, qk_scale, self.K, self.LAYER_SCALE, init_values,
                  norm_layer)
        self.drop_path = nn.Identity()

    def _sum(self, x, norm, core, gamma):
        total = 0
        for j in range(self.K):
            sfx = str(j) if j else ""
            out = getattr(self, f"{core}{sfx}")(getattr(self, f"{norm}{sfx}")(x))
            if self.LAYER_SCALE:
                out = getattr(self, f"{gamma}{'_' + sfx if sfx else ''}") * out
            total = total + self.drop_path(out)
        return total

    def forward(self, x):
        x = x + self._sum(x, "norm1", "attn", "gamma_1")
        return x + self._sum(x, "norm2", "mlp", "gamma_2")


class Block(_DeitBlock):
    pass


class Layer_scale_init_Block(_DeitBlock):  # noqa: N801
    LAYER_SCALE = True


class Block_paralx2(_DeitBlock):  # noqa: N801
    K = 2


class Layer_scale_init_Block_paralx2(_DeitBlock):  # noqa: N801
    K = 2
    LAYER_SCALE = True


class vit_models(nn.Module):  # noqa: N801
    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, drop_rate=0.0,
                 norm_layer=nn.LayerNorm, block_layers=Block, Patch_layer=PatchEmbed, init_scale=1e-4):
        super().__init__()
        self.dropout_rate = drop_rate
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.patch_embed = Patch_layer(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                       embed_dim=embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.blocks = nn.ModuleList(block_layers(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                                 qkv_bias=qkv_bias, qk_scale=qk_scale, norm_layer=norm_layer,
                                                 init_values=init_scale) for _ in range(depth))
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x):
        x = self.patch_embed(x) + self.pos_embed
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]

    def forward(self, x):
        x = self.forward_features(x)
        if self.dropout_rate:
            x = F.dropout(x, p=float(self.dropout_rate), training=self.training)
        return self.head(x)
