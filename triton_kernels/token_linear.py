r"""Token mixing: one GEMM across the token axis of every sample, with the MLP families' epilogues.

Math, for every sample b of x (B, N, D) (rows are tokens, columns channels):

    x̂[b] = LN(x[b]) row by row                          optional (norm=RowStats of x): LayerNorm without affine
                                                         over each token's D channels, applied in the main loop
    y[b] = W (N', N) @ x[b] (N, D)                       fp32 accumulation (x̂[b] with norm=)
    y    = y * scale + shift                             scale (D,) or (N', D), shift (N', D): optional
    y    = y + bias[:, None]                             bias (N',): one value per output token
    y    = gelu(y)                                       optional, exact erf
    y    = y * gate[b]                                   gate (B, N', D): optional (gMLP's spatial gating)
    y    = y + residual[b]                               residual (B, N', D): optional
    out  (B, N', D) in x.dtype

x[b] is the B operand as it lies in memory (row-major (N, D), unit stride along D): no transposed copy of the
activations is made, where an nn.Linear over tokens would need x.transpose(1, 2).contiguous() before and after.
`scale`/`shift` carry a per-channel affine through the token GEMM exactly: W (x̂ diag g + 1 βᵀ) = (W x̂) diag g +
(W 1) βᵀ, so a LayerNorm (Mixer, gMLP) or Affine (ResMLP) before the token mixing folds into this epilogue, and a
LayerScale after it into scale and shift.

Normalised input (norm=): the rows of x are tokens, the reduction index of this GEMM, so LN cannot be corrected in
the epilogue as `linear` does (there the normalised rows are the output rows). Instead each K step merges the row
statistics of its BLOCK_K tokens (`_row_stats.merge_row_stats`: slots written by the GEMM that produced x, e.g.
``linear(..., return_stats=True)``) and normalises the B tile in registers, (x − μ)·rstd, rounded to x's dtype as a
separate normalisation kernel would store x̂, before the dot: no x̂ is written or read. Cost: per K step a
(BLOCK_K, ⌈D/32⌉, 2) fp32 load of statistics (L2-resident; gMLP-S: 24 slots) and BLOCK_K·BLOCK_D fused
multiply-adds, repeated by each of the ⌈N'/BLOCK_M⌉·⌈D/BLOCK_D⌉ programs of a sample.

Cost: 2·B·N'·N·D FLOPs; bytes B·(N + N')·D·sizeof(x) + N'·N·sizeof(W) (+ the epilogue operands). Mixer-B/16 at
batch 64: N = N' = 196, D = 768 -> 3.8 GFLOP for 2 × 19 MB of bf16 activations: ~100 FLOP/byte, memory-bound on
H100 (its ridge is ~300 FLOP/byte) — the floor is the activations' traffic, which the no-copy layout keeps at one
read and one write.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (FLOAT_DTYPES, RowStats, cached_check, check_same_device, check_tensor, device_guard,
                      interpreter_active, register_op, skip_launch, wrap_triton)
from ._row_stats import check_row_stats, merge_row_stats, stats_meta

__all__ = ["token_linear", "token_linear_ref"]


@triton.jit
def _token_linear_kernel(
    # pointers
    w_ptr,      # (N', N) token weight, row stride stride_wm, unit inner stride
    x_ptr,      # (B, N, D) activations, strides (stride_xb, stride_xn, 1)
    b_ptr,      # (N',) bias; unused unless HAS_BIAS
    s_ptr,      # (N', D) or (D,) scale, row stride stride_sm (0 for a vector); unused unless HAS_SCALE
    t_ptr,      # (N', D) shift, row stride stride_tm; unused unless HAS_SHIFT
    g_ptr,      # (B, N', D) gate, strides (stride_gb, stride_gm, 1); unused unless HAS_GATE
    r_ptr,      # (B, N', D) residual, strides (stride_rb, stride_rm, 1); unused unless HAS_RESIDUAL
    y_ptr,      # (B, N', D) output, strides (stride_yb, stride_ym, 1)
    st_ptr,     # (B, N, T_IN, 2) fp32 row statistics of x (RowStats partials); unused unless NORM_IN
    eps,        # LayerNorm epsilon (NORM_IN)
    # sizes
    M, N, D,    # M = N' output tokens, N input tokens (the reduction), D channels
    # strides
    stride_wm, stride_xb, stride_xn, stride_sm, stride_tm, stride_gb, stride_gm, stride_rb, stride_rm,
    stride_yb, stride_ym,
    # meta-parameters
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, ACTIVATION: tl.constexpr,
    HAS_GATE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr,
    NORM_IN: tl.constexpr, W_IN: tl.constexpr, T_IN: tl.constexpr, T_IN_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_d = offs_d < D
    w_ptrs = w_ptr + offs_m[:, None] * stride_wm + offs_k[None, :]
    x_ptrs = x_ptr + b * stride_xb + offs_k[:, None] * stride_xn + offs_d[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for k0 in range(0, N, BLOCK_K):
        k_ok = (k0 + offs_k) < N
        w = tl.load(w_ptrs, mask=mask_m[:, None] & k_ok[None, :], other=0.0)
        x = tl.load(x_ptrs, mask=k_ok[:, None] & mask_d[None, :], other=0.0)
        if NORM_IN:
            # Tokens beyond N normalise to zeros (rstd 0) and meet zero W columns: they add nothing.
            tok = b * N + k0 + offs_k
            mean, rstd = merge_row_stats(st_ptr, tok, k_ok, D, eps, W_IN, T_IN, T_IN_PAD)
            x = ((x.to(tl.float32) - mean[:, None]) * rstd[:, None]).to(x_ptr.dtype.element_ty)
        acc = tl.dot(w, x, acc, input_precision=DOT_PREC)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K * stride_xn
    mask = mask_m[:, None] & mask_d[None, :]
    if HAS_SCALE:
        acc *= tl.load(s_ptr + offs_m[:, None] * stride_sm + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_SHIFT:
        acc += tl.load(t_ptr + offs_m[:, None] * stride_tm + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_m, mask=mask_m, other=0.0).to(tl.float32)[:, None]
    if ACTIVATION == 1:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))  # exact GELU, 1/√2
    rows = offs_m.to(tl.int64)[:, None]
    if HAS_GATE:
        acc *= tl.load(g_ptr + b * stride_gb + rows * stride_gm + offs_d[None, :], mask=mask, other=0.0).to(
            tl.float32)
    if HAS_RESIDUAL:
        acc += tl.load(r_ptr + b * stride_rb + rows * stride_rm + offs_d[None, :], mask=mask, other=0.0).to(
            tl.float32)
    tl.store(y_ptr + b * stride_yb + rows * stride_ym + offs_d[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


def _meta(M: int, D: int, fp32_norm: bool = False) -> dict:
    """Tile sizes: 64×64 output tiles (N' and D of the MLP families are 49–1024), 32-deep K steps; the
    interpreter's cost is per program, so it gets the same tiles. fp32 with a normalised input: 16-deep K steps
    (the fp32 B tile and the statistic slots of 32 tokens spilled ~1-3 KB per thread on sm_90)."""
    block_d = 64 if D >= 64 else max(16, triton.next_power_of_2(D))
    block_m = 64 if M >= 64 else max(16, triton.next_power_of_2(M))
    return dict(BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_K=16 if fp32_norm else 32, num_warps=4,
                num_stages=1 if interpreter_active() else 3)


@cached_check
def _check_args(x, w, bias, scale, shift, gate, residual, activation, norm_partials, norm_width, norm_eps):
    check_tensor(x, "x", ndim=3, dtypes=FLOAT_DTYPES, contiguous=False)
    if x.stride(-1) != 1:
        raise ValueError(f"x must have unit stride along its last dim (channels), got strides {tuple(x.stride())}")
    B, N, D = x.shape
    check_tensor(w, "w", ndim=2, dtypes=(x.dtype,))
    if w.shape[1] != N:
        raise ValueError(f"w must have shape (N', N) with N = {N} (the tokens of x), got {tuple(w.shape)}")
    M = w.shape[0]
    if bias is not None:
        check_tensor(bias, "bias", ndim=1, shape=(M,), dtypes=FLOAT_DTYPES)
    if scale is not None:
        check_tensor(scale, "scale", dtypes=FLOAT_DTYPES)
        if tuple(scale.shape) not in ((D,), (M, D)):
            raise ValueError(f"scale must have shape (D,) = ({D},) or (N', D) = ({M}, {D}), got "
                             f"{tuple(scale.shape)}")
    if shift is not None:
        check_tensor(shift, "shift", ndim=2, shape=(M, D), dtypes=FLOAT_DTYPES)
    for t, name in ((gate, "gate"), (residual, "residual")):
        if t is not None:
            check_tensor(t, name, ndim=3, shape=(B, M, D), dtypes=(x.dtype,), contiguous=False)
            if t.stride(-1) != 1:
                raise ValueError(f"{name} must have unit stride along its last dim, got {tuple(t.stride())}")
    if activation not in (None, "gelu"):
        raise ValueError(f"activation must be None or 'gelu', got {activation!r}")
    check_same_device(x=x, w=w, bias=bias, scale=scale, shift=shift, gate=gate, residual=residual)
    width = 0
    if norm_partials is not None:
        width = check_row_stats(norm_partials, norm_width, (B, N), D, norm_eps, x)
    return B, M, D, width


def _token_linear_op(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                     shift: Optional[torch.Tensor], gate: Optional[torch.Tensor], residual: Optional[torch.Tensor],
                     activation: Optional[str], norm_partials: Optional[torch.Tensor] = None, norm_width: int = 0,
                     norm_eps: float = 0.0) -> torch.Tensor:
    B, M, D, width = _check_args(x, w, bias, scale, shift, gate, residual, activation, norm_partials, norm_width,
                                 norm_eps)
    y = torch.empty((B, M, D), dtype=x.dtype, device=x.device)
    if y.numel() == 0 or skip_launch(x):
        return y
    meta = _meta(M, D, fp32_norm=width > 0 and x.dtype == torch.float32)
    grid = (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(D, meta["BLOCK_D"]), B)
    dummy = y
    with device_guard(x):
        wrap_triton(_token_linear_kernel)[grid](
            w, x, bias if bias is not None else dummy, scale if scale is not None else dummy,
            shift if shift is not None else dummy, gate if gate is not None else dummy,
            residual if residual is not None else dummy, y,
            norm_partials if norm_partials is not None else dummy, float(norm_eps),
            M, x.shape[1], D,
            w.stride(0), x.stride(0), x.stride(1),
            (scale.stride(0) if scale.dim() == 2 else 0) if scale is not None else 0,
            shift.stride(0) if shift is not None else 0,
            gate.stride(0) if gate is not None else 0, gate.stride(1) if gate is not None else 0,
            residual.stride(0) if residual is not None else 0, residual.stride(1) if residual is not None else 0,
            y.stride(0), y.stride(1),
            HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
            ACTIVATION=1 if activation == "gelu" else 0, HAS_GATE=gate is not None,
            HAS_RESIDUAL=residual is not None,
            # fp32 operands must match an fp32 reference (no TF32); 16-bit operands ignore it
            DOT_PREC="ieee",
            NORM_IN=width > 0, **stats_meta(width, D),
            **meta,
        )
    return y


_token_linear_registered = register_op("token_linear", _token_linear_op)


def token_linear(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 activation: Optional[str] = None, scale: Optional[torch.Tensor] = None,
                 shift: Optional[torch.Tensor] = None, gate: Optional[torch.Tensor] = None,
                 residual: Optional[torch.Tensor] = None, norm: Optional[RowStats] = None,
                 eps: float = 1e-6) -> torch.Tensor:
    """Token mixing y[b] = W @ x[b] (or W @ LN(x[b]) with `norm`) with the epilogue of the module docstring.

    Args:
        x: (B, N, D) float16/bfloat16/float32, unit stride along D (other strides free: a view is fine), CUDA
            (CPU only under ``TRITON_INTERPRET=1``).
        w: (N', N), x's dtype, contiguous.
        bias: optional (N',) (one value per output token), any float dtype.
        activation: None or "gelu" (exact erf), applied after scale / shift / bias, before gate and residual.
        scale: optional (D,) or (N', D); shift: optional (N', D); any float dtype (fp32 keeps folds exact).
        gate, residual: optional (B, N', D) in x's dtype, unit stride along D.
        norm: optional RowStats of x's rows, partials (B, N, ⌈D / width⌉, 2) fp32 contiguous (from `row_stats(x)`,
            or ``linear(..., return_stats=True)`` on the (B·N, D) matrix x views, reshaped): the product then reads
            LN(x) (LayerNorm without affine over each token's D channels, epsilon `eps`), normalised in the main
            loop; fold the LayerNorm's affine into `scale` / `shift`.
        eps: with `norm`, the LayerNorm epsilon.

    Returns:
        (B, N', D) in x's dtype. Registered as ``torch.ops.ttf.token_linear(x, w, bias, scale, shift, gate,
        residual, activation, norm_partials=None, norm_width=0, norm_eps=0.0)``.
    """
    if norm is None:
        return _token_linear_registered(x, w, bias, scale, shift, gate, residual, activation)
    if not isinstance(norm, RowStats):
        raise TypeError(f"norm must be a RowStats (from row_stats or linear(..., return_stats=True)), got "
                        f"{type(norm).__name__}")
    return _token_linear_registered(x, w, bias, scale, shift, gate, residual, activation, norm.partials,
                                    int(norm.width), float(eps))


def token_linear_ref(x, w, bias=None, activation=None, scale=None, shift=None, gate=None, residual=None,
                     upcast: bool = False, normalize_input: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """Plain PyTorch: rounds to x.dtype after every op as an unfused model would; upcast=True computes and returns
    float64 (the oracle). normalize_input=True applies LayerNorm without affine (`eps`) over each token's channels
    first: the reference of ``token_linear(norm=...)``."""
    dt = torch.float64 if upcast else x.dtype
    if normalize_input:
        x = torch.nn.functional.layer_norm(x.to(dt), (x.shape[-1],), eps=eps)

    def c(t):
        return None if t is None else t.to(dt)
    y = torch.matmul(c(w), c(x))
    if scale is not None:
        y = y * c(scale)
    if shift is not None:
        y = y + c(shift)
    if bias is not None:
        y = y + c(bias)[:, None]
    if activation == "gelu":
        y = torch.nn.functional.gelu(y)
    if gate is not None:
        y = y * c(gate)
    if residual is not None:
        y = y + c(residual)
    return y
