"""Reference Vision Transformer with K-parallel blocks (Touvron et al. 2022), plain PyTorch.

    tokens = stem(images)                                      (B, N_p, D)
    x = [cls; dist; reg_1..R; tokens] + pos_embed              (B, P + N_p, D), P prefix tokens
    x = norm_pre(x); x = blocks(x); x = norm(x)
    logits = head(fc_norm(pool(x)))                            (B, num_classes)

The defaults are the paper's models: one class token, positions for every token (pos_embed (1, 1 + N_p, D), the
timm layout; the deit layout is converted by threethings_fast.checkpoint), class-token pooling, final LayerNorm.
The variants of `ViTConfig` (registers, distillation token, no_embed_class, pre_norm, average pooling with fc_norm)
follow timm's VisionTransformer exactly, parameter names included, so timm state dicts load unchanged.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from ..configs import ViTConfig
from ..validation import check_images
from .blocks import Block, init_trunc_normal_
from .stems import build_stem


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: int, num_prefix: int = 1) -> torch.Tensor:
    """Bicubic resize of a (1, num_prefix + g*g, D) position embedding to (1, num_prefix + new_grid**2, D).
    The prefix-token positions are kept as they are (DeiT's 224 -> 384 fine-tuning recipe)."""
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
    logits (or (B, D) pooled features when num_classes == 0)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.patch_embed = build_stem(config.stem, config.patch_size, config.in_chans, d, bias=config.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if config.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d)) if config.distilled else None
        self.reg_token = nn.Parameter(torch.zeros(1, config.reg_tokens, d)) if config.reg_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, config.pos_embed_len, d))
        self.norm_pre = nn.LayerNorm(d, eps=config.norm_eps) if config.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        final = config.final_norm
        self.norm = nn.LayerNorm(d, eps=config.norm_eps) if final and not config.use_fc_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(d, eps=config.norm_eps) if final and config.use_fc_norm else nn.Identity()
        self.head = nn.Linear(d, config.num_classes) if config.num_classes > 0 else nn.Identity()
        if config.distilled:
            self.head_dist = nn.Linear(d, config.num_classes) if config.num_classes > 0 else nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Random init as in DeiT/timm (truncated normal 0.02 on linears and embeddings)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in self.prefix_parameters():
            nn.init.trunc_normal_(token, std=0.02)
        init_trunc_normal_(self)

    def prefix_parameters(self) -> list[nn.Parameter]:
        """The learned prefix tokens in sequence order: class (1, 1, D), distillation (1, 1, D), registers (1, R, D)."""
        return [t for t in (self.cls_token, self.dist_token, self.reg_token) if t is not None]

    @property
    def img_size(self) -> int:
        return self.config.img_size

    def set_img_size(self, img_size: int) -> None:
        """Adapt to a new resolution (e.g. 224 -> 384): bicubic-resize pos_embed and update the config."""
        new_config = self.config.replace(img_size=img_size)  # validates divisibility
        prefix = 0 if self.config.no_embed_class else self.config.num_prefix_tokens
        with torch.no_grad():
            self.pos_embed = nn.Parameter(resize_pos_embed(self.pos_embed.data, new_config.grid_size, prefix),
                                          requires_grad=self.pos_embed.requires_grad)
        self.config = new_config

    def _param_dtype_device(self):
        p = self.pos_embed
        return p.dtype, p.device

    def embed(self, images):
        """(B, C, H, W) -> the token sequence entering the blocks (B, P + N_p, D), norm_pre applied."""
        x = self.patch_embed(images)
        prefix = [t.expand(x.shape[0], -1, -1) for t in self.prefix_parameters()]
        if self.config.no_embed_class:
            x = torch.cat(prefix + [x + self.pos_embed], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + self.pos_embed
        return self.norm_pre(x)

    def forward_features(self, images, branch_by_branch: bool = False):
        """(B, C, H, W) -> the tokens after the blocks and the final norm (B, N, D); the norm is the identity when
        it sits after pooling (fc_norm) or is absent."""
        dtype, device = self._param_dtype_device()
        cfg = self.config
        check_images(images, in_chans=cfg.in_chans, img_size=cfg.img_size, patch_size=cfg.patch_size,
                     dtype=dtype, device=device, who="VisionTransformer")
        x = self.embed(images)
        for block in self.blocks:
            x = block.forward_branch_by_branch(x) if branch_by_branch else block(x)
        return self.norm(x)

    def forward_head(self, x):
        """Pool the final tokens (B, N, D) and apply fc_norm and the head(s)."""
        cfg = self.config
        if cfg.distilled:  # DeiT in eval: the mean of the class-token head and the distillation-token head
            return (self.head(self.fc_norm(x[:, 0])) + self.head_dist(self.fc_norm(x[:, 1]))) / 2
        pooled = x[:, 0] if cfg.global_pool == "token" else x[:, cfg.num_prefix_tokens:].mean(dim=1)
        return self.head(self.fc_norm(pooled))

    def forward(self, images, branch_by_branch: bool = False):
        return self.forward_head(self.forward_features(images, branch_by_branch))


def create_reference(config: ViTConfig) -> VisionTransformer:
    return VisionTransformer(config)
