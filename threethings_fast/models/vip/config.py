"""Vision Permutator configurations (Hou et al., "Vision Permutator", TPAMI 2022) and a name table.

A `ViPConfig` describes one model: a linear patch embedding (kernel = stride = patch_size) to embed_dims[0], then
stages of Permutator blocks; between stage i and i+1 a `Downsample` conv (kernel = stride = 2 when transitions[i],
kernel 1 when only the width changes). Field names follow the official `VisionPermutator(...)` arguments
(github.com/Andrew-Qibin/VisionPermutator, models/vip.py): layers, embed_dims, transitions, segment_dim, mlp_ratios,
skip_lam, qkv_bias.

`segment_dim[i]` is the *number* of channel segments g of stage i; each segment holds S = C / g channels. The
official code sizes the height / width projections Linear(C, C), which is H*S = C only when the stage grid H equals
g (true for every paper model at 224). Here they are Linear(H*S, H*S) and Linear(W*S, W*S), so any img_size whose
grid survives the downsamplings works; at 224 the sizes, parameter names and math are the official ones.

Names accepted by `resolve_name` / `from_name`:
- the official factory names:   vip_s14, vip_s7, vip_m7, vip_l7
- the paper's names:            ViP-S/7, ViP-Small/7, ViP-M/7, ViP-Medium/7, ViP-L/7, ViP-Large/7, ViP-S/14
- tiny test models:             vip_test_a, vip_test_b, vip_test_c (see TINY_TABLE)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .._layers import list_names, resolve, with_overrides


@dataclass(frozen=True)
class ViPConfig:
    """Hyper-parameters of one Vision Permutator. The per-stage fields are tuples of equal length (lists are
    accepted and stored as tuples). `transitions[-1]` must be False: the official code never reads it."""

    img_size: int = 224
    patch_size: int = 7
    in_chans: int = 3
    num_classes: int = 1000
    layers: tuple = (4, 3, 8, 3)
    embed_dims: tuple = (192, 384, 384, 384)
    transitions: tuple = (True, False, False, False)
    segment_dim: tuple = (32, 16, 16, 16)
    mlp_ratios: tuple = (3.0, 3.0, 3.0, 3.0)
    skip_lam: float = 1.0
    qkv_bias: bool = False
    # The official blocks and final norm are plain nn.LayerNorm (eps 1e-5): `basic_blocks` swallows norm_layer.
    norm_eps: float = 1e-5

    def __post_init__(self):
        for field in ("layers", "embed_dims", "transitions", "segment_dim", "mlp_ratios"):
            value = getattr(self, field)
            if not isinstance(value, (tuple, list)) or not value:
                raise ValueError(f"{field} must be a non-empty tuple (one entry per stage), got {value!r}")
            object.__setattr__(self, field, tuple(value))
        n = len(self.layers)
        for field in ("embed_dims", "transitions", "segment_dim", "mlp_ratios"):
            if len(getattr(self, field)) != n:
                raise ValueError(f"{field} has {len(getattr(self, field))} entries but layers has {n} stages")
        for field in ("img_size", "patch_size", "in_chans"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive int, got {value!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {self.num_classes!r}")
        for field in ("layers", "embed_dims", "segment_dim"):
            for i, value in enumerate(getattr(self, field)):
                if not isinstance(value, int) or value < 1:
                    raise ValueError(f"{field}[{i}] must be a positive int, got {value!r}")
        for i, (dim, g) in enumerate(zip(self.embed_dims, self.segment_dim)):
            if dim % g:
                raise ValueError(f"segment_dim[{i}] = {g} does not divide embed_dims[{i}] = {dim} (each of the g "
                                 "segments must hold C / g channels)")
            if dim < 4:
                raise ValueError(f"embed_dims[{i}] must be >= 4 (the reweight MLP's hidden width is C // 4), "
                                 f"got {dim}")
        for i, r in enumerate(self.mlp_ratios):
            if not r > 0 or int(self.embed_dims[i] * r) < 1:
                raise ValueError(f"mlp_ratios[{i}] must give a hidden width >= 1, got {r!r}")
        if self.transitions[-1]:
            raise ValueError("transitions[-1] must be False: there is no stage after the last one to downsample to")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")
        if not self.skip_lam or self.skip_lam != self.skip_lam:
            raise ValueError(f"skip_lam divides the residual branches: it must be non-zero, got {self.skip_lam!r}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        grid = self.img_size // self.patch_size
        for i in range(n - 1):
            if self.transitions[i]:
                if grid % 2:
                    raise ValueError(f"img_size {self.img_size}: the stage-{i} grid {grid}x{grid} is odd, so the "
                                     f"stride-2 Downsample after stage {i} (transitions[{i}]) would drop a row")
                grid //= 2

    # ---------------------------------------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.layers)

    @property
    def depth(self) -> int:
        return sum(self.layers)

    @property
    def grid_sizes(self) -> tuple:
        """Token grid side of every stage: img_size / patch_size, halved after each transition."""
        sizes, grid = [], self.img_size // self.patch_size
        for i in range(self.num_stages):
            sizes.append(grid)
            if i < self.num_stages - 1 and self.transitions[i]:
                grid //= 2
        return tuple(sizes)

    def segment_width(self, stage: int) -> int:
        """S: channels per segment in `stage`."""
        return self.embed_dims[stage] // self.segment_dim[stage]

    def mlp_hidden(self, stage: int) -> int:
        return int(self.embed_dims[stage] * self.mlp_ratios[stage])

    def downsample_kernel(self, stage: int) -> Optional[int]:
        """Kernel (= stride) of the Downsample after `stage`: 2 at a transition, 1 when only the width changes,
        None when there is none (the official rule)."""
        if stage >= self.num_stages - 1:
            return None
        if self.transitions[stage]:
            return 2
        return 1 if self.embed_dims[stage] != self.embed_dims[stage + 1] else None

    @property
    def num_features(self) -> int:
        return self.embed_dims[-1]

    def replace(self, **overrides) -> "ViPConfig":
        return dataclasses.replace(self, **overrides)


# The official factories (models/vip.py) at 224: ViP-S/14, ViP-S/7, ViP-M/7, ViP-L/7.
MODEL_TABLE: dict[str, ViPConfig] = {
    "vip_s14": ViPConfig(patch_size=14, layers=(4, 3, 8, 3), embed_dims=(384, 384, 384, 384),
                         transitions=(False, False, False, False), segment_dim=(16, 16, 16, 16)),
    "vip_s7": ViPConfig(patch_size=7, layers=(4, 3, 8, 3), embed_dims=(192, 384, 384, 384),
                        transitions=(True, False, False, False), segment_dim=(32, 16, 16, 16)),
    "vip_m7": ViPConfig(patch_size=7, layers=(4, 3, 14, 3), embed_dims=(256, 256, 512, 512),
                        transitions=(False, True, False, False), segment_dim=(32, 32, 16, 16)),
    "vip_l7": ViPConfig(patch_size=7, layers=(8, 8, 16, 4), embed_dims=(256, 512, 512, 512),
                        transitions=(True, False, False, False), segment_dim=(32, 16, 16, 16)),
}

# Small models for tests, odd sizes on purpose:
#   vip_test_a  28 px / patch 7: grids 4 -> 2, widths 24 -> 40, and grid == segment count in every stage, so the
#               official layout (Linear(C, C) height/width projections) holds and the official rebuild can run it
#   vip_test_b  35 px / patch 7: a 5x5 grid (odd), no transition, a width-only 1x1 Downsample 24 -> 40,
#               H*S = 5*3 = 15 != C (the generalised projection sizes)
#   vip_test_c  56 px / patch 7: grids 8 -> 4, 3 stages, segments 6 and 5 (H*S = 32 != 24; 4*8 = 32 != 40)
TINY_TABLE: dict[str, ViPConfig] = {
    "vip_test_a": ViPConfig(img_size=28, patch_size=7, num_classes=10, layers=(1, 2), embed_dims=(24, 40),
                            transitions=(True, False), segment_dim=(4, 2), mlp_ratios=(3.0, 2.5)),
    "vip_test_b": ViPConfig(img_size=35, patch_size=7, num_classes=7, layers=(2, 1), embed_dims=(24, 40),
                            transitions=(False, False), segment_dim=(8, 5), mlp_ratios=(3.0, 3.0)),
    "vip_test_c": ViPConfig(img_size=56, patch_size=7, num_classes=10, layers=(1, 1, 1), embed_dims=(24, 40, 40),
                            transitions=(True, False, False), segment_dim=(6, 5, 5), mlp_ratios=(3.0, 3.0, 3.0),
                            skip_lam=2.0, qkv_bias=True),
}

_ALIASES = {
    "ViP-S/14": "vip_s14", "ViP-Small/14": "vip_s14",
    "ViP-S/7": "vip_s7", "ViP-Small/7": "vip_s7",
    "ViP-M/7": "vip_m7", "ViP-Medium/7": "vip_m7",
    "ViP-L/7": "vip_l7", "ViP-Large/7": "vip_l7",
}


def list_models(include_tiny: bool = False) -> list[str]:
    return list_names([MODEL_TABLE], TINY_TABLE, include_tiny)


def resolve_name(name: str) -> ViPConfig:
    """Config of a ViP model name (official, paper or tiny test name); KeyError listing the known names."""
    return resolve(name, "ViP", [MODEL_TABLE, TINY_TABLE], _ALIASES)


def from_name(name: str, **overrides) -> ViPConfig:
    """Config for `name` with field overrides (img_size, num_classes, ...); TypeError for an unknown field."""
    return with_overrides(resolve_name(name), overrides)
