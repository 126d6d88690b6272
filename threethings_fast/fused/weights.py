"""The packed, run-dtype weights a fused model executes with (see threethings_fast.folding for the math)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..configs import ViTConfig


@dataclass
class FusedWeights:
    """Everything one forward reads, already in the run dtype and on the run device.

    stem:        backend-specific prepared stem (the torch backend keeps fold_stem's dict, cast)
    prefix:      (P, D)      prefix-token rows (class / distillation / register tokens with their positions); P may
                             be 0
    pos_patches: (N_p, D)    patch position embeddings
    norm_pre:    None, or {"weight": (D,), "bias": (D,)}: LayerNorm of the embeddings before the blocks
    blocks:      list of FoldedBlock (w_qkv (3KD, D), w_proj (D, KD), w_fc1 (KF, D), w_fc2 (D, KF), biases)
    head_w, head_b: (C, T·D), (C,)  the head on the features of folding.head_layout (final LayerNorm affine folded;
                             T = 2 for a distilled model's merged heads)
    """

    config: ViTConfig
    stem: Any
    prefix: torch.Tensor
    pos_patches: torch.Tensor
    norm_pre: Optional[dict]
    blocks: list
    head_w: torch.Tensor
    head_b: torch.Tensor
    extras: dict = field(default_factory=dict)

    def tensors(self):
        """Every weight tensor (for memory accounting and dtype/device checks)."""
        yield self.prefix
        yield self.pos_patches
        if self.norm_pre is not None:
            yield from self.norm_pre.values()
        yield self.head_w
        yield self.head_b
        for block in self.blocks:
            yield from block.tensors().values()
        if isinstance(self.stem, dict):
            yield from (v for v in self.stem.values() if isinstance(v, torch.Tensor))


def cast_common(folded: dict, dtype: torch.dtype, device) -> dict:
    """The parts every backend stores the same way: prefix and positions, norm_pre, blocks, head."""
    def c(t):
        return t.to(dtype=dtype, device=device).contiguous()
    norm_pre = folded.get("norm_pre")
    return {
        "prefix": c(folded["prefix"]),
        "pos_patches": c(folded["pos_patches"]),
        "norm_pre": {k: c(v) for k, v in norm_pre.items()} if norm_pre is not None else None,
        "blocks": [b.to(dtype=dtype, device=device) for b in folded["blocks"]],
        "head_w": c(folded["head_w"]),
        "head_b": c(folded["head_b"]),
    }
