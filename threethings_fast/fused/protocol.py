"""The ops protocol: what a backend provides so that every family's fused forward (`models/<family>/forward.py`) runs
on it. Forwards are written once over these calls; backends ("torch", "triton") implement them.

Shapes: M rows (tokens of all samples), D the row width, B samples of N tokens.
"""
from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch


@runtime_checkable
class FusedOps(Protocol):
    name: str

    def prepare_stem(self, stem, dtype: torch.dtype, device):
        """A folded stem (`stem_fold.LinearStemFold` / `HMLPStemFold`, float64) -> what `stem_tokens` takes."""

    def stem_tokens(self, images: torch.Tensor, stem, pos: Optional[torch.Tensor],
                    cls: Optional[torch.Tensor]) -> torch.Tensor:
        """images (B, C, H, W) -> (B, [1 +] N_p, E) patch tokens (+ pos (N_p, E)); `cls` (E,) written as row 0."""

    def layer_norm(self, x: torch.Tensor, eps: float, weight=None, bias=None) -> torch.Tensor:
        """(M, D) -> (M, D): LayerNorm over the last dim, with affine when given."""

    def normalize(self, x: torch.Tensor, eps: float):
        """x̂ = LayerNorm(x) without affine over the last dim, as whatever `linear` and `token_linear` accept for x:
        a tensor, or a handle with x's row statistics when the GEMM normalises x itself. Either supports
        ``.view(*shape)`` of the leading dims ((B·N, D) <-> (B, N, D)); nothing else may be done with a handle."""

    def normalize_tokens(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        """(B, N, D) -> (B, N, D): LayerNorm without affine over the token axis (each sample's channel columns)."""

    def linear(self, x, w: torch.Tensor, b: Optional[torch.Tensor], activation: Optional[str] = None,
               residual: Optional[torch.Tensor] = None, workspace: Optional[str] = None,
               then_normalize: Optional[float] = None):
        """x (M, K) @ w (N, K)ᵀ + b (N,) [-> GELU] [+ residual (M, N), possibly in place] -> (M, N); with
        then_normalize=eps returns (y, normalize(y, eps))."""

    def attention(self, qkv: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
        """qkv (B, N, 3·H·d), q pre-scaled -> (B, N, H·d)."""

    def token_linear(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor],
                     activation: Optional[str] = None, scale: Optional[torch.Tensor] = None,
                     shift: Optional[torch.Tensor] = None, gate: Optional[torch.Tensor] = None,
                     residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mixing across tokens, with no transposed copy of x: for every sample b,
            y[b] = w (N', N) @ x[b] (N, D)  [* scale (D,)]  [+ shift (N', D)]  [+ b (N',) per row]  [-> GELU]
                   [* gate[b] (N', D)]  [+ residual[b] (N', D)]
        x (B, N, D) -> (B, N', D), or x̂ = `normalize(...)`.view(B, N, D): LayerNorm over each token's channels
        (the backend may apply it inside the GEMM). `scale` / `shift` carry that LayerNorm's affine folded through
        the token GEMM (Mixer's token mixing, gMLP's spatial gating unit); `gate` is gMLP's elementwise gate."""

    def permute_projections(self, x: torch.Tensor, height_w: torch.Tensor, height_b: Optional[torch.Tensor],
                            width_w: torch.Tensor, width_b: Optional[torch.Tensor], channel_w: torch.Tensor,
                            channel_b: Optional[torch.Tensor], segments: int) -> torch.Tensor:
        """The Vision Permutator's three projections of x (B, H, W, C), whose C channels form `segments` segments of
        S = C / segments: height (height_w (H·S, H·S) over the (row, channel-in-segment) pairs of each column and
        segment), width (width_w (W·S, W·S), likewise along each row) and channel (channel_w (C, C) per token), each
        + its bias (all three or none). -> (3, B, H, W, C): [h, w, c], each in x's token layout (the backend may
        compute h and w without permuted copies of x)."""
