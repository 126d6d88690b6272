"""The torch backend: the fused structure executed with plain torch ops. The CPU path, and the structural oracle
the Triton backend follows."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .weights import FusedWeights, cast_common
from ..validation import check_image_dtype


class TorchOps:
    """One instance per fused model: it owns the reusable output buffers of the `workspace` linears, so a model
    must not run two forwards at once from different threads."""

    name = "torch"

    def __init__(self):
        self._workspace: dict[str, torch.Tensor] = {}

    def _buffer(self, name: str, shape, like: torch.Tensor) -> torch.Tensor:
        # The widest activations (QKV: M x 3KD, fc1: M x KF) are reused across blocks and calls. On the CPU a fresh
        # tensor above glibc's 32 MB mmap threshold is page-faulted in on every call: at S18x2 batch 16 that made
        # the fused path 5% slower than the reference, whose per-branch tensors are half as wide.
        if like.is_cuda and torch.cuda.is_current_stream_capturing():
            # Inside CUDA-graph capture (fused.graphs): a buffer from outside the graph's pool would be baked into
            # the graph, then freed when another batch size replaces it -> replays writing into freed memory.
            # Allocate from the pool instead; the graph fixes every address anyway.
            return torch.empty(shape, dtype=like.dtype, device=like.device)
        buf = self._workspace.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = torch.empty(shape, dtype=like.dtype, device=like.device)
            self._workspace[name] = buf
        return buf

    # -- weight preparation -------------------------------------------------------------------------------------
    def prepare(self, folded: dict, dtype: torch.dtype, device) -> FusedWeights:
        stem = {k: (v.to(dtype=dtype, device=device).contiguous() if isinstance(v, torch.Tensor) else v)
                for k, v in folded["stem"].items()}
        return FusedWeights(config=folded["config"], stem=stem, **cast_common(folded, dtype, device))

    # -- ops ----------------------------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor, weights: FusedWeights) -> torch.Tensor:
        check_image_dtype(images, weights.pos_patches.dtype, "FusedViT")
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
        if not weights.prefix.shape[0]:
            return tokens.contiguous()
        prefix = weights.prefix.expand(tokens.shape[0], -1, -1)
        return torch.cat([prefix, tokens], dim=1)

    @staticmethod
    def normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), eps=eps)

    @staticmethod
    def layer_norm(x: torch.Tensor, eps: float, weight=None, bias=None) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)

    def linear(self, x, w, b, activation=None, residual=None, workspace=None, then_normalize=None):
        y = self._linear(x, w, b, activation, residual, workspace)
        return y if then_normalize is None else (y, self.normalize(y, then_normalize))

    def _linear(self, x, w, b, activation, residual, workspace):
        if activation not in (None, "gelu"):
            raise ValueError(f"unknown activation {activation!r}")
        if residual is not None and activation is None:
            # the residual stream is updated in place: one BLAS call (beta = 1), then the bias
            return residual.addmm_(x, w.t()).add_(b)
        out = self._buffer(workspace, (x.shape[0], w.shape[0]), x) if workspace else None
        y = torch.addmm(b, x, w.t(), out=out)
        if activation == "gelu":
            y = torch.ops.aten.gelu_(y)
        if residual is not None:
            y.add_(residual)
        return y

    @staticmethod
    def attention(qkv: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
        b, n, _ = qkv.shape
        q, k, v = qkv.view(b, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)   # (B, Hh, N, d) views
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0)                     # q is pre-scaled
        return o.transpose(1, 2).reshape(b, n, num_heads * head_dim)
