"""The Triton backend: the fused forward (threethings_fast.models.vit.forward) on the Triton kernels of
threethings_fast.triton_kernels. Per block, with norm="separate" (default): normalize, linear (QKV), attention over
K*H heads, linear (+residual), normalize, linear (+GELU), linear (+residual) — 7 launches whatever K is. With
norm="fused": the residual GEMMs also write their output's row statistics (per 32-column slot) and the QKV / fc1
GEMMs apply the LayerNorm in their epilogue (rstd·(x @ Wᵀ − mean·Σ_k W)) — 5 launches per block, no normalised
copy of the residual stream written or read; one `row_stats` launch after the stem. The stem is one launch (class
token and positions fused). Launchers never sync with the host, so a whole forward can be captured in a CUDA graph
(threethings_fast.fused.graphs).

The MLP families (models/<family>/forward.py) run on the same calls. norm="fused" there too: the channel GEMMs
normalise as above, and a token GEMM whose input is LayerNorm'd (Mixer's token mixing, gMLP's gate) merges the row
statistics in its main loop (`token_linear(norm=...)`); gMLP's gate statistics come from the fc1 GEMM that writes the
gate half."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .weights import FusedWeights, cast_common
from ..stem_fold import LinearStemFold, StemFold
from ..validation import check_image_dtype

NORM_MODES = ("separate", "fused")


@dataclass
class _Normed:
    """x with its row statistics: what `normalize` hands to a normalising GEMM in norm="fused" mode."""

    x: torch.Tensor
    stats: object   # triton_kernels.RowStats
    eps: float

    def view(self, *shape) -> "_Normed":
        """The same rows under another shape of their leading dims (the last dim is kept): (B·N, D) <-> (B, N, D)."""
        x = self.x.view(*shape)
        partials = self.stats.partials
        return _Normed(x, type(self.stats)(partials.view(*x.shape[:-1], *partials.shape[-2:]), self.stats.width),
                       self.eps)


def _normalised_gemm_weights(weights) -> list:
    """The weights whose GEMM may read a normalised input: a ViT's QKV, fc1 and head; for an MLP family
    (`PackedModel`), every packed (N, K) GEMM weight — a few column sums more than its forward needs, computed
    once."""
    if isinstance(weights, FusedWeights):
        return [t for blk in weights.blocks for t in (blk.w_qkv, blk.w_fc1)] + [weights.head_w]
    return [t for blk in weights.blocks for name, t in blk.items()
            if t.dim() == 2 and not name.endswith(("_scale", "_shift"))] + [weights.head_w]


class TritonOps:
    name = "triton"

    def __init__(self, norm: str = "separate"):
        from .. import triton_kernels as tk  # import here: triton is optional for the rest of the package
        if norm not in NORM_MODES:
            raise ValueError(f"norm must be one of {NORM_MODES}, got {norm!r}")
        self.tk = tk
        self.norm = norm
        # norm="fused": Σ_k W[n, k] of each weight a normalising GEMM may read (_normalised_gemm_weights), keyed by
        # the tensor's id, with the weight's version counter when it was computed; refreshed in place (CUDA graphs
        # keep addresses).
        self._colsum: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def prepare(self, folded: dict, dtype: torch.dtype, device) -> FusedWeights:
        if dtype == torch.float64:
            raise TypeError("the Triton backend runs float16, bfloat16 or float32; use backend='torch' for float64")
        head_dim = folded["config"].head_dim
        if head_dim not in self.tk.SUPPORTED_HEAD_DIMS:
            raise ValueError(f"backend='triton': head_dim {head_dim} is not supported (the attention kernel takes "
                             f"{', '.join(map(str, self.tk.SUPPORTED_HEAD_DIMS))}); use backend='torch'")
        prepared = self.prepare_stem(folded["stem"], dtype, device)
        common = cast_common(folded, dtype, device)
        weights = FusedWeights(config=folded["config"], stem=prepared, **common)
        self.refresh(weights)
        return weights

    def prepare_stem(self, stem: StemFold, dtype: torch.dtype, device):
        """The linear stem's weight in the run dtype with an fp32 bias (added in the accumulator), or the hMLP
        stem packed for its kernel (`triton_kernels.HMLPStemWeights`)."""
        if isinstance(stem, LinearStemFold):
            return stem.to(dtype, device, bias_dtype=torch.float32)
        return self.tk.prepare_hmlp_stem(stem, dtype, device)

    def stem_tokens(self, images, stem, pos, cls):
        """(B, N_p, E) patch tokens + pos, with `cls` (E,) written at token 0 when given."""
        if isinstance(stem, LinearStemFold):
            return self.tk.patch_embed(images, stem.weight, stem.bias, pos=pos, cls=cls, patch_size=stem.patch)
        return self.tk.hmlp_stem(images, stem, pos=pos, cls=cls)

    def refresh(self, weights) -> None:
        """Recompute what is derived from the packed weights (norm="fused": the column sums of every weight a
        normalising GEMM may read), in place. FusedViT.refold calls it; a weight edited in place otherwise is
        noticed at the next eager call."""
        if self.norm != "fused":
            return
        old, self._colsum = self._colsum, {}
        for w in _normalised_gemm_weights(weights):
            self._colsum[id(w)] = self._column_sums(w, old.get(id(w)))

    def _column_sums(self, w, entry):
        c = self.tk.column_sums(w)
        if entry is not None and entry[0] is w:
            entry[1].copy_(c)   # same tensor as before: keep the address a captured CUDA graph reads
            c = entry[1]
        return (w, c, w._version)

    def _colsum_for(self, w):
        entry = self._colsum.get(id(w))
        if entry is None or entry[0] is not w:
            raise RuntimeError("norm='fused': no column sums for this weight tensor; after replacing packed weight "
                               "tensors call fused.ops.refresh(fused.weights) (FusedViT.refold does it)")
        if not torch.compiler.is_compiling() and entry[2] != w._version:
            entry = self._colsum[id(w)] = self._column_sums(w, entry)   # edited in place since: recompute
        return entry[1]

    def embed(self, images: torch.Tensor, weights: FusedWeights) -> torch.Tensor:
        # The stem kernels cast their input by design (standalone use); the model does not.
        check_image_dtype(images, weights.pos_patches.dtype, "FusedViT")
        prefix = weights.prefix
        # One prefix row (the class token + its position: the paper's models) is written at token 0 in-kernel;
        # with more (distillation / register tokens) the others are put in front by one concatenation.
        cls = prefix[-1] if prefix.shape[0] else None
        tokens = self.stem_tokens(images, weights.stem, weights.pos_patches, cls)
        if prefix.shape[0] <= 1:
            return tokens
        return torch.cat([prefix[:-1].expand(tokens.shape[0], -1, -1), tokens], dim=1)

    def layer_norm(self, x, eps, weight=None, bias=None):
        y = self.tk.normalize(x, eps)
        if weight is not None:
            y = torch.addcmul(bias, y, weight)    # rare (norm_pre): one more launch rather than a kernel variant
        return y

    def normalize(self, x, eps):
        if self.norm == "fused":
            return _Normed(x, self.tk.row_stats(x), eps)
        return self.tk.normalize(x, eps)

    def linear(self, x, w, b, activation=None, residual=None, workspace=None, then_normalize=None):
        # `workspace` is ignored: the CUDA caching allocator recycles blocks without cost, and a CUDA graph
        # (fused.graphs) fixes every buffer anyway.
        norm = {}
        if isinstance(x, _Normed):
            norm = dict(norm=x.stats, colsum=self._colsum_for(w), eps=x.eps)
            x = x.x
        if then_normalize is not None and self.norm == "fused":   # the statistics come out of this GEMM
            y, stats = self.tk.linear(x, w, b, residual=residual, activation=activation, return_stats=True, **norm)
            return y, _Normed(y, stats, then_normalize)
        y = self.tk.linear(x, w, b, residual=residual, activation=activation, **norm)
        return y if then_normalize is None else (y, self.normalize(y, then_normalize))

    def normalize_tokens(self, x, eps):
        return self.tk.normalize_tokens(x, eps)

    def token_linear(self, x, w, b, activation=None, scale=None, shift=None, gate=None, residual=None):
        norm = {}
        if isinstance(x, _Normed):   # LN(x) requested: the kernel normalises x's rows in its main loop
            norm = dict(norm=x.stats, eps=x.eps)
            x = x.x
        return self.tk.token_linear(x, w, b, activation=activation, scale=scale, shift=shift, gate=gate,
                                    residual=residual, **norm)

    def attention(self, qkv, num_heads, head_dim):
        return self.tk.attention(qkv, num_heads, head_dim, 1.0)

    def permute_projections(self, x, height_w, height_b, width_w, width_b, channel_w, channel_b, segments):
        return self.tk.permute_projections(x, height_w, height_b, width_w, width_b, channel_w, channel_b, segments)
