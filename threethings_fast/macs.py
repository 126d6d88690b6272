"""Analytic multiply-accumulate (MAC) count of a model config, per image.

Convention (the one fvcore uses, which the paper's GMAC numbers follow): every Linear/Conv counts in*out MACs per
output position; attention counts its two matmuls (q k^T and attn v); a LayerNorm with affine counts 5 per element,
an eval-mode BatchNorm with affine 2 per element; GELU, softmax, additions and the head's bias are not counted; the
head runs on the class token only.

    ViT-B/16 at 224, linear stem: 17.58 GMACs;   with the hMLP stem: 17.73 GMACs (+0.8%).

`count_macs` and `forward_flops` take a config of any family (threethings_fast.models): a ViTConfig is counted here,
any other config by its family's `models/<family>/macs.py`, in the same convention.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from .configs import ViTConfig

_LN_PER_ELEMENT = 5
_BN_PER_ELEMENT = 2


@dataclass(frozen=True)
class MacCount:
    stem: int
    blocks: int
    head: int

    @property
    def total(self) -> int:
        return self.stem + self.blocks + self.head

    @property
    def gmacs(self) -> float:
        return self.total / 1e9


def stem_macs(cfg: ViTConfig, img_size: int | None = None, count_norms: bool = True) -> int:
    img = img_size or cfg.img_size
    e, c = cfg.embed_dim, cfg.in_chans
    if cfg.stem == "linear":
        n = (img // cfg.patch_size) ** 2
        return n * c * cfg.patch_size ** 2 * e
    hidden = e // 4
    n1, n2, n3 = (img // 4) ** 2, (img // 8) ** 2, (img // 16) ** 2
    macs = n1 * (c * 16) * hidden + n2 * (hidden * 4) * hidden + n3 * (hidden * 4) * e
    if count_norms:
        per = _BN_PER_ELEMENT if cfg.stem == "hmlp_bn" else _LN_PER_ELEMENT
        macs += per * (n1 * hidden + n2 * hidden + n3 * e)
    return macs


def block_macs(cfg: ViTConfig, num_tokens: int, count_norms: bool = True) -> int:
    """One parallel block (all K branches)."""
    n, d, f, k = num_tokens, cfg.embed_dim, cfg.mlp_hidden, cfg.num_parallel
    per_branch = (n * d * 3 * d          # qkv
                  + 2 * n * n * d         # q k^T and attn v, summed over heads
                  + n * d * d             # proj
                  + 2 * n * d * f)        # fc1, fc2
    if count_norms:
        per_branch += 2 * _LN_PER_ELEMENT * n * d
    return k * per_branch


def count_macs(cfg: ViTConfig, img_size: int | None = None, count_norms: bool = True) -> MacCount:
    """MACs per image of the reference model `cfg` at `img_size` (default cfg.img_size). Another family's config is
    counted by that family's `count_macs`."""
    if not isinstance(cfg, ViTConfig):
        return family_count_macs(cfg)(cfg, img_size=img_size, count_norms=count_norms)
    img = img_size or cfg.img_size
    n = (img // cfg.patch_size) ** 2 + 1
    head = cfg.embed_dim * cfg.num_classes
    if count_norms:
        head += _LN_PER_ELEMENT * n * cfg.embed_dim  # the final norm runs on every token in the reference
    return MacCount(stem=stem_macs(cfg, img, count_norms), blocks=cfg.depth * block_macs(cfg, n, count_norms),
                    head=head)


def family_count_macs(cfg):
    """The `count_macs(config, img_size=None, count_norms=True)` of the family of a non-ViT config (TypeError for
    an object no family knows). Imported on use: the family modules import this one."""
    from .models import family_of
    return importlib.import_module(f"threethings_fast.models.{family_of(cfg).name}").count_macs


def forward_flops(cfg: ViTConfig, img_size: int | None = None) -> int:
    """FLOPs (2 per MAC) of the matmul work alone, per image: what TFLOP/s figures are computed from. Any family's
    config (norms not counted)."""
    return 2 * count_macs(cfg, img_size, count_norms=False).total
