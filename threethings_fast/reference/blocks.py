"""Reference transformer blocks: plain PyTorch, readable, slow on purpose. The oracle for every fused path.

A `Block` holds K attention branches and K MLP branches that read the same input (the paper's parallel block):

    x = x + sum_k ls1_k * Attn_k(LN1_k(x))
    x = x + sum_k ls2_k * MLP_k(LN2_k(x))

K = 1 is the ordinary sequential ViT block. Branches are stored as `attns[j]` / `ffns[j]` so code can find them
by role (see threethings_fast.finetune), whatever K is.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..configs import ViTConfig


class LayerScale(nn.Module):
    """Per-channel residual scale gamma (CaiT / DeiT III). Parameter named `gamma` as in timm and deit."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x):
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention. qkv rows are ordered (q, k, v), heads contiguous inside each (timm/deit layout)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # x: (B, N, D)
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                          # (B, H, N, d) each
        attn = (q * self.scale) @ k.transpose(-2, -1)             # (B, H, N, N)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, N, D)
        return self.proj(out)


class Mlp(nn.Module):
    """fc1 -> exact-erf GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@torch.no_grad()
def init_trunc_normal_(module: nn.Module) -> None:
    """DeiT / timm init of every submodule: truncated normal (std 0.02) Linear weights, zero biases, unit
    LayerNorms. Used by the ViT reference and the MLP families that follow the DeiT recipe (ViP, FF-only)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _layer_scale(dim: int, init_values: Optional[float]) -> nn.Module:
    return LayerScale(dim, init_values) if init_values is not None else nn.Identity()


class AttnBranch(nn.Module):
    """One attention branch: LayerNorm -> MHSA -> LayerScale (timm's `attns.j` layout)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias)
        self.ls = _layer_scale(cfg.embed_dim, cfg.init_values)

    def forward(self, x):
        return self.ls(self.attn(self.norm(x)))


class FFNBranch(nn.Module):
    """One MLP branch: LayerNorm -> MLP -> LayerScale (timm's `ffns.j` layout)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_hidden)
        self.ls = _layer_scale(cfg.embed_dim, cfg.init_values)

    def forward(self, x):
        return self.ls(self.mlp(self.norm(x)))


class Block(nn.Module):
    """K parallel attention branches, then K parallel MLP branches, each with its own residual sum."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.attns = nn.ModuleList(AttnBranch(cfg) for _ in range(cfg.num_parallel))
        self.ffns = nn.ModuleList(FFNBranch(cfg) for _ in range(cfg.num_parallel))

    def forward(self, x):
        x = x + sum(branch(x) for branch in self.attns)
        x = x + sum(branch(x) for branch in self.ffns)
        return x

    def forward_branch_by_branch(self, x):
        """The same block executed as 2K sequential residual updates of the *same input* — the x2 model run
        "sequentially" in the paper's Table 4 sense (one launch chain per branch). Mathematically equal to forward."""
        update = torch.zeros_like(x)
        for branch in self.attns:
            update = update + branch(x)
        x = x + update
        update = torch.zeros_like(x)
        for branch in self.ffns:
            update = update + branch(x)
        return x + update
