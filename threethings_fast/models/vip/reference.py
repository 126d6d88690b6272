"""Reference Vision Permutator (Hou et al., TPAMI 2022), plain PyTorch, eval-mode semantics.

Tokens live on a 2-D grid, x: (B, H, W, C). C is split into g = segment_dim segments of S = C / g channels.

    x = patch_embed(images)                                  (B, H0, W0, C0), Conv k = s = patch_size
    per stage i: Permutator blocks, then Downsample (Conv k = s = 2 at a transition, 1x1 for a width change)
    Permutator:  x = x + PermuteMLP(LN1(x)) / skip_lam
                 x = x + MLP(LN2(x)) / skip_lam               MLP: C -> r*C -> C, exact-erf GELU
    logits = head(mean_{h,w} LN(x))                          (B, num_classes)

PermuteMLP (the official `WeightedPermuteMLP`), with x[b, h, w, k*S + s] for segment k, channel s of it:
    h_out[b, :, w, k, :] = mlp_h(x[b, :, w, k, :] flattened to H*S (h-major))    height mixing per (w, segment)
    w_out[b, h, :, k, :] = mlp_w(x[b, h, :, k, :] flattened to W*S (w-major))    width mixing per (h, segment)
    c_out = mlp_c(x)                                                              channel mixing per token
    a = reweight(mean_{h,w}(h_out + w_out + c_out))  (B, 3C) read as (B, C, 3); softmax over the 3
    out = proj(h_out * a[..., 0] + w_out * a[..., 1] + c_out * a[..., 2])
mlp_h is Linear(H*S, H*S) and mlp_w Linear(W*S, W*S). The official code writes Linear(C, C) for both, which is the
same thing whenever H = W = g, as in every paper model at 224 (e.g. ViP-S/7 stage 1: 32x32 grid, g = 32, S = 6);
sizing them from the grid keeps the same math at any resolution (the segment count g stays fixed, so a segment's
projection simply sees more or fewer positions). Official weights only fit the resolution they were trained at.

Cost per block (N = H*W tokens, hidden F = r*C): mlp_c + proj 2*N*C^2, mlp_h N*C*H*S, mlp_w N*C*W*S, MLP 2*N*C*F
MACs; the reweight MLP runs once per image (C*C/4 + C/4*3C). Parameter names are the official ones (network.i.j...),
so an official state dict loads with strict=True.
"""
from __future__ import annotations

import torch
from torch import nn

from ...reference.blocks import Mlp, init_trunc_normal_
from ...validation import check_images
from .config import ViPConfig, resolve_name


