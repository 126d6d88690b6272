"""Exact folds shared by the MLP families (all in float64; the packed copy is cast once).

    per-channel affine (g, β) feeding a Linear (W, c) over channels:   W (g ⊙ x + β) + c = (W diag g) x + (W β + c)
    per-channel affine (g, β) feeding a Linear W (N', N) over tokens:  W (x diag g + 1 βᵀ) = (W x) diag g + (W 1) βᵀ
        -> the token GEMM's epilogue: scale = g (D,), shift = rowsum(W) ⊗ β (N', D)
    LayerScale γ after either: multiplies the scale, the shift and the bias column-wise.
The affine is a LayerNorm's (x then being x̂, normalised without affine by the forward) or ResMLP's Affine.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

F64 = torch.float64


def f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(F64)


def norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, β) of a LayerNorm (weight, bias) or an Affine (alpha, beta), as float64 vectors (D,)."""
    if isinstance(norm, nn.LayerNorm):
        d = norm.normalized_shape[0]
        g = f64(norm.weight) if norm.weight is not None else torch.ones(d, dtype=F64)
        b = f64(norm.bias) if norm.bias is not None else torch.zeros(d, dtype=F64)
        return g, b
    if hasattr(norm, "alpha") and hasattr(norm, "beta"):
        return f64(norm.alpha).reshape(-1), f64(norm.beta).reshape(-1)
    raise TypeError(f"cannot fold a norm of type {type(norm).__name__}")


def linear_params(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    w = f64(linear.weight)
    c = f64(linear.bias) if linear.bias is not None else w.new_zeros(w.shape[0])
    return w, c


def affine_into_linear(g: torch.Tensor, beta: torch.Tensor, w: torch.Tensor, c: torch.Tensor):
    """(W diag g, W β + c): a channel affine folded into the channel Linear after it."""
    return w * g[None, :], w @ beta + c


def token_epilogue(w_tok: torch.Tensor, g: torch.Tensor, beta: torch.Tensor):
    """(scale (D,), shift (N', D)) of a channel affine folded through a token GEMM W (N', N)."""
    return g.clone(), w_tok.sum(dim=1)[:, None] * beta[None, :]


def fold_head(norm: nn.Module, head: nn.Module, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The head on the mean-pooled, affine-free features: the final norm's affine folded into it (an Identity head
    becomes diag(g), β). Mean pooling commutes with the affine, so folding before or after the mean is the same."""
    g, beta = norm_affine(norm)
    if isinstance(head, nn.Linear):
        w, c = linear_params(head)
    else:
        w, c = torch.eye(d, dtype=F64, device=g.device), torch.zeros(d, dtype=F64, device=g.device)
    return affine_into_linear(g, beta, w, c)


def fold_channel_mlp(branches: list[tuple[nn.Module, nn.Module, Optional[torch.Tensor]]]) -> dict:
    """K channel-MLP branches (norm, mlp with fc1/fc2, LayerScale γ or None) reading the same x -> one fc1 of K·F
    rows and one fc2 of K·F columns: fc1_w (K·F, D), fc1_b, fc2_w (D, K·F), fc2_b = Σ_k γ_k ⊙ c2_k."""
    rows, biases, cols, out_bias = [], [], [], 0
    for norm, mlp, gamma in branches:
        g, beta = norm_affine(norm)
        w1, c1 = affine_into_linear(g, beta, *linear_params(mlp.fc1))
        w2, c2 = linear_params(mlp.fc2)
        if gamma is not None:
            w2, c2 = w2 * gamma[:, None], c2 * gamma
        rows.append(w1)
        biases.append(c1)
        cols.append(w2)
        out_bias = out_bias + c2
    return {"fc1_w": torch.cat(rows, 0), "fc1_b": torch.cat(biases, 0), "fc2_w": torch.cat(cols, 1),
            "fc2_b": out_bias}
