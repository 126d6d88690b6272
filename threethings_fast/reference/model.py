"""Reference Vision Transformer with K-parallel blocks (Touvron et al. 2022), plain PyTorch.

    tokens = stem(images)                                  (B, N_p, D)
    x = [cls; tokens] + pos_embed                          (B, N_p + 1, D)
    x = blocks(x); logits = head(norm(x)[:, 0])            (B, num_classes)

pos_embed includes the class-token position (timm layout, (1, 1 + N_p, D)); the deit layout is converted by the
loaders in threethings_fast.checkpoint.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from ..configs import ViTConfig
from ..validation import check_images
from .blocks import Block
from .stems import build_stem


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: int, num_prefix: int = 1) -> torch.Tensor:
    """Bicubic resize of a (1, num_prefix + g*g, D) position embedding to (1, num_prefix + new_grid**2, D).
    The class-token position is kept as is (DeiT's 224 -> 384 fine-tuning recipe)."""
    prefix, grid_tokens = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    old_grid = math.isqrt(grid_tokens.shape[1])
    if old_grid * old_grid != grid_tokens.shape[1]:
        raise ValueError(f"position embedding has {grid_tokens.shape[1]} patch positions, not a square grid")
    if old_grid == new_grid:
        return pos_embed.clone()
    d = pos_embed.shape[-1]
    grid = grid_tokens.reshape(1, old_grid, old_grid, d).permute(0, 3, 1, 2)
    # Interpolate in float32 at least: bicubic is not implemented for every low-precision dtype on CPU.
    work_dtype = torch.promote_types(grid.dtype, torch.float32)
    grid = F.interpolate(grid.to(work_dtype), size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, d)
    return torch.cat([prefix, grid], dim=1)


class VisionTransformer(nn.Module):
    """The reference model. `forward(images)` takes (B, in_chans, img_size, img_size), returns (B, num_classes)
    logits (or (B, D) class-token features when num_classes == 0)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.patch_embed = build_stem(config.stem, config.patch_size, config.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, d))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.head = nn.Linear(d, config.num_classes) if config.num_classes > 0 else nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Random init as in DeiT/timm (truncated normal 0.02 on linears and embeddings)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def img_size(self) -> int:
        return self.config.img_size

    def set_img_size(self, img_size: int) -> None:
        """Adapt to a new resolution (e.g. 224 -> 384): bicubic-resize pos_embed and update the config."""
        new_config = self.config.replace(img_size=img_size)  # validates divisibility
        with torch.no_grad():
            self.pos_embed = nn.Parameter(resize_pos_embed(self.pos_embed.data, new_config.grid_size),
                                          requires_grad=self.pos_embed.requires_grad)
        self.config = new_config

    def _param_dtype_device(self):
        p = self.cls_token
        return p.dtype, p.device

    def forward_features(self, images, branch_by_branch: bool = False):
        """(B, C, H, W) -> the final-normed tokens (B, N, D)."""
        dtype, device = self._param_dtype_device()
        cfg = self.config
        check_images(images, in_chans=cfg.in_chans, img_size=cfg.img_size, patch_size=cfg.patch_size,
                     dtype=dtype, device=device, who="VisionTransformer")
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block.forward_branch_by_branch(x) if branch_by_branch else block(x)
        return self.norm(x)

    def forward(self, images, branch_by_branch: bool = False):
        return self.head(self.forward_features(images, branch_by_branch)[:, 0])


def create_reference(config: ViTConfig) -> VisionTransformer:
    return VisionTransformer(config)
