"""Analytic MAC count of a Vision Permutator, per image, in the convention of threethings_fast.macs (fvcore's):
Linear / Conv count in*out per output position, LayerNorm with affine 5 per element; GELU, softmax, the re-weighting
products, the means, residual adds and the head's bias are not counted.

Per block of stage i (N = H*W tokens, C channels, S = C / segment_dim, F = hidden):
    mlp_c, proj        2 * N * C^2
    mlp_h              (g * W rows) * (H*S)^2 = N * C * H*S        (= N * C^2 when H = g, the official sizing)
    mlp_w              N * C * W*S
    reweight           C * C/4 + C/4 * 3C                           (once per image: it runs on the mean token)
    MLP                2 * N * C * F
    norms              2 * 5 * N * C

    ViP-S/7 at 224: 6.92 GMACs (paper: 6.9G);   ViP-M/7: 16.33 GMACs (paper: 16.3G);   ViP-L/7: 24.40 GMACs.
"""
from __future__ import annotations

from ...macs import MacCount
from .config import ViPConfig

_LN_PER_ELEMENT = 5


def block_macs(cfg: ViPConfig, stage: int, grid: int, count_norms: bool = True) -> int:
    """One Permutator block of `stage` on a grid x grid token map."""
    c, s, f = cfg.embed_dims[stage], cfg.segment_width(stage), cfg.mlp_hidden(stage)
    n = grid * grid
    macs = (2 * n * c * c                      # mlp_c, proj
            + 2 * n * c * grid * s             # mlp_h, mlp_w
            + c * (c // 4) + (c // 4) * 3 * c  # reweight
            + 2 * n * c * f)                   # fc1, fc2
    if count_norms:
        macs += 2 * _LN_PER_ELEMENT * n * c
    return macs


def count_macs(config: ViPConfig, img_size: int | None = None, count_norms: bool = True) -> MacCount:
    """MACs per image of `config` at `img_size` (default config.img_size; another size re-sizes the height / width
    projections as the reference model built at that size would)."""
    cfg = config if img_size is None else config.replace(img_size=img_size)
    grids = cfg.grid_sizes
    stem = grids[0] ** 2 * cfg.in_chans * cfg.patch_size ** 2 * cfg.embed_dims[0]
    blocks = 0
    for i, grid in enumerate(grids):
        blocks += cfg.layers[i] * block_macs(cfg, i, grid, count_norms)
        kernel = cfg.downsample_kernel(i)
        if kernel is not None:  # Downsample: one conv output per position of the next grid
            blocks += grids[i + 1] ** 2 * cfg.embed_dims[i] * kernel * kernel * cfg.embed_dims[i + 1]
    head = cfg.num_features * cfg.num_classes
    if count_norms:
        head += _LN_PER_ELEMENT * grids[-1] ** 2 * cfg.num_features  # the final norm runs on every token
    return MacCount(stem=stem, blocks=blocks, head=head)


def forward_flops(config: ViPConfig, img_size: int | None = None) -> int:
    """FLOPs (2 per MAC) of the matmul work alone, per image."""
    return 2 * count_macs(config, img_size, count_norms=False).total
