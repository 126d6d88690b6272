"""ResMLP configurations (Touvron et al. 2021) and a name table.

Names accepted by `resolve_name` / `from_name`:
- timm's:            resmlp_12_224, resmlp_24_224, resmlp_36_224, resmlp_big_24_224
- the paper's:       ResMLP-12 / ResMLP-S12, ResMLP-24 / ResMLP-S24, ResMLP-36 / ResMLP-S36,
                     ResMLP-B24 / ResMLP-B24/8 (both = resmlp_big_24_224: width 768, 8x8 patches, as timm and the
                     official deit repo's `resmlpB_24`); ResMLP-B24/16 is the same model on 16x16 patches (the
                     paper's Table comparing B24 at patch 16 and 8)
- tiny test models:  resmlp_tiny_2x1, resmlp_tiny_2x2, resmlp_tiny_1x3, ...
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .._layers import check_common, check_positive_ints, list_names, resolve, with_overrides

STEMS = ("linear", "hmlp_bn", "hmlp_ln")


def paper_init_values(depth: int, embed_dim: int = 384) -> float:
    """LayerScale init of the paper (and the official deit code): 0.1 up to depth 12, 1e-5 up to 24, 1e-6 deeper;
    1e-6 for the wide B24 (embed_dim 768) as well."""
    if embed_dim > 384:
        return 1e-6
    return 0.1 if depth <= 12 else 1e-5 if depth <= 24 else 1e-6


@dataclass(frozen=True)
class ResMLPConfig:
    """Hyper-parameters of one (parallel) ResMLP.

    channels_dim is the channel MLP's hidden size (4 * embed_dim in every paper model); the token mixer is a single
    Linear N -> N. init_values is the LayerScale init (ls1, ls2); it only matters for a fresh model. `depth` counts
    blocks; each holds `num_parallel` (K) token-mixing branches then K channel-MLP branches.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 384
    depth: int = 12
    channels_dim: int = 1536
    init_values: float = 0.1
    stem: str = "linear"
    num_parallel: int = 1

    def __post_init__(self):
        check_common(self, STEMS)
        check_positive_ints(self, ("channels_dim", "num_parallel"))
        if isinstance(self.init_values, bool) or not isinstance(self.init_values, (int, float)):
            raise ValueError(f"init_values must be a float (the LayerScale init), got {self.init_values!r}")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Tokens N seen by the blocks (no class token): 196 at 224 / 16."""
        return self.grid_size ** 2

    def replace(self, **overrides) -> "ResMLPConfig":
        return dataclasses.replace(self, **overrides)


def _paper(width: int, depth: int, patch: int = 16) -> ResMLPConfig:
    return ResMLPConfig(patch_size=patch, embed_dim=width, depth=depth, channels_dim=4 * width,
                        init_values=paper_init_values(depth, width))


MODEL_TABLE: dict[str, ResMLPConfig] = {
    "resmlp_12_224": _paper(384, 12),
    "resmlp_24_224": _paper(384, 24),
    "resmlp_36_224": _paper(384, 36),
    "resmlp_big_24_224": _paper(768, 24, patch=8),
}

# 40x40 images in 8x8 patches: 25 tokens; widths that are not powers of two. 48x48 / 16 (9 tokens) for the hMLP stem.
TINY_TABLE: dict[str, ResMLPConfig] = {
    f"resmlp_tiny_{d}x{k}": ResMLPConfig(img_size=40, patch_size=8, num_classes=10, embed_dim=24, depth=d,
                                         channels_dim=56, init_values=0.3, num_parallel=k)
    for d, k in [(2, 1), (2, 2), (1, 3), (2, 3)]
}
TINY_TABLE["resmlp_tiny_p16"] = ResMLPConfig(img_size=48, patch_size=16, num_classes=10, embed_dim=24, depth=2,
                                             channels_dim=56, init_values=0.3)

PAPER_TABLE: dict[str, ResMLPConfig] = {"ResMLP-B24/16": _paper(768, 24, patch=16)}

ALIASES = {
    "ResMLP-12": "resmlp_12_224", "ResMLP-S12": "resmlp_12_224",
    "ResMLP-24": "resmlp_24_224", "ResMLP-S24": "resmlp_24_224",
    "ResMLP-36": "resmlp_36_224", "ResMLP-S36": "resmlp_36_224",
    "ResMLP-B24": "resmlp_big_24_224", "ResMLP-B24/8": "resmlp_big_24_224",
}


def resolve_name(name: str) -> ResMLPConfig:
    """Config of a timm name, a paper name or a tiny test name; KeyError listing the known names otherwise."""
    return resolve(name, "ResMLP", [MODEL_TABLE, PAPER_TABLE, TINY_TABLE], ALIASES)


def from_name(name: str, **overrides) -> ResMLPConfig:
    """Config for `name` with field overrides (depth, img_size, num_parallel, stem, init_values, ...)."""
    return with_overrides(resolve_name(name), overrides)


def list_models(include_tiny: bool = False) -> list[str]:
    """The family's model names (timm's spelling, and the paper-only ResMLP-B24/16); the tiny test models too when
    asked."""
    return list_names([MODEL_TABLE, PAPER_TABLE], TINY_TABLE, include_tiny)
