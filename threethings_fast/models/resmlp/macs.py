"""Analytic MACs per image of a ResMLP config, in threethings_fast.macs's (fvcore's) convention.

Per block and branch, N tokens, width D, channel hidden size D_C:
    token Linear  N * N * D              (Linear N -> N at each of the D channel positions)
    channel MLP   2 * N * D * D_C
    2 Affines     2 * 2 * N * D          (count_norms; a scale and a shift per element)
Stem: N * C * p^2 * D (linear) or the hMLP's convs; head: the final Affine on N tokens (count_norms) and D *
num_classes on the pooled vector. LayerScale products, GELU, additions, the mean and the head bias are not counted.

    ResMLP-S12: 3.01 GMACs, S24: 5.97, S36: 8.92, B24/16: 23.04, B24/8: 100.29 (100.23 with count_norms=False:
    fvcore itself has no handler for the Affine's mul / add, and the paper's 100.2 matches that).
"""
from __future__ import annotations

from ...macs import MacCount, stem_macs
from .config import ResMLPConfig

_AFFINE_PER_ELEMENT = 2


def block_macs(config: ResMLPConfig, count_norms: bool = True) -> int:
    """One block, all K branches."""
    n, d = config.num_patches, config.embed_dim
    per_branch = n * n * d + 2 * n * d * config.channels_dim
    if count_norms:
        per_branch += 2 * _AFFINE_PER_ELEMENT * n * d
    return config.num_parallel * per_branch


def count_macs(config: ResMLPConfig, img_size: int | None = None, count_norms: bool = True) -> MacCount:
    """MACs per image of the reference model `config` built at `img_size` (default config.img_size; the token
    Linears are (N, N), so another size means another model)."""
    if img_size is not None:
        config = config.replace(img_size=img_size)
    n, d = config.num_patches, config.embed_dim
    head = d * config.num_classes + (_AFFINE_PER_ELEMENT * n * d if count_norms else 0)
    # stem_macs reads only stem / patch_size / in_chans / embed_dim, which every MLP config shares with ViTConfig
    return MacCount(stem=stem_macs(config, config.img_size, count_norms),
                    blocks=config.depth * block_macs(config, count_norms), head=head)
