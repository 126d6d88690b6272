"""The packed, run-dtype weights a fused model executes with (see threethings_fast.folding for the math)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..configs import ViTConfig


@dataclass
class FusedWeights:
    """Everything one forward reads, already in the run dtype and on the run device.

    stem:        backend-specific prepared stem (the torch backend keeps fold_stem's dict, cast)
    cls_pos:     (1, 1, D)   class token + its position embedding
    pos_patches: (N_p, D)    patch position embeddings
    blocks:      list of FoldedBlock (w_qkv (3KD, D), w_proj (D, KD), w_fc1 (KF, D), w_fc2 (D, KF), biases)
    head_w, head_b: (C, D), (C,)  final LayerNorm affine folded into the head
    """

    config: ViTConfig
    stem: Any
    cls_pos: torch.Tensor
    pos_patches: torch.Tensor
    blocks: list
    head_w: torch.Tensor
    head_b: torch.Tensor
    extras: dict = field(default_factory=dict)

    def tensors(self):
        """Every weight tensor (for memory accounting and dtype/device checks)."""
        yield self.cls_pos
        yield self.pos_patches
        yield self.head_w
        yield self.head_b
        for block in self.blocks:
            yield from block.tensors().values()
        if isinstance(self.stem, dict):
            yield from (v for v in self.stem.values() if isinstance(v, torch.Tensor))


def cast_common(folded: dict, dtype: torch.dtype, device) -> dict:
    """The parts every backend stores the same way: class/pos embeddings, blocks, head."""
    def c(t):
        return t.to(dtype=dtype, device=device).contiguous()
    return {
        "cls_pos": c(folded["cls_pos"]),
        "pos_patches": c(folded["pos_patches"]),
        "blocks": [b.to(dtype=dtype, device=device) for b in folded["blocks"]],
        "head_w": c(folded["head_w"]),
        "head_b": c(folded["head_b"]),
    }
