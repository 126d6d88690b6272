"""The user entry points."""
from __future__ import annotations

import dataclasses

from torch import nn

from .configs import from_name
from .models import family_of, resolve_any
from .reference.model import VisionTransformer


def create_model(name_or_config="vit_small_patch16_18x2_224", **overrides) -> nn.Module:
    """Build a randomly initialised reference model.

    name_or_config: a ViT name from `list_models()`, a paper short name ("S18x2"), a deit name
    ("deit_small_patch16_18x2_LS"), a `ViTConfig`; or a model of another family (`threethings_fast.models`): a name
    such as "mixer_b16_224", "resmlp_24_224", "gmlp_s16_224", "vip_s7", "ffonly_tiny", or its config.
    Overrides use the config's field names: for ViTs timm's (img_size, patch_size, embed_dim, depth, num_heads,
    mlp_ratio, num_classes, init_values) plus num_parallel (K) and stem = "linear" | "hmlp_bn" | "hmlp_ln".
    """
    if isinstance(name_or_config, str):
        try:
            return VisionTransformer(from_name(name_or_config, **overrides))
        except KeyError:
            config = resolve_any(name_or_config)      # another family's name (KeyError lists every known name)
    else:
        config = name_or_config
    family = family_of(config)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    return family.reference_type()(config)
