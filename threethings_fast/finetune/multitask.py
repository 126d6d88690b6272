"""Serving several attention-fine-tuned tasks from one fused model.

Tasks fine-tuned with train="attn" (or "ffn") share the stem, the FFN (resp. attention) weights, the norms and
LayerScale of their base. `MultiTaskFused` converts the base once; `select(task)` writes the task's delta into a
reference copy and re-folds only the parts the task changes — `FusedViT.refold(parts=("attn", "pos"))` — so the
packed FFN and stem weights are never re-converted.

Heads: tasks may have different numbers of classes, and `FusedViT.refold` needs a model of its own config. So
the fused model is converted with num_classes = 0: it returns the final-normed class token (the final LayerNorm's
affine is its "head", shared by all tasks since the norm is frozen), and each task's head runs as one extra
(B, D) x (D, C_task) matmul in the fused dtype. That is the reference's own order of operations (norm, then head),
costs B*D*C MACs, and needs no change to FusedViT.

Resolution: a task fine-tuned at another img_size (e.g. 224 -> 384) needs a fused model at that size (its
config and position table differ). One fused model is kept per resolution, converted from the base on first use
and shared by every task at that size.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..convert import convert
from ..reference.model import VisionTransformer
from ..validation import concrete_device
from .adapt import adapt_resolution, replace_head
from .delta import Delta, base_fingerprint, check_delta, read_delta
from .roles import _check_model

_PARTS = {"attn": ("attn", "pos"), "ffn": ("ffn", "pos")}


@dataclass
class _Task:
    delta: Delta
    body: dict                      # delta tensors without the head, written into the features-only reference
    head_w: Optional[torch.Tensor]  # (C, D) in the fused dtype/device, None when num_classes == 0
    head_b: Optional[torch.Tensor]  # (C,)

    @property
    def img_size(self) -> int:
        return self.delta.config.img_size

    @property
    def parts(self) -> tuple:
        return _PARTS[self.delta.train]


@dataclass
class _Slot:
    """One resolution: the features-only reference copy, its base values, the fused model, the task folded in."""
    ref: VisionTransformer
    base_state: dict
    fused: object
    current: Optional[str] = None


class MultiTaskFused:
    """One base model, several task deltas, one fused model per resolution.

        mt = MultiTaskFused(base, backend="torch", dtype=torch.float32)
        mt.add_task("cars", "cars.delta.pt")          # a path or a Delta; checked against the base
        mt.add_task("birds384", "birds384.delta.pt")
        logits = mt(images, task="cars")              # (B, C_cars); switching re-folds attn + pos only

    backend/dtype/device/norm: as in `threethings_fast.convert`. The base is copied: changing it afterwards does not
    change this object. Tasks fine-tuned with train="full" share nothing and are refused (convert them alone)."""

    def __init__(self, base: VisionTransformer, backend: str = "auto", dtype: Optional[torch.dtype] = None,
                 device=None, norm: str = "separate"):
        _check_model(base)
        self.base = copy.deepcopy(base).eval().requires_grad_(False)
        self.backend = backend
        self.norm = norm
        self.dtype = dtype or base.pos_embed.dtype
        self.device = concrete_device(device) if device is not None else base.pos_embed.device
        self.tasks: dict[str, _Task] = {}
        self.active: Optional[str] = None
        self._slots: dict[int, _Slot] = {}
        self._fingerprints: dict[str, str] = {}

    # -- tasks --------------------------------------------------------------------------------------------------
    def add_task(self, name: str, delta: Union[str, os.PathLike, Delta]) -> None:
        """Register a task from a delta file or Delta. Raises DeltaError if it does not belong to the base."""
        if not isinstance(delta, Delta):
            delta = read_delta(delta)
        if delta.train not in _PARTS:
            raise ValueError(f"task {name!r} was fine-tuned with train={delta.train!r}: it shares no weights with "
                             f"the base; serve it with threethings_fast.convert(load_delta(base, path))")
        if delta.train not in self._fingerprints:
            self._fingerprints[delta.train] = base_fingerprint(self.base, delta.train)
        check_delta(self.base, delta, fingerprint=self._fingerprints[delta.train])
        body = {k: v for k, v in delta.tensors.items() if not k.startswith("head.")}
        head_w = head_b = None
        if delta.config.num_classes > 0:
            head_w = delta.tensors["head.weight"].to(dtype=self.dtype, device=self.device).contiguous()
            head_b = delta.tensors["head.bias"].to(dtype=self.dtype, device=self.device).contiguous()
        if self.active == name:  # replacing the folded task: fold it again on next use
            self._slots[self.tasks[name].img_size].current = None
            self.active = None
        self.tasks[name] = _Task(delta=delta, body=body, head_w=head_w, head_b=head_b)

    def _slot(self, img_size: int) -> _Slot:
        if img_size not in self._slots:
            ref = replace_head(copy.deepcopy(self.base), 0)
            if img_size != ref.config.img_size:
                adapt_resolution(ref, img_size)
            fused = convert(ref, backend=self.backend, dtype=self.dtype, device=self.device, norm=self.norm)
            base_state = {k: v.clone() for k, v in ref.state_dict().items()}
            self._slots[img_size] = _Slot(ref=ref, base_state=base_state, fused=fused)
        return self._slots[img_size]

    @torch.no_grad()
    def select(self, name: str) -> None:
        """Make `name` the active task: write its delta into the reference copy and re-fold only what changes."""
        if name not in self.tasks:
            raise KeyError(f"unknown task {name!r}; known: {sorted(self.tasks)}")
        task = self.tasks[name]
        slot = self._slot(task.img_size)
        if slot.current != name:
            sd = slot.ref.state_dict()
            parts = set(task.parts)
            if slot.current is not None:  # undo the previous task where the new one writes nothing
                prev = self.tasks[slot.current]
                parts |= set(prev.parts)
                for k in prev.body.keys() - task.body.keys():
                    sd[k].copy_(slot.base_state[k])
            for k, v in task.body.items():
                sd[k].copy_(v)
            slot.fused.refold(slot.ref, parts=tuple(sorted(parts)))
            slot.current = name
        self.active = name

    def fused_model(self, name: Optional[str] = None):
        """The FusedViT (features, num_classes = 0) serving task `name` (default: the active one), selected."""
        name = name or self.active
        if name is None:
            raise RuntimeError("no task selected; call select(name) or pass task=")
        self.select(name)
        return self._slots[self.tasks[name].img_size].fused

    def __call__(self, images: torch.Tensor, task: Optional[str] = None) -> torch.Tensor:
        """images (B, C, S, S) at the task's img_size, in the fused dtype/device -> logits (B, C_task), or the
        (B, D) features for a task without a head."""
        fused = self.fused_model(task)
        t = self.tasks[self.active]
        feats = fused(images)                                   # (B, D): final-normed class token
        if t.head_w is None:
            return feats
        return torch.addmm(t.head_b, feats, t.head_w.t())       # (B, C_task)

    def nbytes(self) -> dict:
        """Bytes held: the shared fused weights (all resolutions) and each task's own tensors."""
        shared = sum(t.numel() * t.element_size() for s in self._slots.values() for t in s.fused.weights.tensors())
        per_task = {n: t.delta.nbytes for n, t in self.tasks.items()}
        return {"shared_fused": shared, "tasks": per_task}
