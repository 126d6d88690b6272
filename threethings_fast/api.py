"""The user entry points."""
from __future__ import annotations

from .configs import ViTConfig, from_name
from .reference.model import VisionTransformer


def create_model(name_or_config="vit_small_patch16_18x2_224", **overrides) -> VisionTransformer:
    """Build a randomly initialised reference model.

    name_or_config: a name from `list_models()`, a paper short name ("S18x2"), a deit name
    ("deit_small_patch16_18x2_LS"), or a `ViTConfig`. Overrides use timm's argument names (img_size, patch_size,
    embed_dim, depth, num_heads, mlp_ratio, num_classes, init_values) plus num_parallel (K) and
    stem = "linear" | "hmlp_bn" | "hmlp_ln".
    """
    if isinstance(name_or_config, ViTConfig):
        config = name_or_config.replace(**overrides) if overrides else name_or_config
    else:
        config = from_name(name_or_config, **overrides)
    return VisionTransformer(config)
