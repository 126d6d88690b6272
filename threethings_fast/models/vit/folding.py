"""Exact folding of a reference model into the packed weights of the fused inference model.

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

Around the blocks (`fold_embed_and_head`):
    prefix (P, D)       the prefix-token rows entering the blocks: class / distillation / register tokens, plus
                        their positions unless no_embed_class; patches get pos_patches (N_p, D)
    norm_pre            LayerNorm (with affine) of the embeddings, when the model has one: it *is* the residual
                        stream, so it cannot fold into a linear
    head                features -> logits. The final LayerNorm's (or fc_norm's) affine folds into the head; what
                        remains is an affine-free LayerNorm placed by `head_layout`. A distilled model's two heads
                        become one: (W_c x̂_c + c_c + W_d x̂_d + c_d) / 2 = [W_c/2 | W_d/2] [x̂_c; x̂_d] + (c_c + c_d)/2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ...configs import ViTConfig
from ...reference.blocks import Block, LayerScale
from ...reference.model import VisionTransformer
from ...stem_fold import fold_stem

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
def fold_model(model: VisionTransformer) -> dict:
    """Everything the fused model needs, float64: stem, prefix rows and patch positions, norm_pre, blocks, and the
    head with the final LayerNorm's affine folded in."""
    return {
        "config": model.config,
        "stem": fold_stem(model.patch_embed),
        "blocks": [fold_block(b, model.config) for b in model.blocks],
        **fold_embed_and_head(model),
    }


def head_layout(config: ViTConfig) -> tuple[str, str, int]:
    """(pool, norm, tokens): how the fused forward turns the final residual stream into the head's input.

    pool   "token": the first `tokens` rows of every sample (1, or 2 for class + distillation token), concatenated
           "avg":   the mean of the patch rows (prefix tokens excluded, as timm)
    norm   "after":  affine-free LayerNorm of each pooled row (final norm with token pooling, or fc_norm)
           "before": LayerNorm of every patch row, then the mean (average pooling under a final norm)
           "none":   no LayerNorm (final_norm=False)
    The affine parts are folded into the head weights (`fold_embed_and_head`).
    """
    tokens = 2 if config.distilled else 1
    if not config.final_norm:
        return config.global_pool, "none", tokens
    if config.global_pool == "token" or config.use_fc_norm:
        return config.global_pool, "after", tokens
    return "avg", "before", tokens


@torch.no_grad()
def fold_embed_and_head(model: VisionTransformer) -> dict:
    """Prefix rows, patch positions, norm_pre and the head, float64 (shapes in the module docstring)."""
    cfg = model.config
    d = cfg.embed_dim
    pos = model.pos_embed.detach().to(_F64).reshape(-1, d)
    tokens = [t.detach().to(_F64).reshape(-1, d) for t in model.prefix_parameters()]
    prefix = torch.cat(tokens, 0) if tokens else pos.new_zeros(0, d)
    if cfg.no_embed_class:
        pos_patches = pos
    else:
        prefix = prefix + pos[:cfg.num_prefix_tokens]
        pos_patches = pos[cfg.num_prefix_tokens:]
    norm_pre = None
    if cfg.pre_norm:
        norm_pre = {"weight": model.norm_pre.weight.detach().to(_F64), "bias": model.norm_pre.bias.detach().to(_F64)}
    head_w, head_b = fold_head(model)
    return {"prefix": prefix, "pos_patches": pos_patches, "norm_pre": norm_pre, "head_w": head_w, "head_b": head_b}


def _affine_head(norm: nn.Module, head: nn.Module, d: int, like: torch.Tensor):
    """(W, c) of head ∘ affine-of-norm, float64. Identity head: W = diag(g) (or I); no norm: the head alone."""
    if isinstance(head, nn.Linear):
        w = head.weight.detach().to(_F64)
        c = head.bias.detach().to(_F64) if head.bias is not None else w.new_zeros(w.shape[0])
    else:
        w, c = torch.eye(d, dtype=_F64, device=like.device), torch.zeros(d, dtype=_F64, device=like.device)
    if isinstance(norm, nn.LayerNorm):
        return _fold_norm_into_linear(norm, w, c)
    return w, c


@torch.no_grad()
def fold_head(model: VisionTransformer) -> tuple[torch.Tensor, torch.Tensor]:
    """The head acting on the affine-free normalised features of `head_layout`: (C, tokens·D), (C,), float64."""
    cfg = model.config
    d = cfg.embed_dim
    norm = model.fc_norm if cfg.use_fc_norm else model.norm
    w, c = _affine_head(norm, model.head, d, model.pos_embed)
    if not cfg.distilled:
        return w, c
    w_dist, c_dist = _affine_head(norm, model.head_dist, d, model.pos_embed)
    return torch.cat([w / 2, w_dist / 2], dim=1), (c + c_dist) / 2
