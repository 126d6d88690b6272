"""Checkpoints whose parameter names are the model's own (the official Vision Permutator and feed-forward-only
layouts): unwrap training checkpoints, check every key and shape with a clear error, load strictly, export copies."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

_WRAPPERS = ("state_dict", "model", "state_dict_ema", "model_ema")


def unwrap_state_dict(state_dict: Mapping) -> dict:
    """The tensor dict inside a training checkpoint, without a DataParallel "module." prefix."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    for key in _WRAPPERS:
        inner = state_dict.get(key)
        if isinstance(inner, Mapping) and not isinstance(inner, torch.Tensor):
            state_dict = inner
            break
    keys = list(state_dict)
    if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _listing(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_same_layout(model: nn.Module, state_dict: Mapping, who: str, grid_keys: tuple = (),
                      grid_hint: str = "") -> dict:
    """ValueError naming missing, unexpected and mis-shaped keys unless `state_dict` has exactly the model's keys and
    shapes; returns the unwrapped dict. A mis-shaped key containing one of `grid_keys` (weights sized by the token
    grid) adds `grid_hint` to the message."""
    state_dict = unwrap_state_dict(state_dict)
    own = model.state_dict()
    missing = set(own) - set(state_dict)
    unexpected = set(state_dict) - set(own)
    bad_type = sorted(k for k in set(own) & set(state_dict) if not isinstance(state_dict[k], torch.Tensor))
    shapes = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state_dict)
                    if k not in bad_type and tuple(state_dict[k].shape) != tuple(own[k].shape))
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if bad_type:
        problems.append(f"not tensors: {_listing(bad_type)}")
    if shapes:
        problems.append("mis-shaped keys: " + "; ".join(shapes[:8]) + (" ..." if len(shapes) > 8 else ""))
    if problems:
        hint = ""
        if shapes and any(k in " ".join(shapes) for k in grid_keys):
            hint = f" ({grid_hint})"
        raise ValueError(f"{who}: the state dict does not fit the model{hint}: " + " | ".join(problems))
    return state_dict


def load_same_layout(model: nn.Module, state_dict: Mapping, who: str, grid_keys: tuple = (),
                     grid_hint: str = "") -> nn.Module:
    state_dict = check_same_layout(model, state_dict, who, grid_keys, grid_hint)
    model.load_state_dict(state_dict, strict=True)
    return model


def export_same_layout(model: nn.Module) -> dict:
    """Detached copies of every entry of the model's state dict (names already official)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
