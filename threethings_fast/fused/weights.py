"""The packed, run-dtype weights a fused model executes with (see threethings_fast.models.vit.folding for the math)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..configs import ViTConfig


@dataclass
class FusedWeights:
    """Everything one forward reads, already in the run dtype and on the run device.

    stem:        the backend's prepared stem: the torch backend's is the folded stem cast (`stem_fold`), Triton's the
                 cast linear stem or the hMLP kernel's packed weights, the engine's an `EngineStem`
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
        yield from stem_tensors(self.stem)


def stem_tensors(stem) -> list:
    """The tensors of a prepared stem: a folded stem's or the hMLP kernel's packed weights (`.tensors()`), the
    engine's `EngineStem` (`.tensors`, a tuple), or none."""
    tensors = getattr(stem, "tensors", None)
    if callable(tensors):
        return list(tensors())
    return list(tensors) if tensors is not None else []


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


@dataclass
class PackedModel:
    """An MLP-family model's folded weights (`models/<family>/fold.py`): float64 from the fold, the run dtype after
    `pack`.

    stem:    a folded stem (`stem_fold`), or the backend's prepared one after `pack`
    blocks:  one dict of tensors per block, named by the family's forward
    head_w, head_b: (C, D), (C,) the head with the final norm's affine folded in
    extra:   other named tensors of the forward (e.g. the class row and positions), cast like the blocks'
    Tensors named "*_scale" / "*_shift" are epilogue operands of a token GEMM: they stay at least float32 (the
    kernels apply them in the fp32 accumulator, so a bf16 run does not round the folded affine).
    """

    config: Any
    stem: Any
    blocks: list
    head_w: torch.Tensor
    head_b: torch.Tensor
    extra: dict = field(default_factory=dict)

    def tensors(self):
        yield self.head_w
        yield self.head_b
        yield from self.extra.values()
        for block in self.blocks:
            yield from block.values()
        yield from stem_tensors(self.stem)

    def pack(self, ops, dtype: torch.dtype, device) -> "PackedModel":
        """The backend's copy: every tensor cast once to `dtype` on `device`, the stem prepared by `ops`."""
        wide = torch.promote_types(dtype, torch.float32)

        def cast(name, t):
            dt = wide if name.endswith(("_scale", "_shift")) else dtype
            return t.to(dtype=dt, device=device).contiguous()
        return PackedModel(config=self.config, stem=ops.prepare_stem(self.stem, dtype, device),
                           blocks=[{k: cast(k, v) for k, v in blk.items()} for blk in self.blocks],
                           head_w=cast("head_w", self.head_w), head_b=cast("head_b", self.head_b),
                           extra={k: cast(k, v) for k, v in self.extra.items()})