class ReweightMlp(nn.Module):
    """The branch re-weighting MLP: C -> C/4 -> GELU -> 3C, output index c*3 + branch (official names fc1 / fc2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // 4)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim // 4, 3 * dim)

    def forward(self, x):  # (B, C) -> (B, 3C)
        return self.fc2(self.act(self.fc1(x)))


class PermuteMLP(nn.Module):
    """Weighted Permute-MLP on (B, H, W, C) tokens; `grid` = (H, W) sizes the height / width projections."""

    def __init__(self, dim: int, segment_dim: int, grid: tuple, qkv_bias: bool = False):
        super().__init__()
        self.segment_dim = segment_dim
        self.seg_width = dim // segment_dim
        height, width = grid
        self.mlp_c = nn.Linear(dim, dim, bias=qkv_bias)
        self.mlp_h = nn.Linear(height * self.seg_width, height * self.seg_width, bias=qkv_bias)
        self.mlp_w = nn.Linear(width * self.seg_width, width * self.seg_width, bias=qkv_bias)
        self.reweight = ReweightMlp(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # (B, H, W, C) -> (B, H, W, C)
        B, H, W, C = x.shape
        g, S = self.segment_dim, self.seg_width
        seg = x.reshape(B, H, W, g, S)
        # height: rows (b, w, k) of length H*S, h-major
        h = seg.permute(0, 2, 3, 1, 4).reshape(B, W, g, H * S)
        h = self.mlp_h(h).reshape(B, W, g, H, S).permute(0, 3, 1, 2, 4).reshape(B, H, W, C)
        # width: rows (b, h, k) of length W*S, w-major
        w = seg.permute(0, 1, 3, 2, 4).reshape(B, H, g, W * S)
        w = self.mlp_w(w).reshape(B, H, g, W, S).permute(0, 1, 3, 2, 4).reshape(B, H, W, C)
        c = self.mlp_c(x)
        a = self.reweight((h + w + c).mean(dim=(1, 2)))                   # (B, 3C)
        a = a.reshape(B, C, 3).softmax(dim=-1)[:, None, None]             # (B, 1, 1, C, 3)
        return self.proj(h * a[..., 0] + w * a[..., 1] + c * a[..., 2])


class PermutatorBlock(nn.Module):
    """x + PermuteMLP(LN(x)) / skip_lam, then x + MLP(LN(x)) / skip_lam, on (B, H, W, C)."""

    def __init__(self, cfg: ViPConfig, stage: int):
        super().__init__()
        dim, grid = cfg.embed_dims[stage], cfg.grid_sizes[stage]
        self.skip_lam = cfg.skip_lam
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = PermuteMLP(dim, cfg.segment_dim[stage], (grid, grid), cfg.qkv_bias)  # official name: attn
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, cfg.mlp_hidden(stage))

    def forward(self, x):
        x = x + self.attn(self.norm1(x)) / self.skip_lam
        return x + self.mlp(self.norm2(x)) / self.skip_lam


class PatchEmbed(nn.Module):
    """Conv(in_chans -> C0, kernel = stride = patch_size), output channels-last (B, H0, W0, C0)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):  # (B, C, H, W) -> (B, H/p, W/p, C0)
        return self.proj(x).permute(0, 2, 3, 1)


class Downsample(nn.Module):
    """Between stages: Conv(C_in -> C_out, kernel = stride = k) on channels-last tokens (k = 2 halves the grid)."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x):  # (B, H, W, C_in) -> (B, H/k, W/k, C_out)
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class VisionPermutator(nn.Module):
    """The reference ViP. forward(images (B, in_chans, img_size, img_size), the model's dtype) -> (B, num_classes)
    logits ((B, C_last) pooled features when num_classes == 0). `network` interleaves the stages (nn.Sequential of
    PermutatorBlock) and the Downsample layers exactly as the official model, so parameter names match."""

    def __init__(self, config: ViPConfig):
        super().__init__()
        self.config = config
        cfg = config
        # The official model's patch embedding, kept as it is (no hMLP variant: ViP's stem is part of its design).
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dims[0])
        network = []
        for i in range(cfg.num_stages):
            network.append(nn.Sequential(*(PermutatorBlock(cfg, i) for _ in range(cfg.layers[i]))))
            kernel = cfg.downsample_kernel(i)
            if kernel is not None:
                network.append(Downsample(cfg.embed_dims[i], cfg.embed_dims[i + 1], kernel))
        self.network = nn.ModuleList(network)
        self.norm = nn.LayerNorm(cfg.num_features, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """The official init: truncated normal 0.02 on every Linear, zero biases, unit LayerNorms; convs keep
        PyTorch's default."""
        init_trunc_normal_(self)

    def forward_features(self, images):
        """(B, C, H, W) -> pooled features (B, C_last): mean over the grid of the final LayerNorm's output."""
        p = self.patch_embed.proj.weight
        cfg = self.config
        check_images(images, in_chans=cfg.in_chans, img_size=cfg.img_size, patch_size=cfg.patch_size,
                     dtype=p.dtype, device=p.device, who="VisionPermutator")
        x = self.patch_embed(images)
        for layer in self.network:
            x = layer(x)
        return self.norm(x).mean(dim=(1, 2))

    def forward(self, images):
        return self.head(self.forward_features(images))


def create_reference(config) -> VisionPermutator:
    """A randomly initialised reference model from a ViPConfig or a model name."""
    return VisionPermutator(resolve_name(config) if isinstance(config, str) else config)
