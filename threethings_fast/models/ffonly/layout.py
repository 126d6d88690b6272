"""The official feed-forward-only layout (github.com/lukemelas/do-you-even-need-attention,
vision_transformer_linear.py): patch_embed.proj, cls_token, pos_encoding.pos_embed (1, D, g, g),
pos_encoding.cls_pos_embed (1, 1, D), blocks.<i>.{mlp1.fc1, mlp1.fc2, norm1, mlp2.fc1, mlp2.fc2, norm2}, norm, head.

Our module names are the official ones, so the mapping is the identity: `load_official` checks every key and shape
with a clear error, then loads strictly (the released checkpoints are DeiT-style {"model": state_dict}, unwrapped
here). Only the linear stem has an official counterpart; an hMLP model round-trips under the same rules.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .._layout import export_same_layout, load_same_layout

_GRID_HINT = ("the token MLP and the position table are sized by the token grid: build the model at the checkpoint's "
              "img_size and patch_size")


def load_official(model: nn.Module, state_dict: Mapping) -> nn.Module:
    """Load an official feed-forward-only state dict (or {"model": ...} checkpoint) into an `FFOnly`; ValueError
    naming missing / unexpected / mis-shaped keys (a token-MLP shape mismatch means another img_size or patch)."""
    return load_same_layout(model, state_dict, "FFOnly load_official", ("mlp2.", "pos_encoding.pos_embed"),
                            _GRID_HINT)


def export_official(model: nn.Module) -> dict:
    """The official-layout state dict of an `FFOnly` (identical names; tensors copied)."""
    return export_same_layout(model)
