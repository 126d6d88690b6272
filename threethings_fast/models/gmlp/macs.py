"""Analytic MACs per image of a gMLP config, in threethings_fast.macs's (fvcore's) convention.

Per block, N tokens, width D, fc1 width F:
    fc1                N * D * F
    spatial proj       N * N * F/2         (Linear N -> N at each of the F/2 gate channels)
    fc2                N * F/2 * D
    LayerNorms         5 * N * D + 5 * N * F/2          (count_norms: the block's and the gate's)
Stem: N * C * p^2 * D (linear) or the hMLP's convs; head: the final LayerNorm on N tokens (count_norms) and D *
num_classes on the pooled vector. GELU, the gating product, additions, the mean and the head bias are not counted.

    gMLP-Ti: 1.34 GMACs, S: 4.42, B: 15.78. The paper prints 1.4 / 4.5 / 15.8 "FLOPs" (multiply-adds): B matches,
    Ti and S are 4 % and 2 % above this count (the paper does not say what else it counted; timm's layout, whose
    parameter count this reproduces exactly, has nothing more).
"""
from __future__ import annotations

from ...macs import MacCount, stem_macs
from .config import GMLPConfig

_LN_PER_ELEMENT = 5


def block_macs(config: GMLPConfig, count_norms: bool = True) -> int:
    n, d, f, g = config.num_patches, config.embed_dim, config.ffn_dim, config.gate_dim
    macs = n * d * f + n * n * g + n * g * d
    if count_norms:
        macs += _LN_PER_ELEMENT * n * (d + g)
    return macs


def count_macs(config: GMLPConfig, img_size: int | None = None, count_norms: bool = True) -> MacCount:
    """MACs per image of the reference model `config` built at `img_size` (default config.img_size; the spatial
    projections are (N, N), so another size means another model)."""
    if img_size is not None:
        config = config.replace(img_size=img_size)
    n, d = config.num_patches, config.embed_dim
    head = d * config.num_classes + (_LN_PER_ELEMENT * n * d if count_norms else 0)
    # stem_macs reads only stem / patch_size / in_chans / embed_dim, which every MLP config shares with ViTConfig
    return MacCount(stem=stem_macs(config, config.img_size, count_norms),
                    blocks=config.depth * block_macs(config, count_norms), head=head)
