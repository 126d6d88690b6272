"""Patch masks and visible-patch indices (MAE / BEiT masking), plain torch: shared by the reference stems and the
stem kernels, which import nothing else from the model code.

    mask         (B, N) bool, True = masked
    visible_idx  (B, N_vis) int, the visible patch numbers of each sample
"""
from __future__ import annotations

import torch


def mask_to_indices(mask: torch.Tensor) -> torch.Tensor:
    """Visible patch indices (B, N_vis) int64, ascending, from a bool mask (B, N) with True = masked.

    Raises ValueError unless every sample has the same number of visible patches (MAE batches are rectangular).
    Reads the per-sample counts on the host: a device sync for CUDA masks.
    """
    _check_mask(mask)
    visible = ~mask
    counts = visible.sum(1)
    if mask.shape[0] > 0 and not bool((counts == counts[0]).all()):
        raise ValueError(
            "MAE-style masking needs the same number of visible patches in every sample; got per-sample visible "
            f"counts {counts.tolist()}. Use mode='beit' (mask token) or pass visible_idx (B, N_vis).")
    n_vis = int(counts[0]) if mask.shape[0] > 0 else 0
    # stable sort of the 0/1 mask puts visible patches first, each group in ascending patch order
    order = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices
    return order[:, :n_vis].contiguous()


def indices_to_mask(visible_idx: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Bool mask (B, num_patches), True = masked, from visible indices (B, N_vis)."""
    mask = torch.ones(visible_idx.shape[0], num_patches, dtype=torch.bool, device=visible_idx.device)
    return mask.scatter(1, visible_idx.long(), False)


def _check_mask(mask: torch.Tensor, shape=None) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor (B, N) with True = masked, got {got}")
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask must have shape (B, N) = {tuple(shape)}, got {tuple(mask.shape)}")
