"""The torch backend: the fused structure executed with plain torch ops. The CPU path, and the structural oracle
the Triton backend follows."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..folding import fold_stem  # noqa: F401  (documented producer of the stem dict)
from .weights import FusedWeights, cast_common


class TorchOps:
    name = "torch"

    # -- weight preparation -------------------------------------------------------------------------------------
    def prepare(self, folded: dict, dtype: torch.dtype, device) -> FusedWeights:
        stem = {k: (v.to(dtype=dtype, device=device).contiguous() if isinstance(v, torch.Tensor) else v)
                for k, v in folded["stem"].items()}
        return FusedWeights(config=folded["config"], stem=stem, **cast_common(folded, dtype, device))

    # -- ops ----------------------------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor, weights: FusedWeights) -> torch.Tensor:
        stem = weights.stem
        if stem["kind"] == "linear":
            p = stem["patch"]
            w = stem["weight"].view(stem["weight"].shape[0], images.shape[1], p, p)
            t = F.conv2d(images, w, stem["bias"], stride=p)
        else:
            t = images
            for i, k in ((1, 4), (2, 2), (3, 2)):
                t = F.conv2d(t, stem[f"w{i}"], stem[f"b{i}"], stride=k)
                if stem["kind"] == "hmlp_ln":
                    t = F.layer_norm(t.permute(0, 2, 3, 1), (t.shape[1],), stem[f"ln{i}_w"], stem[f"ln{i}_b"],
                                     stem["eps"]).permute(0, 3, 1, 2)
                if i < 3:
                    t = F.gelu(t)
        tokens = t.flatten(2).transpose(1, 2) + weights.pos_patches      # (B, N_p, D)
        cls = weights.cls_pos.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    @staticmethod
    def normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), eps=eps)

    @staticmethod
    def linear(x, w, b, activation=None, residual=None):
        if residual is not None and activation is None:
            # one BLAS call: residual + x @ w.T, then the bias
            y = torch.addmm(residual, x, w.t())
            return y.add_(b)
        y = torch.addmm(b, x, w.t())
        if activation == "gelu":
            y = F.gelu(y)
        elif activation is not None:
            raise ValueError(f"unknown activation {activation!r}")
        if residual is not None:
            y.add_(residual)
        return y

    @staticmethod
    def attention(qkv: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
        b, n, _ = qkv.shape
        q, k, v = qkv.view(b, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)   # (B, Hh, N, d) views
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0)                     # q is pre-scaled
        return o.transpose(1, 2).reshape(b, n, num_heads * head_dim)
