"""Which parameters a fine-tuning mode trains, found by module ROLE (never by name), and `freeze`.

Every parameter of a reference `VisionTransformer` has exactly one role:

    stem        everything under model.patch_embed (linear or hMLP convs, their norms)
    embed       cls_token, pos_embed
    attn        qkv and proj (weights and biases) of every `Attention`, in every branch of every block, any K
    ffn         fc1 and fc2 of every `Mlp`, every branch
    norm        every LayerNorm outside the stem: the per-branch pre-norms and the final norm
    layerscale  every LayerScale gamma
    head        the classifier

Training modes (`train=`):

    "attn"  attn + head + pos_embed      the paper's "fine-tuning attention is all you need": the MHSA weights are
                                         qkv + proj, exactly what the official code selects with '.attn.' (its
                                         pre-norm and LayerScale live outside `.attn.` there too), but found by
                                         role, so the second branch of a parallel block (deit's `attn1`, which
                                         '.attn.' misses) is trained as well.
    "ffn"   ffn + head + pos_embed       the control experiment of the paper
    "full"  everything

The class token, the norms and LayerScale stay frozen in "attn" and "ffn" modes: they are shared with the base
model, so a task stores only its qkv/proj, head and positions (~1/3 of ViT-B).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..reference.blocks import Attention, LayerScale, Mlp
from ..reference.model import VisionTransformer

ROLES = ("attn", "ffn", "norm", "layerscale", "stem", "embed", "head")
TRAIN_MODES = ("attn", "ffn", "full")
_TRAINED_ROLES = {"attn": {"attn", "head"}, "ffn": {"ffn", "head"}}
_MODE_ATTR = "_ttf_finetune_mode"  # set on the model by freeze(); read by save_delta


def _check_model(model) -> None:
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"expected a threethings_fast VisionTransformer (ttf.create_model), got "
                        f"{type(model).__name__}")


def _check_mode(train: str) -> None:
    if train not in TRAIN_MODES:
        raise ValueError(f"train must be one of {TRAIN_MODES}, got {train!r}")


def param_roles(model: VisionTransformer) -> dict[str, str]:
    """{parameter name: role} for every parameter of `model` (names as in model.named_parameters())."""
    _check_model(model)
    role_of: dict[int, str] = {}

    def claim(module: nn.Module, role: str) -> None:
        for p in module.parameters():
            role_of.setdefault(id(p), role)

    claim(model.patch_embed, "stem")  # first: the hMLP stem's norms are stem, not "norm"
    for module in model.modules():
        if isinstance(module, Attention):
            claim(module, "attn")
        elif isinstance(module, Mlp):
            claim(module, "ffn")
        elif isinstance(module, LayerScale):
            claim(module, "layerscale")
        elif isinstance(module, nn.LayerNorm):
            claim(module, "norm")
    claim(model.head, "head")
    role_of.setdefault(id(model.cls_token), "embed")
    role_of.setdefault(id(model.pos_embed), "embed")
    roles = {}
    for name, p in model.named_parameters():
        if id(p) not in role_of:  # a module type this file does not know: refuse rather than guess
            raise TypeError(f"parameter {name!r} has no known role; teach threethings_fast.finetune.roles about "
                            f"its module")
        roles[name] = role_of[id(p)]
    return roles


def trainable_names(model: VisionTransformer, train: str) -> list[str]:
    """Names of the parameters that mode `train` trains (in model.named_parameters() order)."""
    _check_mode(train)
    roles = param_roles(model)
    if train == "full":
        return list(roles)
    pos_name = next(n for n, p in model.named_parameters() if p is model.pos_embed)
    return [n for n, r in roles.items() if r in _TRAINED_ROLES[train] or n == pos_name]


def delta_keys(model: VisionTransformer, train: str) -> list[str]:
    """State-dict keys a task fine-tuned in mode `train` must store: its trainable parameters, plus, in "full"
    mode, the buffers (BatchNorm running statistics of an hMLP stem change when the stem trains)."""
    names = set(trainable_names(model, train))
    if train == "full":
        return list(model.state_dict())
    return [k for k in model.state_dict() if k in names]


def frozen_keys(model: VisionTransformer, train: str) -> list[str]:
    """State-dict keys (parameters and buffers) that mode `train` leaves unchanged, sorted: what the base
    fingerprint hashes."""
    stored = set(delta_keys(model, train))
    return sorted(k for k in model.state_dict() if k not in stored)


@dataclass
class FreezeSummary:
    """Trainable / total parameter counts by role, for one training mode. `str()` is a table."""

    train: str
    trainable: dict = field(default_factory=dict)   # role -> count
    total: dict = field(default_factory=dict)       # role -> count

    @property
    def num_trainable(self) -> int:
        return sum(self.trainable.values())

    @property
    def num_total(self) -> int:
        return sum(self.total.values())

    @property
    def fraction(self) -> float:
        return self.num_trainable / max(1, self.num_total)

    def __str__(self) -> str:
        lines = [f"train={self.train!r}: {self.num_trainable:,} of {self.num_total:,} parameters trainable "
                 f"({100 * self.fraction:.1f}%)",
                 f"  {'role':<11}{'trainable':>14}{'total':>14}{'trained':>9}"]
        for role in ROLES:
            tot = self.total.get(role, 0)
            if tot == 0:
                continue
            tr = self.trainable.get(role, 0)
            lines.append(f"  {role:<11}{tr:>14,}{tot:>14,}{100 * tr / tot:>8.0f}%")
        lines.append(f"  {'all':<11}{self.num_trainable:>14,}{self.num_total:>14,}{100 * self.fraction:>8.1f}%")
        return "\n".join(lines)


def summarize(model: VisionTransformer, train: str) -> FreezeSummary:
    """What `freeze(model, train)` would train, without changing the model."""
    trained = set(trainable_names(model, train))
    summary = FreezeSummary(train=train, trainable={r: 0 for r in ROLES}, total={r: 0 for r in ROLES})
    params = dict(model.named_parameters())
    for name, role in param_roles(model).items():
        n = params[name].numel()
        summary.total[role] += n
        if name in trained:
            summary.trainable[role] += n
    return summary


def freeze(model: VisionTransformer, train: str = "attn") -> FreezeSummary:
    """Set requires_grad by role for fine-tuning mode `train` ("attn" | "ffn" | "full", see the module docstring),
    in place, and return the per-role summary. Frozen parameters get requires_grad=False, so they get no
    gradient, and an optimizer built over all parameters (AdamW included: it skips parameters whose grad is None,
    weight decay too) leaves them bit-identical.

    Call `train_mode(model)` rather than `model.train()` before training: it keeps frozen BatchNorm layers (an
    hMLP-BN stem) in eval mode, else their running statistics would drift and the "frozen" stem would change.
    After `adapt_resolution` / `replace_head`, call freeze again (they create new parameters)."""
    names = set(trainable_names(model, train))
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
    setattr(model, _MODE_ATTR, train)
    return summarize(model, train)


def finetune_mode_of(model: VisionTransformer):
    """The mode the last `freeze` set on this model, or None."""
    return getattr(model, _MODE_ATTR, None)


def train_mode(model: nn.Module) -> nn.Module:
    """model.train(), except BatchNorm layers whose parameters are all frozen, which stay in eval mode (running
    statistics unchanged, normalised with them — the frozen stem computes exactly what the base computes)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if not any(p.requires_grad for p in params):
                module.eval()
    return model


def make_optimizer(model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.05, **kwargs) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only. As in DeiT, matrices decay and biases, 1-D vectors and the
    position embedding do not. (Frozen parameters are not even handed to the optimizer, so neither its update
    nor its weight decay can touch them.)"""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or name in ("pos_embed", "cls_token") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, **kwargs)
