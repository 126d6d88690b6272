"""Model configurations of the paper and a name table.

A `ViTConfig` describes one model: a patch stem, `depth` blocks of `num_parallel` (K) branches each, and a
class-token head. The sequential ViT is K = 1. The paper's names count blocks as `depth x K`: S18x2 has 18 blocks of
two parallel branches, the same parameters and FLOPs as S36x1 (36 sequential blocks).

Names accepted by `resolve_name` / `from_name`:
- canonical (timm's spelling):   vit_small_patch16_18x2_224, vit_base_patch16_36x1_224, ...
- the paper's short names:        S18x2, B12x1, L24x1, ...
- the official deit names:        deit_small_patch16_18x2_LS, deit_small_patch16_36_LS, deit_base_patch16_36x1,
                                  (no `_LS` suffix = no LayerScale)
- tiny test models:               tiny_2x2, tiny_3x1, ...
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Optional

STEMS = ("linear", "hmlp_bn", "hmlp_ln")
GLOBAL_POOLS = ("token", "avg")

# Width, heads per branch for each size letter. Every paper model keeps head_dim = 64.
SIZES = {
    "Ti": ("tiny", 192, 3),
    "S": ("small", 384, 6),
    "M": ("medium", 512, 8),
    "B": ("base", 768, 12),
    "L": ("large", 1024, 16),
    "H": ("huge", 1280, 16),
}
_LETTER_OF = {long: letter for letter, (long, _, _) in SIZES.items()}


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of one (parallel) ViT. Argument names follow timm's `VisionTransformer`.

    depth counts parallel blocks; each holds `num_parallel` attention branches then `num_parallel` MLP branches.
    `num_heads` is per branch. `init_values=None` disables LayerScale.

    Token and head variants of the ViTs people deploy (timm's meaning throughout; the defaults are the paper's):
      class_token     a learned class token first in the sequence
      distilled       DeiT's distillation token after the class token, with its own head `head_dist`; in eval the
                      logits are the mean of the two heads
      reg_tokens      register tokens after the class token (timm's `reg_token`, "ViTs need registers")
      no_embed_class  positions only for the patches (DeiT III); else pos_embed also covers the prefix tokens
      pre_norm        a LayerNorm `norm_pre` on the embeddings before the blocks (CLIP)
      global_pool     "token" (the class token reaches the head) or "avg" (mean of the patch tokens)
      fc_norm         LayerNorm after pooling instead of before (None: timm's rule, True exactly for "avg")
      final_norm      False drops the final LayerNorm altogether
      patch_bias      whether the linear stem's convolution has a bias (CLIP's has none)
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_parallel: int = 1
    init_values: Optional[float] = 1e-5
    qkv_bias: bool = True
    stem: str = "linear"
    norm_eps: float = 1e-6
    class_token: bool = True
    distilled: bool = False
    reg_tokens: int = 0
    no_embed_class: bool = False
    pre_norm: bool = False
    global_pool: str = "token"
    fc_norm: Optional[bool] = None
    final_norm: bool = True
    patch_bias: bool = True

    def __post_init__(self):
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        for field in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "num_parallel"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive int, got {value!r}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if not isinstance(self.reg_tokens, int) or self.reg_tokens < 0:
            raise ValueError(f"reg_tokens must be an int >= 0, got {self.reg_tokens!r}")
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {self.global_pool!r} (timm's 'map', "
                             "'max', 'avgmax' and '' pooling are not supported)")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool='token' needs the class token (class_token=True), or use "
                             "global_pool='avg'")
        if self.distilled and (not self.class_token or self.global_pool != "token" or self.reg_tokens
                               or self.use_fc_norm):
            raise ValueError("distilled models read the class and distillation tokens: they need class_token=True, "
                             "global_pool='token', no register tokens and no fc_norm (as timm's DeiT)")
        if self.stem != "linear" and not self.patch_bias:
            raise ValueError("patch_bias=False applies to the linear stem only")
        if self.stem != "linear":
            if self.patch_size != 16:
                raise ValueError(f"the hMLP stem is defined for 16x16 patches (4x4, 2x2, 2x2), got {self.patch_size}")
            if self.embed_dim % 4:
                raise ValueError(f"the hMLP stem needs embed_dim divisible by 4, got {self.embed_dim}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: class token, distillation token, register tokens (in that order)."""
        return int(self.class_token) + int(self.distilled) + self.reg_tokens

    @property
    def num_tokens(self) -> int:
        """Sequence length N seen by the blocks: prefix tokens + patches (197 for the paper's models at 224)."""
        return self.num_patches + self.num_prefix_tokens

    @property
    def pos_embed_len(self) -> int:
        """Rows of pos_embed: the patches, plus the prefix tokens unless no_embed_class."""
        return self.num_patches if self.no_embed_class else self.num_tokens

    @property
    def use_fc_norm(self) -> bool:
        """Whether the final LayerNorm sits after pooling (timm's fc_norm) rather than before it."""
        return self.global_pool == "avg" if self.fc_norm is None else bool(self.fc_norm)

    def replace(self, **overrides) -> "ViTConfig":
        return dataclasses.replace(self, **overrides)


