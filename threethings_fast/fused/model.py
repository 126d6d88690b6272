"""Fused inference models: folded weights executed by a backend's ops. Eval only; weights packed once at convert time.

`FusedModel` is what every family's fused model is: frozen packed weights, one dtype and device, a forward that
checks its input and runs the family's fused forward over the backend's ops. `FusedViT` adds what only the ViT has:
the C++ engine (one op per forward) and `refold`.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..models.vit.folding import fold_block, fold_embed_and_head
from ..validation import check_images, concrete_device
from .weights import FusedWeights


class FusedModel(nn.Module):
    """Inference-only fused model built by `threethings_fast.convert`.

    forward(images (B, C, H, W) in the model's dtype, on its device) -> logits (B, num_classes).
    The weights are frozen, folded copies: changing the source model afterwards does not change this one.
    """

    def __init__(self, weights, ops, dtype: torch.dtype, device: torch.device, family=None):
        super().__init__()
        from ..models import FAMILIES
        self.family = family or FAMILIES["vit"]
        self.config = weights.config
        self.weights = weights
        self.ops = ops
        self.dtype = dtype
        self.device = concrete_device(device)
        self._forward = self.family.forwarder()
        self.eval()

    @property
    def backend(self) -> str:
        return self.ops.name

    def extra_repr(self) -> str:
        norm = getattr(self.ops, "norm", "separate")
        return f"family={self.family.name}, backend={self.backend}, norm={norm}, dtype={self.dtype}, " \
               f"device={self.device}, config={self.config}"

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(f"{type(self).__name__} is inference-only (its weights are folded copies); train the "
                               "reference model and convert it again")
        return super().train(False)

    def _apply(self, fn, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__} weights are packed for one dtype/device at convert time; call "
                           "threethings_fast.convert(model, dtype=..., device=...) instead of .to()/.cuda()/.half()")

    def _check(self, images: torch.Tensor) -> None:
        if self.training:  # set directly through the attribute
            raise RuntimeError(f"{type(self).__name__} is inference-only; call .eval()")
        cfg = self.config
        check_images(images, in_chans=cfg.in_chans, img_size=cfg.img_size, patch_size=cfg.patch_size,
                     dtype=self.dtype, device=self.device, who=type(self).__name__)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self._check(images)
        with torch.no_grad():
            return self._run(images)

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        return self._forward(self.ops, self.weights, images)

    def capture(self, batch_sizes):
        """CUDA graphs of this model's forward for the given batch sizes (`threethings_fast.fused.graphs`): a
        callable that replays one graph per call. The backends launch without host synchronisation, so a whole
        forward becomes one replay. Its output is a static buffer, overwritten by the next call of the same batch
        size."""
        from .graphs import capture
        return capture(self, batch_sizes)


class FusedViT(FusedModel):
    """Inference-only fused ViT built by `threethings_fast.convert`.

    forward(images (B, C, H, W) in the model's dtype, on its device) -> logits (B, num_classes).
    The weights are frozen, folded copies: changing the source model afterwards does not change this one
    (see `refold` for re-folding parts of it, e.g. one task's attention weights).
    """

    def __init__(self, weights: FusedWeights, ops, dtype: torch.dtype, device: torch.device):
        super().__init__(weights, ops, dtype, device)

    def extra_repr(self) -> str:
        c = self.config
        norm = getattr(self.ops, "norm", "separate")
        tokens = f", prefix_tokens={c.num_prefix_tokens}" if c.num_prefix_tokens != 1 or c.distilled else ""
        return (f"backend={self.backend}, norm={norm}, dtype={self.dtype}, device={self.device}, depth={c.depth}, "
                f"K={c.num_parallel}, D={c.embed_dim}, heads={c.num_heads}, stem={c.stem}, img_size={c.img_size}, "
                f"patch={c.patch_size}, pool={c.global_pool}{tokens}")

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        if getattr(self.ops, "runs_whole_forward", False):   # the C++ engine: one op call per forward
            return self.ops.run(self.weights, images)
        return super()._run(images)

    @torch.no_grad()
    def refold(self, model: nn.Module, parts: Iterable[str] = ("attn", "head", "pos")) -> "FusedViT":
        """Re-fold only `parts` of `model` (same architecture) into this fused model, in place:
        "attn" (norm1 + qkv + proj + LayerScale of every branch), "ffn", "head" (final norm / fc_norm + head(s)),
        "pos" (class / distillation / register tokens + position embeddings). The other packed weights are kept as they are: switching
        between tasks that share FFN/stem weights re-folds only what the task brings."""
        parts = set(parts)
        unknown = parts - {"attn", "ffn", "head", "pos"}
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; choose from attn, ffn, head, pos")
        if model.config != self.config:
            raise ValueError(f"model config {model.config} does not match the fused model's {self.config}")
        dt, dev = self.dtype, self.device
        w = self.weights
        if "attn" in parts or "ffn" in parts:
            for i, block in enumerate(model.blocks):
                new = fold_block(block, model.config)
                old = w.blocks[i]
                names = (["w_qkv", "b_qkv", "w_proj", "b_proj"] if "attn" in parts else []) + \
                        (["w_fc1", "b_fc1", "w_fc2", "b_fc2"] if "ffn" in parts else [])
                for name in names:
                    getattr(old, name).copy_(getattr(new, name).to(dtype=dt, device=dev))
        if "head" in parts or "pos" in parts:
            folded = fold_embed_and_head(model)
            if "head" in parts:
                w.head_w.copy_(folded["head_w"].to(dt))
                w.head_b.copy_(folded["head_b"].to(dt))
            if "pos" in parts:
                w.prefix.copy_(folded["prefix"].to(dt))
                w.pos_patches.copy_(folded["pos_patches"].to(dt))
        refresh = getattr(self.ops, "refresh", None)
        if refresh is not None:  # what a backend derives from the weights (Triton norm="fused": column sums)
            refresh(w)
        return self

