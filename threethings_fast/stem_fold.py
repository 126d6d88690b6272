"""Folded patch stems: the typed weights every model family's fused path embeds images with.

A stem turns images (B, C, H, W) into patch tokens (B, N_p, E) without mixing patches, so every family (ViT, Mixer,
ResMLP, gMLP, FF-only) shares it. Two kinds exist:

    LinearStemFold   one patch-sized strided convolution, written as a GEMM over flattened patches:
                     tokens = patches (B·N_p, C·p·p) @ weightᵀ + bias, columns of `weight` ordered (c, ky, kx)
    HMLPStemFold     the hierarchical MLP stem of Touvron et al. 2022: convs 4×4/4 → 2×2/2 → 2×2/2 (a 16×16 patch),
                     GELU between stages, each conv followed by a norm:
                       norm="bn": eval-mode BatchNorm folded into the conv, W' = W·s, b' = (b − mean)·s + β,
                                  s = γ / sqrt(var + eps)
                       norm="ln": the per-position LayerNorm cannot fold (it depends on the data); its affine
                                  parameters and eps are kept and applied in-kernel

`fold_stem(module)` computes the folds in float64; `.to(dtype, device)` casts once for a backend. The Triton kernels
read these objects by attribute (`norm`, `w1` … `b3`, `ln_weights`, `ln_biases`, `eps`): they import nothing from
the model code.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch
from torch import nn

from .reference.stems import HMLPStem, PatchEmbed

_F64 = torch.float64


def _cast(t: Optional[torch.Tensor], dtype, device) -> Optional[torch.Tensor]:
    return None if t is None else t.to(dtype=dtype, device=device).contiguous()


@dataclass(frozen=True)
class LinearStemFold:
    """weight (E, C·p·p) with columns (c, ky, kx); bias (E,) (zeros when the conv has none); patch p."""

    weight: torch.Tensor
    bias: torch.Tensor
    patch: int

    @property
    def embed_dim(self) -> int:
        return self.weight.shape[0]

    def tensors(self) -> list[torch.Tensor]:
        return [self.weight, self.bias]

    def to(self, dtype=None, device=None, bias_dtype=None) -> "LinearStemFold":
        """A cast copy; `bias_dtype` keeps the bias in another dtype (the Triton kernel adds it in fp32)."""
        return replace(self, weight=_cast(self.weight, dtype, device),
                       bias=_cast(self.bias, bias_dtype or dtype, device))


@dataclass(frozen=True)
class HMLPStemFold:
    """Stage i = 1, 2, 3: conv wi (out, in, k, k) with bias bi (out,); k = 4, 2, 2, out = E/4, E/4, E.
    norm "bn": BatchNorm already folded into (wi, bi); "ln": ln_weights[i-1], ln_biases[i-1] (out,) and eps."""

    norm: str
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    w3: torch.Tensor
    b3: torch.Tensor
    ln_weights: Optional[tuple] = None
    ln_biases: Optional[tuple] = None
    eps: float = 1e-6

    def __post_init__(self):
        if self.norm not in ("bn", "ln"):
            raise ValueError(f"HMLPStemFold.norm must be 'bn' or 'ln', got {self.norm!r}")
        if (self.norm == "ln") != (self.ln_weights is not None and self.ln_biases is not None):
            raise ValueError("an hMLP stem with norm='ln' carries ln_weights and ln_biases (three each); 'bn' none")

    @property
    def embed_dim(self) -> int:
        return self.w3.shape[0]

    def convs(self) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """[(weight, bias, stride)] of the three stages."""
        return [(self.w1, self.b1, 4), (self.w2, self.b2, 2), (self.w3, self.b3, 2)]

    def tensors(self) -> list[torch.Tensor]:
        out = [self.w1, self.b1, self.w2, self.b2, self.w3, self.b3]
        if self.norm == "ln":
            out += [*self.ln_weights, *self.ln_biases]
        return out

    def to(self, dtype=None, device=None) -> "HMLPStemFold":
        cast = {f.name: _cast(getattr(self, f.name), dtype, device)
                for f in fields(self) if f.name[0] in "wb" and f.name[1].isdigit()}
        if self.norm == "ln":
            cast["ln_weights"] = tuple(_cast(t, dtype, device) for t in self.ln_weights)
            cast["ln_biases"] = tuple(_cast(t, dtype, device) for t in self.ln_biases)
        return replace(self, **cast)


StemFold = LinearStemFold | HMLPStemFold


def stem_kind(stem: StemFold) -> str:
    """The config spelling of a folded stem: "linear", "hmlp_bn" or "hmlp_ln"."""
    return "linear" if isinstance(stem, LinearStemFold) else f"hmlp_{stem.norm}"


@torch.no_grad()
def fold_stem(stem: nn.Module) -> StemFold:
    """The float64 fold of a reference stem (`PatchEmbed` or `HMLPStem`)."""
    if isinstance(stem, PatchEmbed):
        w = stem.proj.weight.detach().to(_F64)
        bias = stem.proj.bias.detach().to(_F64) if stem.proj.bias is not None else w.new_zeros(w.shape[0])
        return LinearStemFold(weight=w.reshape(w.shape[0], -1), bias=bias, patch=stem.patch_size)
    if isinstance(stem, HMLPStem):
        convs = [stem.proj[i] for i in (0, 3, 6)]
        norms = [stem.proj[i] for i in (1, 4, 7)]
        weights, ln_w, ln_b, eps = {}, [], [], 1e-6
        for i, (conv, norm) in enumerate(zip(convs, norms), start=1):
            w = conv.weight.detach().to(_F64)
            b = conv.bias.detach().to(_F64)
            if stem.norm_kind == "bn":
                s = norm.weight.detach().to(_F64) / torch.sqrt(norm.running_var.detach().to(_F64) + norm.eps)
                w = w * s[:, None, None, None]
                b = (b - norm.running_mean.detach().to(_F64)) * s + norm.bias.detach().to(_F64)
            else:
                ln_w.append(norm.weight.detach().to(_F64))
                ln_b.append(norm.bias.detach().to(_F64))
                eps = norm.eps
            weights[f"w{i}"], weights[f"b{i}"] = w, b
        if stem.norm_kind == "bn":
            return HMLPStemFold(norm="bn", **weights)
        return HMLPStemFold(norm="ln", ln_weights=tuple(ln_w), ln_biases=tuple(ln_b), eps=eps, **weights)
    raise TypeError(f"cannot fold stem of type {type(stem).__name__} (PatchEmbed or HMLPStem)")
