"""Analytic MAC count of a feed-forward-only ViT, per image, in the convention of threethings_fast.macs (fvcore's):
Linear / Conv count in*out per output position, LayerNorm with affine 5 per element, eval BatchNorm 2; GELU, the
position resize, residual adds and the head's bias are not counted; the head runs on the class token.

Per block (N = 1 + grid^2 tokens, D features, F = r*D, T = t*N):
    channel MLP   2 * N * D * F
    token MLP     2 * D * N * T          (D rows of N inputs each)
    norms         2 * 5 * N * D

    FF-tiny at 224: 1.45 GMACs;   FF-base: 14.15 GMACs;   FF-large: 10.73 GMACs   (the paper prints no FLOPs).
"""
from __future__ import annotations

from ...macs import MacCount, stem_macs
from .config import FFOnlyConfig

_LN_PER_ELEMENT = 5


def block_macs(cfg: FFOnlyConfig, count_norms: bool = True) -> int:
    n, d = cfg.num_tokens, cfg.embed_dim
    macs = 2 * n * d * cfg.mlp_hidden + 2 * d * n * cfg.token_mlp_hidden
    if count_norms:
        macs += 2 * _LN_PER_ELEMENT * n * d
    return macs


def count_macs(config: FFOnlyConfig, img_size: int | None = None, count_norms: bool = True) -> MacCount:
    """MACs per image of `config` at `img_size` (default config.img_size; another size re-sizes the token MLP as
    the reference model built at that size would)."""
    cfg = config if img_size is None else config.replace(img_size=img_size)
    head = cfg.embed_dim * cfg.num_classes
    if count_norms:
        head += _LN_PER_ELEMENT * cfg.num_tokens * cfg.embed_dim  # the final norm runs on every token
    # stem_macs reads only stem, patch_size, in_chans and embed_dim, which FFOnlyConfig shares with ViTConfig
    return MacCount(stem=stem_macs(cfg, cfg.img_size, count_norms), blocks=cfg.depth * block_macs(cfg, count_norms),
                    head=head)


def forward_flops(config: FFOnlyConfig, img_size: int | None = None) -> int:
    """FLOPs (2 per MAC) of the matmul work alone, per image."""
    return 2 * count_macs(config, img_size, count_norms=False).total
