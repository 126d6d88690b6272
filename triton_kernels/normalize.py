r"""Row normalisation (LayerNorm without affine): the shared prologue of every folded ViT block.

Math, for each row x of length D (all branches of a parallel block read the same x̂, their LayerNorm affines are
folded into the next GEMM's weights and bias):

    μ    = (1/D) Σ_j x_j
    σ²   = (1/D) Σ_j (x_j − μ)²          # two-pass in fp32: the row is held in registers, so no E[x²]−E[x]²
    x̂_j  = (x_j − μ) / sqrt(σ² + ε)

Shapes: x (..., D) contiguous -> x̂ (..., D), dtype ``out_dtype`` (default x.dtype). Statistics in fp32.

Cost for M = B·N rows: ~5·M·D FLOPs (negligible); bytes M·D·(sizeof(x) + sizeof(x̂)). Memory bound.
S18x2 at 224 px, batch 64: M = 64·197 = 12 608, D = 384, bf16 -> 2 · 12 608 · 384 · 2 B = 19.4 MB, i.e.
~6.5 µs at 3 TB/s on H100 (floor); twice per block, 18 blocks.

Why two-pass instead of E[x²] − E[x]²: ViT residual streams carry a few channels with |x| ~ 10²–10³ (the
"massive activations"), so E[x²] and E[x]² are both large and nearly equal; their difference loses every digit
that σ² needs in fp32. Because one program holds whole rows, the second pass reads registers, not memory: it is
free. Rows longer than :data:`MAX_D` would need a chunked Welford/Chan merge; ViT widths (≤ 1280) never do.

Programmatic dependent launch (TTF_TRITON_PDL=1 on sm_90+, see _common): the row/column index math runs before
gdc_wait(), which precedes the read of x (and every store), and gdc_launch_dependents() follows the reductions.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (FLOAT_DTYPES, RowStats, cached_check, check_out, check_tensor, device_guard,
                      gdc_launch_dependents, gdc_wait, next_power_of_2, pdl_enabled, pdl_launch_kwargs, register_op,
                      skip_launch, wrap_triton)

__all__ = ["normalize", "normalize_ref", "row_stats", "row_stats_ref", "RowStats", "MAX_D", "normalize_tokens",
           "normalize_tokens_ref", "MAX_TOKENS"]

#: Largest token count `normalize_tokens` holds per column in registers (a 64×64 grid plus a class token fits).
MAX_TOKENS = 4096

#: Largest row length one program holds in registers (ViT-H is 1280; 8192 keeps register pressure sane).
MAX_D = 8192


@triton.jit
def _normalize_kernel(
    # pointers
    x_ptr,  # (M, D) input rows, row stride stride_xm, unit inner stride
    y_ptr,  # (M, D) normalised rows, row stride stride_ym
    # sizes
    M, D,
    # strides
    stride_xm, stride_ym,
    # scalars
    eps,
    # meta-parameters
    BLOCK_M: tl.constexpr,  # rows per program: small D packs several rows per program to keep lanes busy
    BLOCK_D: tl.constexpr,  # next power of two >= D; the whole row lives in registers
    USE_PDL: tl.constexpr,  # launched with programmatic dependent launch (see _common.pdl_enabled)
    STATS: tl.constexpr = False,  # write row statistics (μ, Σ(x−μ)²) to y_ptr as (M, 1, 2) fp32 instead of x̂
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    row_mask = rows < M
    col_mask = cols < D
    mask = row_mask[:, None] & col_mask[None, :]
    rows64 = rows.to(tl.int64)  # M·D can exceed 2³¹ for large batches
    if USE_PDL:
        # x is written by the previous kernel, and y may be memory that kernel still reads: the index math above
        # overlaps its tail, every load and store comes after this.
        gdc_wait()

    x = tl.load(x_ptr + rows64[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / D
    # Padded columns must not contribute (x − μ) to the variance: zero them explicitly.
    xc = tl.where(mask, x - mean[:, None], 0.0)
    m2 = tl.sum(xc * xc, axis=1)
    if USE_PDL:
        gdc_launch_dependents()  # x is read: the next kernel may start its prologue (its gdc_wait still waits)
    if STATS:  # one (μ, M2) slot per row, the format `linear(norm=RowStats(...))` merges in its epilogue
        tl.store(y_ptr + rows64 * stride_ym, mean, mask=row_mask)
        tl.store(y_ptr + rows64 * stride_ym + 1, m2, mask=row_mask)
    else:
        rstd = 1.0 / tl.sqrt(m2 / D + eps)  # 1/sqrt rather than rsqrt: bit-closer to torch's layer_norm
        y = xc * rstd[:, None]
        tl.store(y_ptr + rows64[:, None] * stride_ym + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _normalize_tokens_kernel(
    # pointers
    x_ptr,  # (B, N, D) input, strides (stride_xb, stride_xn, 1)
    y_ptr,  # (B, N, D) normalised over N, contiguous
    # sizes
    N, D,
    # strides
    stride_xb, stride_xn,
    # scalars
    eps,
    # meta-parameters
    BLOCK_N: tl.constexpr,  # next power of two >= N: a column block lives in registers
    BLOCK_D: tl.constexpr,  # channels per program, contiguous in memory (coalesced rows of BLOCK_D values)
):
    b = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    toks = tl.arange(0, BLOCK_N)
    mask = (toks < N)[:, None] & (cols < D)[None, :]
    x = tl.load(x_ptr + b * stride_xb + toks.to(tl.int64)[:, None] * stride_xn + cols[None, :], mask=mask,
                other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / N
    xc = tl.where(mask, x - mean[None, :], 0.0)       # two-pass, as `normalize`
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
    y = xc * rstd[None, :]
    tl.store(y_ptr + b * N * D + toks.to(tl.int64)[:, None] * D + cols[None, :], y.to(y_ptr.dtype.element_ty),
             mask=mask)


def _normalize_meta(D: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_D, num_warps) for a row length D.

    About 4K elements per program: enough bytes in flight per SM for a bandwidth-bound kernel without spilling.
    D = 384 -> BLOCK_D 512, 8 rows per program; D = 1024 -> 4 rows. Under the interpreter fewer rows per program
    does not matter, but fewer programs does (the interpreter's cost is per program and per op), so same rule.
    """
    block_d = next_power_of_2(D)
    block_m = max(1, min(16, 4096 // block_d))
    num_warps = 4 if block_d * block_m <= 4096 else 8
    return block_m, block_d, num_warps


def _normalize_launch(x2: torch.Tensor, y2: torch.Tensor, eps: float, stats: bool = False) -> None:
    """Launch on 2-D views x2 (M, D) and y2: (M, D) x̂, or with ``stats`` (M, 2) fp32 row statistics."""
    M, D = x2.shape
    if M == 0 or skip_launch(x2):
        return
    block_m, block_d, num_warps = _normalize_meta(D)
    grid = (triton.cdiv(M, block_m),)
    use_pdl = pdl_enabled(x2)
    with device_guard(x2):
        wrap_triton(_normalize_kernel)[grid](
            x2, y2,
            M, D,
            x2.stride(0), y2.stride(0),
            eps,
            BLOCK_M=block_m, BLOCK_D=block_d, USE_PDL=use_pdl, STATS=stats, num_warps=num_warps,
            **pdl_launch_kwargs(use_pdl),
        )


@cached_check
def _check_normalize_args(x: torch.Tensor, eps: float, out_dtype: Optional[torch.dtype]) -> torch.dtype:
    check_tensor(x, "x", min_ndim=1)
    D = x.shape[-1]
    if D < 1 or D > MAX_D:
        raise ValueError(f"x must have a last dim (D) in [1, {MAX_D}], got shape {tuple(x.shape)}")
    if not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be one of float16, bfloat16, float32 or None, got {out_dtype}")
    return out_dtype


def _normalize_op(x: torch.Tensor, eps: float, out_dtype: Optional[torch.dtype]) -> torch.Tensor:
    out_dtype = _check_normalize_args(x, eps, out_dtype)
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    D = x.shape[-1]
    _normalize_launch(x.view(-1, D), y.view(-1, D), eps)
    return y


_normalize_registered = register_op("normalize", _normalize_op)


def _row_stats_op(x: torch.Tensor) -> torch.Tensor:
    _check_normalize_args(x, 0.0, None)
    D = x.shape[-1]
    s = torch.empty(tuple(x.shape[:-1]) + (1, 2), dtype=torch.float32, device=x.device)
    _normalize_launch(x.view(-1, D), s.view(-1, 2), 0.0, stats=True)
    return s


_row_stats_registered = register_op("row_stats", _row_stats_op)


def _normalize_tokens_op(x: torch.Tensor, eps: float) -> torch.Tensor:
    check_tensor(x, "x", ndim=3, contiguous=False)
    B, N, D = x.shape
    if x.stride(-1) != 1:
        raise ValueError(f"x must have unit stride along its last dim (channels), got strides {tuple(x.stride())}")
    if N < 1 or N > MAX_TOKENS:
        raise ValueError(f"x must have 1 <= N <= {MAX_TOKENS} tokens (dim 1), got shape {tuple(x.shape)}")
    if not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    y = torch.empty((B, N, D), dtype=x.dtype, device=x.device)
    if y.numel() == 0 or skip_launch(x):
        return y
    block_n = next_power_of_2(N)
    block_d = max(1, min(64, next_power_of_2(D), 8192 // block_n))   # ~8K fp32 values per program
    with device_guard(x):
        wrap_triton(_normalize_tokens_kernel)[(triton.cdiv(D, block_d), B)](
            x, y, N, D, x.stride(0), x.stride(1), eps, BLOCK_N=block_n, BLOCK_D=block_d,
            num_warps=4 if block_n * block_d <= 4096 else 8)
    return y


_normalize_tokens_registered = register_op("normalize_tokens", _normalize_tokens_op)


def normalize_tokens(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine over the token axis: for every sample b and channel d,
    ``y[b, :, d] = (x[b, :, d] − mean) / sqrt(var + eps)`` over the N tokens (the feed-forward-only model's token
    LayerNorm, whose affine folds into the token GEMM after it). Statistics in fp32, two-pass.

    Args:
        x: (B, N, D) float16/bfloat16/float32 with unit stride along D, 1 <= N <= MAX_TOKENS, CUDA (CPU only under
            ``TRITON_INTERPRET=1``).

    Returns:
        (B, N, D) contiguous, x's dtype. Registered as ``torch.ops.ttf.normalize_tokens(x, eps)``.
    """
    return _normalize_tokens_registered(x, float(eps))


def normalize_tokens_ref(x: torch.Tensor, eps: float = 1e-6, upcast: bool = False) -> torch.Tensor:
    """Reference: ``layer_norm`` of x transposed to (B, D, N), transposed back; float64 with upcast=True."""
    if upcast:
        x = x.double()
    return torch.nn.functional.layer_norm(x.transpose(1, 2), (x.shape[1],), eps=eps).transpose(1, 2)


def row_stats(x: torch.Tensor) -> RowStats:
    """LayerNorm statistics of every row, for a GEMM that normalises in its epilogue (`linear(..., norm=...)`).

    Args:
        x: (..., D) float16/bfloat16/float32, contiguous, CUDA (CPU only under ``TRITON_INTERPRET=1``), 1 <= D <= 8192.

    Returns:
        RowStats(partials (..., 1, 2) fp32 = (mean, Σ(x − mean)²) per row, width D). Registered as
        ``torch.ops.ttf.row_stats(x)``. Reads x once and writes 8 B per row, where `normalize` writes all of x̂.
    """
    return RowStats(_row_stats_registered(x), x.shape[-1])


def normalize(x: torch.Tensor, eps: float = 1e-6, out_dtype: Optional[torch.dtype] = None,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """LayerNorm without affine over the last dim: ``(x − mean) / sqrt(var + eps)``, statistics in fp32.

    Args:
        x: (..., D) float16/bfloat16/float32, contiguous, CUDA (CPU only under ``TRITON_INTERPRET=1``);
            1 <= D <= 8192. Leading dims may be empty (M = 0 -> empty result, no launch).
        eps: added to the biased variance (ViT: 1e-6).
        out_dtype: dtype of the result (default ``x.dtype``), e.g. fp32 x -> bf16 x̂ feeding a bf16 GEMM.
        out: optional preallocated result, shape ``x.shape``, dtype ``out_dtype or x.dtype``, not aliasing x.
            Bypasses the registered op (eager only); used by tests to poison the output.

    Returns:
        x̂, shape ``x.shape``. Registered as ``torch.ops.ttf.normalize(x, eps, out_dtype)``.
    """
    if out is None:
        return _normalize_registered(x, float(eps), out_dtype)
    out_dtype = _check_normalize_args(x, eps, out_dtype)
    check_out(out, "out", tuple(x.shape), out_dtype, x.device, {"x": x})
    D = x.shape[-1]
    _normalize_launch(x.view(-1, D), out.view(-1, D), float(eps))
    return out


def row_stats_ref(x: torch.Tensor, width: Optional[int] = None) -> RowStats:
    """Reference partial statistics in float64: slots of `width` columns (default the whole row), (..., T, 2)."""
    D = x.shape[-1]
    w = D if width is None else int(width)
    slots = []
    for t0 in range(0, D, w):
        part = x[..., t0:t0 + w].double()
        mean = part.mean(-1)
        slots.append(torch.stack([mean, ((part - mean[..., None]) ** 2).sum(-1)], -1))
    return RowStats(torch.stack(slots, -2), w)


def normalize_ref(x: torch.Tensor, eps: float = 1e-6, out_dtype: Optional[torch.dtype] = None,
                  upcast: bool = False) -> torch.Tensor:
    """Reference: ``torch.nn.functional.layer_norm`` without weight/bias.

    upcast=True computes in float64 and returns float64 (the oracle); otherwise it computes in x.dtype (as PyTorch
    would, its own low-precision error) and casts to ``out_dtype``.
    """
    if upcast:
        x = x.double()
    y = torch.nn.functional.layer_norm(x, (x.shape[-1],), eps=eps)
    if upcast:
        return y
    return y.to(out_dtype or x.dtype)
