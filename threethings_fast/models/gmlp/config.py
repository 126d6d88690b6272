"""gMLP configurations (Liu et al. 2021, "Pay Attention to MLPs", image classification models) and a name table.

Names accepted by `resolve_name` / `from_name`:
- timm's:            gmlp_ti16_224, gmlp_s16_224, gmlp_b16_224
- the paper's:       gMLP-Ti, gMLP-S, gMLP-B
- tiny test models:  gmlp_tiny_2, gmlp_tiny_3, gmlp_tiny_p16 (odd sizes on purpose)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .._layers import check_common, check_eps, check_positive_ints, list_names, resolve, with_overrides

STEMS = ("linear", "hmlp_bn", "hmlp_ln")


@dataclass(frozen=True)
class GMLPConfig:
    """Hyper-parameters of one gMLP.

    ffn_dim is fc1's output F (the paper's d_ffn; timm's 6 * embed_dim); the spatial gating unit splits it into two
    halves of F / 2, so F must be even. norm_eps is the block and final LayerNorms' eps (timm: 1e-6), gate_norm_eps
    the gating unit's LayerNorm eps (timm builds it with nn.LayerNorm's default, 1e-5).
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 256
    depth: int = 30
    ffn_dim: int = 1536
    norm_eps: float = 1e-6
    gate_norm_eps: float = 1e-5
    stem: str = "linear"

    def __post_init__(self):
        check_common(self, STEMS)
        check_positive_ints(self, ("ffn_dim",))
        if self.ffn_dim % 2:
            raise ValueError(f"ffn_dim must be even (the gating unit splits it in two halves), got {self.ffn_dim}")
        check_eps("norm_eps", self.norm_eps)
        check_eps("gate_norm_eps", self.gate_norm_eps)

    @property
    def gate_dim(self) -> int:
        """Channels of each half of the gating unit, F / 2."""
        return self.ffn_dim // 2

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Tokens N seen by the blocks (no class token): 196 at 224 / 16."""
        return self.grid_size ** 2

    def replace(self, **overrides) -> "GMLPConfig":
        return dataclasses.replace(self, **overrides)


def _paper(width: int) -> GMLPConfig:
    # Table 1 of the paper: 30 blocks, d_ffn = 6 * d_model, 16x16 patches
    return GMLPConfig(embed_dim=width, depth=30, ffn_dim=6 * width)


MODEL_TABLE: dict[str, GMLPConfig] = {
    "gmlp_ti16_224": _paper(128),
    "gmlp_s16_224": _paper(256),
    "gmlp_b16_224": _paper(512),
}

# 32x32 / 8: 16 tokens, width 40, F = 88 (gate halves of 44); 48x48 / 16 (9 tokens) for the hMLP stem.
TINY_TABLE: dict[str, GMLPConfig] = {
    f"gmlp_tiny_{d}": GMLPConfig(img_size=32, patch_size=8, num_classes=10, embed_dim=40, depth=d, ffn_dim=88)
    for d in (2, 3)
}
TINY_TABLE["gmlp_tiny_p16"] = GMLPConfig(img_size=48, patch_size=16, num_classes=10, embed_dim=40, depth=2,
                                         ffn_dim=88)

ALIASES = {"gMLP-Ti": "gmlp_ti16_224", "gMLP-S": "gmlp_s16_224", "gMLP-B": "gmlp_b16_224"}


def resolve_name(name: str) -> GMLPConfig:
    """Config of a timm name, a paper name or a tiny test name; KeyError listing the known names otherwise."""
    return resolve(name, "gMLP", [MODEL_TABLE, TINY_TABLE], ALIASES)


def from_name(name: str, **overrides) -> GMLPConfig:
    """Config for `name` with field overrides (depth, img_size, stem, ...)."""
    return with_overrides(resolve_name(name), overrides)


def list_models(include_tiny: bool = False) -> list[str]:
    """The family's model names (timm's spelling); the tiny test models too when asked."""
    return list_names([MODEL_TABLE], TINY_TABLE, include_tiny)
