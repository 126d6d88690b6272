r"""Merging a row's partial LayerNorm statistics inside a kernel, shared by the GEMMs that normalise their
input rows without reading a normalised copy (`linear` in its epilogue, `token_linear` in its main loop).

A row x (D,) arrives as T = ⌈D / W⌉ slots (`RowStats`): slot t covers n_t = min(W, D − t·W) columns and holds
their mean μ_t and M2_t = Σ(x − μ_t)². The merge is exact (Chan, Golub & LeVeque's parallel formula, no
E[x²] − E[x]² cancellation):
    μ = Σ_t n_t μ_t / D,   M2 = Σ_t M2_t + n_t (μ_t − μ)²,   rstd = 1 / √(M2 / D + ε)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_same_device, check_tensor


@triton.jit
def merge_row_stats(s_ptr, rows, row_ok, D, eps, W_IN: tl.constexpr, T_IN: tl.constexpr, T_IN_PAD: tl.constexpr):
    """(mean, rstd) fp32 of the rows `rows` (int64 row indices into the (rows, T_IN, 2) fp32 partials at s_ptr);
    rows with row_ok False read nothing and get mean 0, rstd 0, so that a padded row normalises to exact zeros
    (with ε = 0 its 1/√ε would be inf, and 0·inf a NaN that a masked-out dot operand still spreads)."""
    t = tl.arange(0, T_IN_PAD)
    t_ok = t < T_IN
    n_t = tl.where(t_ok, tl.minimum(D - t * W_IN, W_IN), 0).to(tl.float32)
    sp = s_ptr + rows[:, None] * (T_IN * 2) + t[None, :] * 2
    s_mask = row_ok[:, None] & t_ok[None, :]
    mu_t = tl.load(sp, mask=s_mask, other=0.0)
    m2_t = tl.load(sp + 1, mask=s_mask, other=0.0)
    mean = tl.sum(mu_t * n_t[None, :], axis=1) / D
    dev = tl.where(s_mask, mu_t - mean[:, None], 0.0)
    m2 = tl.sum(m2_t + n_t[None, :] * dev * dev, axis=1)
    var = tl.where(row_ok, m2 / D + eps, 1.0)        # padded rows: no 1/0 evaluated, then zeroed
    rstd = tl.where(row_ok, 1.0 / tl.sqrt(var), 0.0)
    return mean, rstd


def stats_meta(width: int, D: int) -> dict:
    """The constexprs of `merge_row_stats` for rows of D columns in slots of `width` (0: no statistics)."""
    t = -(-D // width) if width > 0 else 1
    return dict(W_IN=max(width, 1), T_IN=t, T_IN_PAD=max(2, triton.next_power_of_2(t)))


def check_row_stats(partials: torch.Tensor, width, rows_shape: tuple, D: int, eps, x: torch.Tensor,
                    what: str = "norm") -> int:
    """Validate RowStats (partials, width) of an x whose rows have shape rows_shape + (D,); return width as an int.
    The partials must be contiguous fp32 (*rows_shape, ⌈D / width⌉, 2) on x's device."""
    if not isinstance(width, (int, torch.SymInt)) or isinstance(width, bool) or not width >= 1:
        raise ValueError(f"{what} width must be a positive int (columns per statistics slot), got {width!r}")
    width = int(width)   # a kernel constexpr
    t = -(-D // width)
    check_tensor(partials, f"{what}.partials", ndim=len(rows_shape) + 2, shape=tuple(rows_shape) + (t, 2),
                 dtypes=None, dtype=torch.float32)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    check_same_device(x=x, **{f"{what}.partials": partials})
    return width
