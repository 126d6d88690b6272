"""What the two stem kernels (hmlp_stem, patch_embed) share: the row bookkeeping of masked inputs inside the
kernels, and on the host the masking arguments, the input checks and the reference's token selection.

Masking modes (one output row per patch, or per visible patch):
    none  every patch, in grid order
    MAE   visible_idx (B, N_vis): the visible patches only, packed in that order
    BEiT  mask (B, N) + mask_token (E,): every patch at its own position, the masked ones replaced by the token
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..masking import mask_to_indices
from ._common import check_same_device, check_tensor, gdc_wait


# ---------------------------------------------------------------------------------------------------------------
# In-kernel row bookkeeping
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _patch_rows(pid, R, S, N, idx_ptr, s_xb, s_xs, mask_ptr, s_mb, s_mn,
                HAS_IDX: tl.constexpr, BEIT: tl.constexpr, BLOCK_P: tl.constexpr, USE_PDL: tl.constexpr):
    """Rows of this program -> (sample b int64, row-in-sample v, patch number n, row valid, row visible).

    With USE_PDL and masking, waits for the previous kernel before reading the row indices / mask: BEiT's row order
    is a torch.sort of the mask launched just before, and MAE indices may come from a kernel too. Unmasked rows are
    index math only; their kernels wait later, before the first read of the images."""
    rows = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    row_ok = rows < R
    b = (rows // S).to(tl.int64)
    v = rows % S
    if USE_PDL and (HAS_IDX or BEIT):
        gdc_wait()
    if HAS_IDX:
        n = tl.load(idx_ptr + b * s_xb + v * s_xs, mask=row_ok, other=0).to(tl.int32)
        row_ok = row_ok & (n >= 0) & (n < N)  # out-of-range indices: row skipped, never an illegal address
        n = tl.where(row_ok, n, 0)
    else:
        n = v
    if BEIT:
        hidden = tl.load(mask_ptr + b * s_mb + n * s_mn, mask=row_ok, other=1) != 0
        vis = row_ok & (hidden == 0)
    else:
        vis = row_ok
    return b, v, n, row_ok, vis


@triton.jit
def _token_rows(out_ptr, b, v, n, s_ob, s_on, HAS_CLS: tl.constexpr, BEIT: tl.constexpr):
    """Output row pointers of a block of patches: BEiT keeps every patch at its own number n, MAE packs the visible
    ones at their rank v; a class-token row shifts both by one."""
    if BEIT:
        out_row = n
    else:
        out_row = v
    if HAS_CLS:
        out_row = out_row + 1
    return out_ptr + b * s_ob + out_row.to(tl.int64) * s_on


@triton.jit
def _write_extra_rows(out_ptr, out_rows, b, v, n, row_ok, vis, cls_ptr, mtok_ptr, pos_ptr, s_ob, s_pn, s_pe, e0,
                      E: tl.constexpr, HAS_CLS: tl.constexpr, BEIT: tl.constexpr, HAS_POS: tl.constexpr,
                      BLOCK_E: tl.constexpr):
    """Rows the GEMMs do not produce: the class token (written by each sample's row v == 0) and mask tokens."""
    offs_e = e0 + tl.arange(0, BLOCK_E)
    e_ok = offs_e < E
    if HAS_CLS:
        first = row_ok & (v == 0)
        c = tl.load(cls_ptr + offs_e, mask=e_ok, other=0.0).to(tl.float32)
        cv = tl.where(first[:, None], c[None, :], 0.0)
        tl.store(out_ptr + b[:, None] * s_ob + offs_e[None, :], cv.to(out_ptr.dtype.element_ty),
                 mask=first[:, None] & e_ok[None, :])
    if BEIT:
        hid = row_ok & (vis == 0)
        m = hid[:, None] & e_ok[None, :]
        t = tl.load(mtok_ptr + offs_e, mask=e_ok, other=0.0).to(tl.float32)
        y = tl.where(hid[:, None], t[None, :], 0.0)
        if HAS_POS:
            y += tl.load(pos_ptr + n[:, None] * s_pn + offs_e[None, :] * s_pe, mask=m, other=0.0).to(tl.float32)
        tl.store(out_rows[:, None] + offs_e[None, :], y.to(out_ptr.dtype.element_ty), mask=m)


# ---------------------------------------------------------------------------------------------------------------
# Masking arguments and input checks
# ---------------------------------------------------------------------------------------------------------------
def resolve_masking(B: int, N: int, visible_idx: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                    mask_token: Optional[torch.Tensor], device: torch.device):
    """Normalise the user's masking arguments to what the registered ops take: (visible_idx, mask, mask_token).

    - nothing: all patches.
    - visible_idx (B, N_vis) int32/int64: MAE, those patches in that order.
    - mask (B, N) bool, True = masked, no mask_token: MAE with ascending visible indices. Every sample must keep
      the same number of patches (ValueError otherwise). This path reads the counts: a host sync. Pass
      visible_idx to stay sync-free.
    - mask_token (E,) with mask or visible_idx: BEiT, returned as (None, mask, mask_token); a mask may hide a
      different number of patches per sample. visible_idx is turned into a mask without a sync.
    """
    if mask is not None and visible_idx is not None:
        raise ValueError("pass either mask or visible_idx, not both")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (B, N) with True = masked, got "
                            f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}")
        if tuple(mask.shape) != (B, N):
            raise ValueError(f"mask must have shape (B, N) = ({B}, {N}), got {tuple(mask.shape)}")
        if mask.device != device:
            raise RuntimeError(f"mask must be on {device}, got {mask.device}")
    if visible_idx is not None:
        if not isinstance(visible_idx, torch.Tensor) or visible_idx.dtype not in (torch.int32, torch.int64):
            raise TypeError("visible_idx must be an int32/int64 tensor (B, N_vis)")
        if visible_idx.dim() != 2 or visible_idx.shape[0] != B or visible_idx.shape[1] > N:
            raise ValueError(f"visible_idx must have shape (B, N_vis) = ({B}, <= {N}), got "
                             f"{tuple(visible_idx.shape)}")
        if visible_idx.device != device:
            raise RuntimeError(f"visible_idx must be on {device}, got {visible_idx.device}")
    if mask_token is not None:
        if mask is None and visible_idx is None:
            raise ValueError("mask_token (BEiT mode) needs mask or visible_idx")
        if visible_idx is not None:
            mask = torch.ones(B, N, dtype=torch.bool, device=device).scatter(1, visible_idx.long(), False)
        return None, mask, mask_token
    if mask is not None:
        return mask_to_indices(mask), None, None    # the documented host-sync path
    return visible_idx, None, None


