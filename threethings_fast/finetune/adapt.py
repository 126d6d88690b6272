"""Adapting a base model to a new resolution or a new label set before fine-tuning."""
from __future__ import annotations

import torch
from torch import nn

from ..reference.model import VisionTransformer
from .roles import _check_model


def adapt_resolution(model: VisionTransformer, img_size: int) -> VisionTransformer:
    """Resize `model` (in place, returned) to img_size x img_size inputs: pos_embed is resized bicubically (the
    class-token position kept, DeiT's 224 -> 384 recipe); N = (img_size / patch)^2 + 1, e.g. 577 at 384.
    pos_embed becomes a new Parameter: build the optimizer (and call freeze) afterwards."""
    _check_model(model)
    model.set_img_size(img_size)
    return model


def replace_head(model: VisionTransformer, num_classes: int, generator=None) -> VisionTransformer:
    """Give `model` (in place, returned) a new, freshly initialised head for `num_classes` classes (0: none, the
    model then returns the final-normed class-token features). Initialised like the reference model
    (truncated normal 0.02, zero bias), in the model's dtype and device."""
    _check_model(model)
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
    d = model.config.embed_dim
    ref = model.pos_embed
    if num_classes > 0:
        head = nn.Linear(d, num_classes, device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            nn.init.trunc_normal_(head.weight, std=0.02, generator=generator)
            nn.init.zeros_(head.bias)
    else:
        head = nn.Identity()
    model.head = head
    model.config = model.config.replace(num_classes=num_classes)
    return model
