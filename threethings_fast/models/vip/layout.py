"""The official ViP parameter layout (github.com/Andrew-Qibin/VisionPermutator, models/vip.py).

Our module names are the official ones (patch_embed.proj, network.<i>.<j>.{norm1, attn.{mlp_c, mlp_h, mlp_w,
reweight.fc1, reweight.fc2, proj}, norm2, mlp.fc1, mlp.fc2}, network.<i>.proj for a Downsample, norm, head), so the
mapping is the identity: `load_official` checks every key and shape with a clear error, then loads strictly.
Checkpoints wrapped as {"state_dict": ...} / {"model": ...} or saved from DataParallel ("module." prefix) are
unwrapped first.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .._layout import export_same_layout, load_same_layout

_GRID_HINT = "the height / width projections are sized by the token grid: build the model at the checkpoint's img_size"


def load_official(model: nn.Module, state_dict: Mapping) -> nn.Module:
    """Load an official ViP state dict (or checkpoint) into a `VisionPermutator`; ValueError on any mismatch."""
    return load_same_layout(model, state_dict, "ViP load_official", ("mlp_h",), _GRID_HINT)


def export_official(model: nn.Module) -> dict:
    """The official-layout state dict of a `VisionPermutator` (identical names; tensors copied)."""
    return export_same_layout(model)
