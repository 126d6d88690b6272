"""Feed-forward-only ViT configurations (Melas-Kyriazi 2021, "Do You Even Need Attention?") and a name table.

The official model (github.com/lukemelas/do-you-even-need-attention, vision_transformer_linear.py,
`LinearVisionTransformer`) is a DeiT whose attention layers are replaced by an MLP over the token dimension (class
token included). Field names follow it where they exist: embed_dim, depth, mlp_ratio (the channel MLP), and the
token MLP's hidden size int(num_tokens * token_mlp_ratio) (the official code reuses mlp_ratio: 4).

Generalised from the official code, identical at 224:
- the token MLP is sized from this config's grid, N = 1 + (img_size / patch_size)^2; the official code hard-codes
  N = 1 + (224 / patch_size)^2 whatever the input size;
- the learned position grid `pos_grid` (the official `learned_positional_encoding_size`, 14 by default for every
  model) defaults to the token grid; when it differs (the official P = 32 "large" model: a 14x14 table on a 7x7 grid)
  it is bilinearly resized at run time, as the official code does.
- `stem` may be the hMLP stem of threethings_fast.reference.stems ("hmlp_bn" / "hmlp_ln", 16x16 patches only); the
  official model has the linear stem only.

Names accepted by `resolve_name` / `from_name`:
- ffonly_tiny, ffonly_base, ffonly_large      (the paper's Table 1: Tiny P=16, Base P=16, Large P=32)
- the official factory names: linear_tiny, linear_base, linear_large; the README's FF-tiny, FF-base, FF-large
- tiny test models: ffonly_test_a, ffonly_test_b, ffonly_test_c (see TINY_TABLE)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .._layers import check_common, check_eps, list_names, resolve, with_overrides

STEMS = ("linear", "hmlp_bn", "hmlp_ln")


@dataclass(frozen=True)
class FFOnlyConfig:
    """Hyper-parameters of one feed-forward-only ViT (class token, learned positions, class-token head)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    mlp_ratio: float = 4.0
    token_mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    stem: str = "linear"
    pos_grid: Optional[int] = None

    def __post_init__(self):
        check_common(self, STEMS)
        if self.pos_grid is not None and (not isinstance(self.pos_grid, int) or self.pos_grid < 1):
            raise ValueError(f"pos_grid must be None (the token grid) or a positive int, got {self.pos_grid!r}")
        if not self.mlp_ratio > 0 or self.mlp_hidden < 1:
            raise ValueError(f"mlp_ratio must give a hidden width >= 1, got {self.mlp_ratio!r}")
        if not self.token_mlp_ratio > 0 or self.token_mlp_hidden < 1:
            raise ValueError(f"token_mlp_ratio must give a hidden width >= 1, got {self.token_mlp_ratio!r}")
        check_eps("norm_eps", self.norm_eps)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def num_tokens(self) -> int:
        """N: class token + patches; the token MLP's input width (197 at 224 / 16)."""
        return self.num_patches + 1

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def token_mlp_hidden(self) -> int:
        return int(self.num_tokens * self.token_mlp_ratio)

    @property
    def pos_grid_size(self) -> int:
        """Side of the learned position table (1, D, g, g)."""
        return self.grid_size if self.pos_grid is None else self.pos_grid

    def replace(self, **overrides) -> "FFOnlyConfig":
        return dataclasses.replace(self, **overrides)


# The paper's Table 1 models = the official factories linear_tiny / linear_base / linear_large.
MODEL_TABLE: dict[str, FFOnlyConfig] = {
    "ffonly_tiny": FFOnlyConfig(patch_size=16, embed_dim=192, depth=12),
    "ffonly_base": FFOnlyConfig(patch_size=16, embed_dim=768, depth=12),
    # P = 32 on a 7x7 grid, but the official position table stays 14x14 (resized at run time)
    "ffonly_large": FFOnlyConfig(patch_size=32, embed_dim=1024, depth=24, pos_grid=14),
}

# Small models for tests, odd sizes on purpose:
#   ffonly_test_a  48 px / 16: 3x3 grid, N = 10 tokens, D = 40, hidden sizes int(40 * 2.5) = 100, int(10 * 2.5) = 25
#   ffonly_test_b  80 px / 16: 5x5 grid, N = 26, D = 24, hMLP stem (LayerNorm), token MLP ratio 3 != mlp_ratio 4
#   ffonly_test_c  28 px / 4: 7x7 grid, N = 50, D = 24, a 4x4 position table resized to 7x7 (the large model's path)
TINY_TABLE: dict[str, FFOnlyConfig] = {
    "ffonly_test_a": FFOnlyConfig(img_size=48, patch_size=16, num_classes=10, embed_dim=40, depth=2, mlp_ratio=2.5,
                                  token_mlp_ratio=2.5),
    "ffonly_test_b": FFOnlyConfig(img_size=80, patch_size=16, num_classes=7, embed_dim=24, depth=1,
                                  token_mlp_ratio=3.0, stem="hmlp_ln"),
    "ffonly_test_c": FFOnlyConfig(img_size=28, patch_size=4, num_classes=10, embed_dim=24, depth=2, pos_grid=4),
}

_ALIASES = {
    "linear_tiny": "ffonly_tiny", "linear_base": "ffonly_base", "linear_large": "ffonly_large",
    "FF-tiny": "ffonly_tiny", "FF-base": "ffonly_base", "FF-large": "ffonly_large",
}


def list_models(include_tiny: bool = False) -> list[str]:
    return list_names([MODEL_TABLE], TINY_TABLE, include_tiny)


def resolve_name(name: str) -> FFOnlyConfig:
    """Config of a feed-forward-only model name; KeyError listing the known names."""
    return resolve(name, "feed-forward-only", [MODEL_TABLE, TINY_TABLE], _ALIASES)


def from_name(name: str, **overrides) -> FFOnlyConfig:
    """Config for `name` with field overrides; TypeError for an unknown field."""
    return with_overrides(resolve_name(name), overrides)
