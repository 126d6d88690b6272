"""Exact folding of a reference model into the packed weights of the fused inference model (DESIGN.md).

All folds are computed in float64 and cast once to the run dtype, so the only extra rounding is that final cast.

Per block with K branches, width D, H heads per branch (head dim d), MLP width F, and x̂ = LN(x) without affine
(identical for every branch because all branches read the same x and share eps):
    qkv   = x̂ @ w_qkv.T + b_qkv          w_qkv (3KD, D): rows [q of all K*H heads | k ... | v ...], q pre-scaled
    o     = attention(qkv)                 (B, N, K*H*d): heads branch-major, matching w_proj's inner dim
    x     = x + o @ w_proj.T + b_proj      w_proj (D, KD) = [g1_1*P_1 | ... | g1_K*P_K], b_proj = sum_k g1_k*p_k
    x̂     = LN(x)
    h     = gelu(x̂ @ w_fc1.T + b_fc1)      w_fc1 (KF, D)
    x     = x + h @ w_fc2.T + b_fc2        w_fc2 (D, KF), LayerScale folded
LayerNorm (g, b) feeding Linear (W, c):  W (g*x̂ + b) + c = (W diag g) x̂ + (W b + c).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .configs import ViTConfig
from .reference.blocks import Block, LayerScale
from .reference.model import VisionTransformer
from .reference.stems import HMLPStem, PatchEmbed

_F64 = torch.float64


@dataclass
class FoldedBlock:
    """Packed weights of one block (all K branches). Shapes in the module docstring."""

    w_qkv: torch.Tensor
    b_qkv: torch.Tensor
    w_proj: torch.Tensor
    b_proj: torch.Tensor
    w_fc1: torch.Tensor
    b_fc1: torch.Tensor
    w_fc2: torch.Tensor
    b_fc2: torch.Tensor

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.__dict__)

    def to(self, dtype=None, device=None) -> "FoldedBlock":
        return FoldedBlock(**{k: v.to(dtype=dtype, device=device).contiguous() for k, v in self.tensors().items()})


def _gamma(ls: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """LayerScale vector, or ones when the model has no LayerScale (nn.Identity)."""
    if isinstance(ls, LayerScale):
        return ls.gamma.detach().to(_F64)
    return torch.ones(like.shape[0], dtype=_F64, device=like.device)


def _fold_norm_into_linear(norm: nn.LayerNorm, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """(W, c) after LN(g, b)  ->  (W diag g, W b + c), float64."""
    g = norm.weight.detach().to(_F64)
    b = norm.bias.detach().to(_F64)
    w = weight.detach().to(_F64)
    c = bias.detach().to(_F64) if bias is not None else torch.zeros(w.shape[0], dtype=_F64, device=w.device)
    return w * g[None, :], w @ b + c


@torch.no_grad()
def fold_block(block: Block, config: ViTConfig) -> FoldedBlock:
    d_model = config.embed_dim
    scale = config.head_dim ** -0.5
    q_rows, k_rows, v_rows, qb, kb, vb = [], [], [], [], [], []
    proj_cols, b_proj = [], torch.zeros(d_model, dtype=_F64, device=block.attns[0].norm.weight.device)
    for branch in block.attns:
        w, c = _fold_norm_into_linear(branch.norm, branch.attn.qkv.weight, branch.attn.qkv.bias)
        # rows of the per-branch qkv weight are (q, k, v), each (H*d) with heads contiguous
        q_rows.append(w[:d_model] * scale)
        qb.append(c[:d_model] * scale)
        k_rows.append(w[d_model:2 * d_model])
        kb.append(c[d_model:2 * d_model])
        v_rows.append(w[2 * d_model:])
        vb.append(c[2 * d_model:])
        gamma = _gamma(branch.ls, branch.attn.proj.bias)
        proj_cols.append(branch.attn.proj.weight.detach().to(_F64) * gamma[:, None])
        b_proj = b_proj + gamma * branch.attn.proj.bias.detach().to(_F64)
    fc1_rows, fc1_b, fc2_cols = [], [], []
    b_fc2 = torch.zeros_like(b_proj)
    for branch in block.ffns:
        w, c = _fold_norm_into_linear(branch.norm, branch.mlp.fc1.weight, branch.mlp.fc1.bias)
        fc1_rows.append(w)
        fc1_b.append(c)
        gamma = _gamma(branch.ls, branch.mlp.fc2.bias)
        fc2_cols.append(branch.mlp.fc2.weight.detach().to(_F64) * gamma[:, None])
        b_fc2 = b_fc2 + gamma * branch.mlp.fc2.bias.detach().to(_F64)
    return FoldedBlock(
        w_qkv=torch.cat(q_rows + k_rows + v_rows, 0), b_qkv=torch.cat(qb + kb + vb, 0),
        w_proj=torch.cat(proj_cols, 1), b_proj=b_proj,
        w_fc1=torch.cat(fc1_rows, 0), b_fc1=torch.cat(fc1_b, 0),
        w_fc2=torch.cat(fc2_cols, 1), b_fc2=b_fc2,
    )


@torch.no_grad()
def fold_stem(stem: nn.Module) -> dict:
    """Stem weights for the fused model, float64.

    linear:  {"kind": "linear", "weight": (E, C*p*p) with columns ordered (c, ky, kx), "bias": (E,), "patch": p}
    hmlp_bn: {"kind": "hmlp_bn", "w1": (E/4, C, 4, 4), "b1", "w2": (E/4, E/4, 2, 2), "b2", "w3": (E, E/4, 2, 2),
              "b3"} — eval-mode BatchNorm folded into each conv: W' = W*s, b' = (b - mean)*s + beta,
              s = gamma / sqrt(var + eps).
    hmlp_ln: {"kind": "hmlp_ln", "w1", "b1", "w2", "b2", "w3", "b3" (raw convs), "ln1_w", "ln1_b", "ln2_w", "ln2_b",
              "ln3_w", "ln3_b", "eps"} — the per-position LayerNorm cannot fold; it runs in-kernel.
    """
    if isinstance(stem, PatchEmbed):
        w = stem.proj.weight.detach().to(_F64)
        return {"kind": "linear", "weight": w.reshape(w.shape[0], -1), "bias": stem.proj.bias.detach().to(_F64),
                "patch": stem.patch_size}
    if isinstance(stem, HMLPStem):
        convs = [stem.proj[i] for i in (0, 3, 6)]
        norms = [stem.proj[i] for i in (1, 4, 7)]
        out = {"kind": f"hmlp_{stem.norm_kind}"}
        for i, (conv, norm) in enumerate(zip(convs, norms), start=1):
            w = conv.weight.detach().to(_F64)
            b = conv.bias.detach().to(_F64)
            if stem.norm_kind == "bn":
                s = norm.weight.detach().to(_F64) / torch.sqrt(norm.running_var.detach().to(_F64) + norm.eps)
                w = w * s[:, None, None, None]
                b = (b - norm.running_mean.detach().to(_F64)) * s + norm.bias.detach().to(_F64)
            else:
                out[f"ln{i}_w"] = norm.weight.detach().to(_F64)
                out[f"ln{i}_b"] = norm.bias.detach().to(_F64)
                out["eps"] = norm.eps
            out[f"w{i}"], out[f"b{i}"] = w, b
        return out
    raise TypeError(f"cannot fold stem of type {type(stem).__name__}")


@torch.no_grad()
def fold_model(model: VisionTransformer) -> dict:
    """Everything the fused model needs, float64: stem, class token + its position, patch positions, blocks,
    and the head with the final LayerNorm folded in (only the class token is normalised at the end)."""
    return {
        "config": model.config,
        "stem": fold_stem(model.patch_embed),
        "blocks": [fold_block(b, model.config) for b in model.blocks],
        **fold_head_and_pos(model),
    }


@torch.no_grad()
def fold_head_and_pos(model: VisionTransformer) -> dict:
    """Class token + positions, and the head with the final LayerNorm's affine folded in, float64."""
    d = model.config.embed_dim
    pos = model.pos_embed.detach().to(_F64)
    if isinstance(model.head, nn.Linear):
        head_w, head_b = _fold_norm_into_linear(model.norm, model.head.weight, model.head.bias)
    else:  # num_classes == 0: the head is the final norm's affine alone
        head_w = torch.diag(model.norm.weight.detach().to(_F64))
        head_b = model.norm.bias.detach().to(_F64)
    return {
        "cls_pos": model.cls_token.detach().to(_F64) + pos[:, :1],   # (1, 1, D)
        "pos_patches": pos[:, 1:].reshape(-1, d),                      # (N_p, D)
        "head_w": head_w, "head_b": head_b,
    }
