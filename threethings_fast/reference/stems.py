"""Reference patch stems: the linear 16x16 patch embedding and the hierarchical MLP (hMLP) stem.

hMLP (the paper's third thing), per 16x16 patch, E = embed_dim:
    4x4 sub-patches: Conv(3 -> E/4, k=s=4)  + norm + GELU      (B, E/4, H/4,  W/4)
    2x2 groups:      Conv(E/4 -> E/4, k=s=2) + norm + GELU     (B, E/4, H/8,  W/8)
    2x2 groups:      Conv(E/4 -> E, k=s=2)   + norm            (B, E,   H/16, W/16)
Kernel == stride, so no 16x16 patch ever sees another: masking patches before or after the stem gives the same
tokens. `proj` is an nn.Sequential indexed 0..7 so the official deit checkpoint keys `patch_embed.proj.N.*` load
unchanged. The norm is BatchNorm2d (the official default; folds into the convs at inference) or `LayerNorm2d`, a
LayerNorm over channels at every spatial position (batch-independent, works at batch 1 in training).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ..masking import _check_mask, indices_to_mask, mask_to_indices  # noqa: F401  (mask helpers are public here too)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of an NCHW tensor, independently at each (h, w)."""

    def forward(self, x):  # (B, C, H, W)
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Linear patch embedding: Conv2d(in_chans -> E, kernel = stride = patch_size). Output (B, N, E), row-major.
    `bias=False` for models whose embeddings are normalised right away (CLIP: timm's pre_norm)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768, bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x):  # (B, C, H, W) -> (B, N, E)
        return self.proj(x).flatten(2).transpose(1, 2)

    def forward_masked(self, x, mask=None, visible_idx=None, mode="mae", mask_token=None):
        """Stem on the visible patches only ("mask before"); see `stem_forward_masked`."""
        return stem_forward_masked(self, x, mask=mask, visible_idx=visible_idx, mode=mode, mask_token=mask_token)


class HMLPStem(nn.Module):
    """hMLP stem; `norm` is "bn" (BatchNorm2d) or "ln" (LayerNorm2d, eps 1e-6). Output (B, N, E), row-major."""

    patch_size = 16

    def __init__(self, in_chans: int = 3, embed_dim: int = 768, norm: str = "bn"):
        super().__init__()
        if norm not in ("bn", "ln"):
            raise ValueError(f"hMLP norm must be 'bn' or 'ln', got {norm!r}")
        self.norm_kind = norm
        hidden = embed_dim // 4

        def make_norm(c):
            return nn.BatchNorm2d(c) if norm == "bn" else LayerNorm2d(c, eps=1e-6)

        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, hidden, kernel_size=4, stride=4), make_norm(hidden), nn.GELU(),
            nn.Conv2d(hidden, hidden, kernel_size=2, stride=2), make_norm(hidden), nn.GELU(),
            nn.Conv2d(hidden, embed_dim, kernel_size=2, stride=2), make_norm(embed_dim),
        )

    def forward(self, x):  # (B, C, H, W) -> (B, N, E)
        return self.proj(x).flatten(2).transpose(1, 2)

    def forward_masked(self, x, mask=None, visible_idx=None, mode="mae", mask_token=None):
        """Stem on the visible patches only ("mask before"); see `stem_forward_masked`."""
        return stem_forward_masked(self, x, mask=mask, visible_idx=visible_idx, mode=mode, mask_token=mask_token)


def build_stem(stem: str, patch_size: int, in_chans: int, embed_dim: int, bias: bool = True) -> nn.Module:
    if stem == "linear":
        return PatchEmbed(patch_size, in_chans, embed_dim, bias=bias)
    if stem in ("hmlp_bn", "hmlp_ln"):
        return HMLPStem(in_chans, embed_dim, norm=stem.split("_")[1])
    raise ValueError(f"unknown stem {stem!r}")