def _paper(letter: str, depth: int, k: int, **kw) -> ViTConfig:
    _, dim, heads = SIZES[letter]
    return ViTConfig(embed_dim=dim, num_heads=heads, depth=depth, num_parallel=k, **kw)


# The paper's models (Table 1 / 4 / 6 of Touvron et al. 2022), named the way timm names them.
MODEL_TABLE: dict[str, ViTConfig] = {}
for _letter, _depth, _k in [
    ("S", 12, 1), ("S", 24, 1), ("S", 36, 1), ("S", 48, 1), ("S", 60, 1),
    ("S", 6, 2), ("S", 12, 2), ("S", 18, 2), ("S", 24, 2), ("S", 30, 2), ("S", 12, 3), ("S", 12, 4),
    ("B", 12, 1), ("B", 24, 1), ("B", 36, 1), ("B", 6, 2), ("B", 12, 2), ("B", 18, 2), ("B", 12, 3),
    ("L", 24, 1), ("L", 12, 2),
    ("H", 32, 1), ("H", 26, 2),
]:
    MODEL_TABLE[f"vit_{SIZES[_letter][0]}_patch16_{_depth}x{_k}_224"] = _paper(_letter, _depth, _k)

# Small models for tests and CPU demos: 32x32 images, 4 patches + class token, 10 classes.
TINY_TABLE: dict[str, ViTConfig] = {
    f"tiny_{d}x{k}": ViTConfig(img_size=32, patch_size=16, num_classes=10, embed_dim=64, depth=d, num_heads=2,
                               num_parallel=k)
    for d, k in [(2, 1), (4, 1), (2, 2), (1, 3), (2, 3)]
}

# Plain aliases kept for convenience.
_ALIASES = {
    "vit_small_patch16_224": "vit_small_patch16_12x1_224",
    "vit_base_patch16_224": "vit_base_patch16_12x1_224",
    "vit_large_patch16_224": "vit_large_patch16_24x1_224",
}

_SHORT = re.compile(r"^(Ti|S|M|B|L|H)(\d+)x(\d+)$")
_TIMM = re.compile(r"^vit_(tiny|small|medium|base|large|huge)_patch(\d+)_(\d+)x(\d+)_(\d+)$")
_DEIT = re.compile(r"^deit_(tiny|small|medium|base|large|huge)_patch(\d+)_(\d+)(?:x(\d+))?(_LS)?$")


def resolve_name(name: str) -> ViTConfig:
    """Turn any accepted model name into its config (see the module docstring for the spellings)."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    name = _ALIASES.get(name, name)
    if name in MODEL_TABLE:
        return MODEL_TABLE[name]
    if name in TINY_TABLE:
        return TINY_TABLE[name]
    m = _SHORT.match(name)
    if m:
        letter, depth, k = m.group(1), int(m.group(2)), int(m.group(3))
        return _paper(letter, depth, k)
    m = _TIMM.match(name)
    if m:
        size, patch, depth, k, img = m.groups()
        return _paper(_LETTER_OF[size], int(depth), int(k), patch_size=int(patch), img_size=int(img))
    m = _DEIT.match(name)
    if m:
        size, patch, depth, k, ls = m.groups()
        return _paper(_LETTER_OF[size], int(depth), int(k or 1), patch_size=int(patch),
                      init_values=1e-5 if ls else None)
    raise KeyError(f"unknown model name {name!r}. Known: {', '.join(list_models())}; also the paper's short "
                   f"names like 'S18x2', and deit names like 'deit_small_patch16_18x2_LS'")


def from_name(name: str, **overrides) -> ViTConfig:
    """Config for `name`, with timm-style argument overrides (img_size, embed_dim, num_parallel, stem, ...)."""
    config = resolve_name(name)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ViTConfig)}
    if unknown:
        raise TypeError(f"unknown config overrides {sorted(unknown)}; valid: "
                        f"{[f.name for f in dataclasses.fields(ViTConfig)]}")
    return config.replace(**overrides) if overrides else config


def list_models(include_tiny: bool = False) -> list[str]:
    names = list(MODEL_TABLE)
    if include_tiny:
        names += list(TINY_TABLE)
    return names
