"""Analytic MACs per image of an MLP-Mixer config, in threethings_fast.macs's (fvcore's) convention.

Per block and branch, N tokens, width D, hidden sizes D_S (tokens) and D_C (channels):
    token MLP     2 * N * D_S * D        (Linear N -> D_S and D_S -> N, at each of the D channel positions)
    channel MLP   2 * N * D * D_C
    2 LayerNorms  2 * 5 * N * D          (count_norms)
Stem: N * C * p^2 * D (linear) or the hMLP's convs; head: the final LayerNorm on N tokens (count_norms) and D *
num_classes on the pooled vector. GELU, additions, the mean and the head bias are not counted.

    Mixer-S/16: 3.79 GMACs, B/16: 12.62, L/16: 44.60. (mmpretrain lists 12.61 / 44.57 "GFLOPs" for B/16 / L/16:
    the same matmul MACs with LayerNorm counted at 2 per element instead of fvcore's 5.)
"""
from __future__ import annotations

from ...macs import MacCount, stem_macs
from .config import MixerConfig

_LN_PER_ELEMENT = 5


def block_macs(config: MixerConfig, count_norms: bool = True) -> int:
    """One block, all K branches."""
    n, d = config.num_patches, config.embed_dim
    per_branch = 2 * n * config.tokens_dim * d + 2 * n * d * config.channels_dim
    if count_norms:
        per_branch += 2 * _LN_PER_ELEMENT * n * d
    return config.num_parallel * per_branch


def count_macs(config: MixerConfig, img_size: int | None = None, count_norms: bool = True) -> MacCount:
    """MACs per image of the reference model `config` built at `img_size` (default config.img_size; the token MLPs
    are sized to the token count, so another size means another model)."""
    if img_size is not None:
        config = config.replace(img_size=img_size)
    n, d = config.num_patches, config.embed_dim
    head = d * config.num_classes + (_LN_PER_ELEMENT * n * d if count_norms else 0)
    # stem_macs reads only stem / patch_size / in_chans / embed_dim, which every MLP config shares with ViTConfig
    return MacCount(stem=stem_macs(config, config.img_size, count_norms),
                    blocks=config.depth * block_macs(config, count_norms), head=head)