# ---------------------------------------------------------------------------------------------------------------
# Masked stems (BEiT / MAE pretraining)
# ---------------------------------------------------------------------------------------------------------------
# A mask is a bool tensor (B, N), True = masked (hidden), over the row-major patch grid (N = H/p * W/p). Visible
# indices are an int tensor (B, N_vis) of patch numbers; every sample has the same count, as MAE requires.
# Because no stem here mixes patches, running the stem on the visible patches alone ("mask before") gives the same
# tokens as running it on the whole image and dropping / replacing the hidden tokens ("mask after"). The reference
# below computes on the visible patches only, as a batch of p x p images; the CPU convolution does not depend on the
# batch size, so in float64 mask-before equals mask-after bit for bit (tests/test_stem.py). Comparing with
# `forward` (one conv over the whole image) is exact only up to the conv backend's blocking (~1e-15 in float64).

def extract_patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C, patch, patch), patches in row-major grid order (the stems' token order)."""
    B, C, H, W = x.shape
    if H % patch or W % patch:
        raise ValueError(f"image size ({H}, {W}) must be a multiple of the patch size {patch}")
    p = x.reshape(B, C, H // patch, patch, W // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return p.reshape(B, (H // patch) * (W // patch), C, patch, patch)


def stem_forward_masked(stem: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None,
                        visible_idx: torch.Tensor | None = None, mode: str = "mae",
                        mask_token: torch.Tensor | None = None) -> torch.Tensor:
    """Run a patch stem on the visible patches only.

    Args:
        stem: PatchEmbed or HMLPStem (eval mode for BatchNorm: training-mode BN mixes the batch).
        x: images (B, C, H, W), H and W multiples of the patch size.
        mask: bool (B, N), True = masked. Exactly one of mask / visible_idx (both None: every patch is visible).
        visible_idx: int (B, N_vis), patch numbers to keep, in the order the tokens are wanted.
        mode: "mae": return (B, N_vis, E), the visible tokens (ascending patch order when given a mask; all samples
            need the same visible count, else ValueError). "beit": return (B, N, E) with masked positions set to
            `mask_token` (E,); a mask may then hide a different number of patches per sample.
    """
    if mode not in ("mae", "beit"):
        raise ValueError(f"mode must be 'mae' or 'beit', got {mode!r}")
    if mask is not None and visible_idx is not None:
        raise ValueError("pass either mask or visible_idx, not both")
    p = stem.patch_size
    patches = extract_patches(x, p)                       # (B, N, C, p, p)
    B, N = patches.shape[:2]
    if mask is not None:
        _check_mask(mask, (B, N))
    if visible_idx is not None:
        if visible_idx.dim() != 2 or visible_idx.shape[0] != B or visible_idx.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"visible_idx must be an int32/int64 tensor (B={B}, N_vis), got "
                             f"{visible_idx.dtype} {tuple(visible_idx.shape)}")

    def run(flat: torch.Tensor) -> torch.Tensor:        # (M, C, p, p) -> (M, E)
        return stem.proj(flat).flatten(1)

    if mode == "mae":
        if mask is None and visible_idx is None:
            visible_idx = torch.arange(N, device=x.device).expand(B, N)
        elif visible_idx is None:
            visible_idx = mask_to_indices(mask)
        idx = visible_idx.long()
        n_vis = idx.shape[1]
        sel = torch.gather(patches, 1, idx[:, :, None, None, None].expand(B, n_vis, *patches.shape[2:]))
        tokens = run(sel.flatten(0, 1))                   # (B*n_vis, E); works for an empty selection too
        return tokens.reshape(B, n_vis, tokens.shape[-1])
    # beit
    if mask_token is None:
        raise ValueError("mode='beit' needs mask_token (E,)")
    if visible_idx is not None:
        mask = indices_to_mask(visible_idx, N)
    elif mask is None:
        mask = torch.zeros(B, N, dtype=torch.bool, device=x.device)
    E = mask_token.numel()
    out = mask_token.reshape(1, 1, E).to(x.dtype).expand(B, N, E).clone()
    vis = ~mask
    if bool(vis.any()):
        out[vis] = run(patches[vis]).to(out.dtype)
    return out

