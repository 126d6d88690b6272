"""The torch backend: the fused structure executed with plain torch ops. The CPU path, and the structural oracle
the Triton backend follows."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .weights import FusedWeights, cast_common
from ..stem_fold import LinearStemFold, StemFold
from ..validation import check_image_dtype


def stem_tokens(images: torch.Tensor, stem: StemFold) -> torch.Tensor:
    """Patch tokens (B, N_p, E) of images (B, C, H, W) through a folded stem, in the stem's dtype."""
    if isinstance(stem, LinearStemFold):
        p = stem.patch
        t = F.conv2d(images, stem.weight.view(stem.embed_dim, images.shape[1], p, p), stem.bias, stride=p)
    else:
        t = images
        for i, (w, b, stride) in enumerate(stem.convs()):
            t = F.conv2d(t, w, b, stride=stride)
            if stem.norm == "ln":
                t = F.layer_norm(t.permute(0, 2, 3, 1), (t.shape[1],), stem.ln_weights[i], stem.ln_biases[i],
                                 stem.eps).permute(0, 3, 1, 2)
            if i < 2:
                t = F.gelu(t)
    return t.flatten(2).transpose(1, 2)


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
        return FusedWeights(config=folded["config"], stem=folded["stem"].to(dtype, device),
                            **cast_common(folded, dtype, device))

    # -- ops ----------------------------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor, weights: FusedWeights) -> torch.Tensor:
        check_image_dtype(images, weights.pos_patches.dtype, "FusedViT")
        tokens = stem_tokens(images, weights.stem) + weights.pos_patches      # (B, N_p, D)
        if not weights.prefix.shape[0]:
            return tokens.contiguous()
        prefix = weights.prefix.expand(tokens.shape[0], -1, -1)
        return torch.cat([prefix, tokens], dim=1)

    @staticmethod
    def prepare_stem(stem: StemFold, dtype: torch.dtype, device) -> StemFold:
        return stem.to(dtype, device)

    @staticmethod
    def stem_tokens(images, stem: StemFold, pos=None, cls=None) -> torch.Tensor:
        tokens = stem_tokens(images, stem)
        if pos is not None:
            tokens = tokens + pos
        if cls is None:
            return tokens.contiguous()
        return torch.cat([cls.reshape(1, 1, -1).expand(tokens.shape[0], 1, -1), tokens], dim=1)

    @staticmethod
    def token_linear(x, w, b, activation=None, scale=None, shift=None, gate=None, residual=None):
        # matmul broadcasts w over the samples and reads x[b] (N, D) as it lies: no transposed copy
        y = torch.matmul(w, x)
        if scale is not None and shift is not None:
            y = torch.addcmul(shift, y, scale, out=y)          # one pass for the folded affine
        elif scale is not None:
            y.mul_(scale)
        elif shift is not None:
            y.add_(shift)
        if b is not None:
            y.add_(b[:, None])
        if activation == "gelu":
            y = torch.ops.aten.gelu_(y)
        elif activation is not None:
            raise ValueError(f"unknown activation {activation!r}")
        if gate is not None:
            y.mul_(gate)
        if residual is not None:
            y.add_(residual)
        return y

    @staticmethod
    def normalize_tokens(x: torch.Tensor, eps: float) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=1, correction=0, keepdim=True)
        return (x - mean).mul_(torch.rsqrt(var + eps))

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

    @staticmethod
    def permute_projections(x, height_w, height_b, width_w, width_b, channel_w, channel_b, segments):
        # The unfused structure: the height / width GEMMs read permuted copies of x (rows (b, j, k) x (i, s) and
        # (b, i, k) x (j, s)) and their outputs are permuted back into the token layout of `out`.
        b, hh, ww, c = x.shape
        s = c // segments
        out = torch.empty((3, b, hh, ww, c), dtype=x.dtype, device=x.device)
        grid = x.view(b, hh, ww, segments, s)
        h = _project(grid.permute(0, 2, 3, 1, 4).reshape(-1, hh * s), height_w, height_b)
        out[0].view(b, hh, ww, segments, s).copy_(h.view(b, ww, segments, hh, s).permute(0, 3, 1, 2, 4))
        w = _project(grid.permute(0, 1, 3, 2, 4).reshape(-1, ww * s), width_w, width_b)
        out[1].view(b, hh, ww, segments, s).copy_(w.view(b, hh, segments, ww, s).permute(0, 1, 3, 2, 4))
        _project(x.reshape(-1, c), channel_w, channel_b, out=out[2].view(-1, c))
        return out


def _project(rows: torch.Tensor, w: torch.Tensor, b, out=None) -> torch.Tensor:
    """rows (M, K) @ w (N, K)ᵀ [+ b (N,)] -> (M, N), into `out` when given."""
    if b is None:
        return torch.mm(rows, w.t(), out=out)
    return torch.addmm(b, rows, w.t(), out=out)