def flat_vector(t: Optional[torch.Tensor], name: str, E: int) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if not isinstance(t, torch.Tensor) or t.numel() != E:
        raise ValueError(f"{name} must hold E = {E} values ((E,) or (1, 1, E)), got "
                         f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    return t.reshape(E)


def flat_pos(pos: Optional[torch.Tensor], N: int, E: int) -> Optional[torch.Tensor]:
    if pos is None:
        return None
    if not isinstance(pos, torch.Tensor) or pos.shape[-2:] != (N, E) or pos.numel() != N * E:
        raise ValueError(f"pos must have shape (N, E) or (1, N, E) = ({N}, {E}), got "
                         f"{tuple(pos.shape) if isinstance(pos, torch.Tensor) else type(pos).__name__}")
    return pos.reshape(N, E)


def check_stem_inputs(images, in_chans: int, E: int, patch: int, pos, cls, visible_idx, mask, mask_token):
    """Validate the arguments of a stem op (metadata only); return (B, N, Hp, Wp, S, out_shape)."""
    check_tensor(images, "images", ndim=4, contiguous=False)
    B, C, H, W = images.shape
    if C != in_chans:
        raise ValueError(f"images must have {in_chans} channels (the stem's in_chans), got shape {tuple(images.shape)}")
    if H <= 0 or W <= 0 or H % patch or W % patch:
        raise ValueError(f"image height and width must be positive multiples of {patch}, got {H}×{W}")
    Hp, Wp = H // patch, W // patch
    N = Hp * Wp
    if pos is not None:
        check_tensor(pos, "pos", ndim=2, shape=(N, E), contiguous=False)
    for t, name in ((cls, "cls"), (mask_token, "mask_token")):
        if t is not None:
            check_tensor(t, name, ndim=1, shape=(E,), contiguous=False)
    if visible_idx is not None:
        check_tensor(visible_idx, "visible_idx", ndim=2, dtypes=(torch.int32, torch.int64), contiguous=False)
        if visible_idx.shape[0] != B or visible_idx.shape[1] > N:
            raise ValueError(f"visible_idx must have shape (B, N_vis) = ({B}, <= {N}), got "
                             f"{tuple(visible_idx.shape)}")
    if mask is not None:
        check_tensor(mask, "mask", ndim=2, shape=(B, N), dtypes=(torch.bool,), contiguous=False)
    beit = mask_token is not None
    if beit and mask is None:
        raise ValueError("mask_token (BEiT mode) needs mask (B, N)")
    if mask is not None and not beit:
        raise ValueError("a mask without mask_token: pass visible_idx for MAE mode (see resolve_masking)")
    if beit and visible_idx is not None:
        raise ValueError("BEiT mode takes mask, not visible_idx")
    check_same_device(images=images, pos=pos, cls=cls, visible_idx=visible_idx, mask=mask, mask_token=mask_token)
    S = visible_idx.shape[1] if visible_idx is not None else N
    out_shape = (B, int(cls is not None) + S, E)
    return B, N, Hp, Wp, S, out_shape


def row_order(mask: Optional[torch.Tensor], visible_idx: Optional[torch.Tensor]):
    """(idx (B, S) or None, mask as uint8 or None): BEiT rows are every patch, visible first (stable sort)."""
    if mask is not None:
        order = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices
        return order, mask.view(torch.uint8)
    return visible_idx, None


# ---------------------------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------------------------
def select_tokens(tokens, pos, cls, visible_idx, mask, mask_token):
    """Apply pos / masking / class token to full-grid tokens (B, N, E) in their dtype."""
    B, N, E = tokens.shape
    dt = tokens.dtype
    if pos is not None:
        tokens = tokens + pos.reshape(N, E).to(dt)
    if mask_token is not None:
        m = mask if mask is not None else torch.ones(B, N, dtype=torch.bool, device=tokens.device).scatter(
            1, visible_idx.long(), False)
        t = mask_token.reshape(1, 1, E).to(dt)
        if pos is not None:
            t = t + pos.reshape(1, N, E).to(dt)
        tokens = torch.where(m[:, :, None], t, tokens)
    elif visible_idx is not None or mask is not None:
        if visible_idx is None:
            visible_idx = mask_to_indices(mask)
        tokens = torch.gather(tokens, 1, visible_idx.long()[:, :, None].expand(-1, -1, E))
    if cls is not None:
        tokens = torch.cat([cls.reshape(1, 1, E).to(dt).expand(B, 1, E), tokens], 1)
    return tokens
