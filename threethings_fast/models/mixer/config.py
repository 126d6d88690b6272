"""MLP-Mixer configurations (Tolstikhin et al. 2021, Table 1) and a name table.

Names accepted by `resolve_name` / `from_name`:
- timm's:            mixer_s16_224, mixer_b16_224, mixer_l16_224
- the paper's:       Mixer-S/16, Mixer-B/16, Mixer-L/16
- tiny test models:  mixer_tiny_2x1, mixer_tiny_2x2, mixer_tiny_1x3, ... (odd sizes on purpose)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .._layers import check_common, check_eps, check_positive_ints, list_names, resolve, with_overrides

STEMS = ("linear", "hmlp_bn", "hmlp_ln")


@dataclass(frozen=True)
class MixerConfig:
    """Hyper-parameters of one (parallel) MLP-Mixer.

    tokens_dim is the token-mixing MLP's hidden size (the paper's D_S; timm's int(0.5 * embed_dim)), channels_dim the
    channel MLP's (D_C; timm's int(4 * embed_dim)). `depth` counts blocks; each holds `num_parallel` (K)
    token-mixing branches then K channel-MLP branches. K = 1 is the paper's (and timm's) Mixer.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 512
    depth: int = 8
    tokens_dim: int = 256
    channels_dim: int = 2048
    norm_eps: float = 1e-6
    stem: str = "linear"
    num_parallel: int = 1

    def __post_init__(self):
        check_common(self, STEMS)
        check_positive_ints(self, ("tokens_dim", "channels_dim", "num_parallel"))
        check_eps("norm_eps", self.norm_eps)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Tokens N seen by the blocks (no class token): 196 at 224 / 16."""
        return self.grid_size ** 2

    def replace(self, **overrides) -> "MixerConfig":
        return dataclasses.replace(self, **overrides)


def _paper(width: int, depth: int, patch: int = 16) -> MixerConfig:
    # Table 1 of the paper: D_S = width / 2, D_C = 4 * width (timm's mlp_ratio=(0.5, 4.0))
    return MixerConfig(patch_size=patch, embed_dim=width, depth=depth, tokens_dim=width // 2, channels_dim=4 * width)


MODEL_TABLE: dict[str, MixerConfig] = {
    "mixer_s16_224": _paper(512, 8),
    "mixer_b16_224": _paper(768, 12),
    "mixer_l16_224": _paper(1024, 24),
}

# 32x32 images in 8x8 patches: 16 tokens; widths and hidden sizes that are not powers of two.
TINY_TABLE: dict[str, MixerConfig] = {
    f"mixer_tiny_{d}x{k}": MixerConfig(img_size=32, patch_size=8, num_classes=10, embed_dim=40, depth=d,
                                       tokens_dim=24, channels_dim=72, num_parallel=k)
    for d, k in [(2, 1), (2, 2), (1, 3), (2, 3)]
}

ALIASES = {"Mixer-S/16": "mixer_s16_224", "Mixer-B/16": "mixer_b16_224", "Mixer-L/16": "mixer_l16_224"}


def resolve_name(name: str) -> MixerConfig:
    """Config of a timm name, a paper name or a tiny test name; KeyError listing the known names otherwise."""
    return resolve(name, "MLP-Mixer", [MODEL_TABLE, TINY_TABLE], ALIASES)


def from_name(name: str, **overrides) -> MixerConfig:
    """Config for `name` with field overrides (depth, img_size, num_parallel, stem, ...)."""
    return with_overrides(resolve_name(name), overrides)


def list_models(include_tiny: bool = False) -> list[str]:
    """The family's model names (timm's spelling); the tiny test models too when asked."""
    return list_names([MODEL_TABLE], TINY_TABLE, include_tiny)
