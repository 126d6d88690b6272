r"""GEMM with a fused epilogue: every Linear of a folded (parallel) ViT block.

Math (nn.Linear layout, fp32 accumulation, one rounding to the output dtype):

    y = act(x @ Wᵀ + b) + r          x (M, K), W (N, K), b (N,), r (M, N), y (M, N)
    act ∈ {identity, gelu}, gelu(z) = ½·z·(1 + erf(z/√2))   (exact erf, as nn.GELU())

Uses in a folded block with K branches (width D, MLP width F, M = B·N tokens):
    qkv  = x̂ @ Wqkvᵀ + bqkv                 (M, D)   -> (M, 3·K·D)
    x    = x + o @ Wprojᵀ + bproj            (M, K·D) -> (M, D)     residual in the epilogue
    h    = gelu(x̂ @ Wfc1ᵀ + bfc1)           (M, D)   -> (M, K·F)   bias + GELU in the epilogue
    x    = x + h @ Wfc2ᵀ + bfc2              (M, K·F) -> (M, D)     residual in the epilogue

Cost: 2·M·N·K FLOPs; bytes (M·K + N·K)·s_in + M·N·s_out (+ M·N·s_r with a residual, + N·s_b).
S18x2 (D = 384, K = 2 branches, F = 1536) at 224 px, batch 64, bf16: M = 12 608, per block
    qkv 2·M·2304·384 = 22.3 GFLOP, proj 2·M·384·768 = 7.4, fc1 2·M·3072·384 = 29.7, fc2 2·M·384·3072 = 29.7
    -> 89 GFLOP per block, 1.6 TFLOP for 18 blocks: ~2.0 ms at 800 TFLOP/s (floor). Arithmetic intensity of
    the smallest (proj: M·768 + 384·768 + 2·M·384 elements moved) ≈ 190 FLOP/B: compute bound on H100.

Design: classic tiled GEMM (BLOCK_M × BLOCK_N tile per program, K loop of BLOCK_K), grouped program ordering
(GROUP_M row-tiles share a column of W tiles while it is in L2), masks on M, N and K so any shape works,
epilogue in fp32 registers before the single store. fp32 inputs use IEEE fp32 dot unless ``allow_tf32``.

LayerNorm exchange (the model's norm="fused" mode), both in the epilogue, the main loop unchanged:
    STATS_OUT  the GEMM that produces x (proj, fc2: residual in the epilogue) also writes, per row and per slot of
               STAT_W = 32 output columns, the slot's mean μ_t and M2_t = Σ(x − μ_t)² of the values as stored;
    NORM_IN    the GEMM that consumes LN(x) (QKV, fc1, head) multiplies the raw x and corrects
                   LN(x) @ Wᵀ = rstd·(x @ Wᵀ − μ·c),   c_n = Σ_k W[n, k] (column_sums, float64 -> fp32, once)
               with μ = Σ n_t μ_t / K, M2 = Σ M2_t + n_t (μ_t − μ)² (Chan et al.: exact, no E[x²] − E[x]²),
               rstd = 1/√(M2/K + ε). No normalised copy x̂ is written or read, and x̂ is never rounded.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (FLOAT_DTYPES, RowStats, autotuned, check_out, check_same_device, check_tensor, device_guard,
                      launch_choice, next_power_of_2, register_op, skip_launch, wrap_triton)

__all__ = ["linear", "linear_ref", "column_sums", "ACTIVATIONS", "STAT_W"]

#: Output columns per statistics slot of ``linear(..., return_stats=True)``; divides every config's BLOCK_N.
STAT_W = 32

#: Supported epilogue activations (the ``activation`` string) -> kernel constexpr code.
ACTIVATIONS = {None: 0, "gelu": 1}


# EPILOGUE only keys the autotuner (Triton's key holds the listed arguments and the dtypes, not the constexpr flags:
# without it the separate- and fused-norm variants of one shape would share whichever config was tuned first).
@triton.jit(do_not_specialize=["EPILOGUE"])
def _linear_kernel(
    # pointers
    x_ptr,  # (M, K) activations, row stride stride_xm, unit inner stride
    w_ptr,  # (N, K) weight (nn.Linear layout), row stride stride_wn, unit inner stride
    b_ptr,  # (N,) bias; unused when HAS_BIAS is False
    r_ptr,  # (M, N) residual, row stride stride_rm; unused when HAS_RESIDUAL is False
    y_ptr,  # (M, N) output, row stride stride_ym
    s_ptr,  # (M, T_IN, 2) fp32 partial row statistics of x (NORM_IN): see RowStats
    c_ptr,  # (N,) fp32 Σ_k W[n, k] of the weight as stored (NORM_IN)
    so_ptr,  # (M, cdiv(N, STAT_W), 2) fp32 partial row statistics of y, as stored (STATS_OUT)
    # sizes
    M, N, K,
    EPILOGUE,  # unused by the body: autotune key only (_epilogue_key)
    # strides
    stride_xm, stride_wn, stride_rm, stride_ym,
    # scalars
    eps,  # LayerNorm epsilon (NORM_IN)
    # meta-parameters
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACTIVATION: tl.constexpr,  # 0 identity, 1 exact-erf GELU (applied before the residual add)
    INPUT_PRECISION: tl.constexpr,  # "ieee" or "tf32"; only matters for fp32 operands
    NORM_IN: tl.constexpr,  # y = LN(x) @ Wᵀ...: merge x's row statistics, correct the accumulator (docstring)
    W_IN: tl.constexpr,  # columns per slot of the input statistics
    T_IN: tl.constexpr,  # slots per row of the input statistics, cdiv(K, W_IN)
    T_IN_PAD: tl.constexpr,  # next power of two >= max(T_IN, 2)
    STATS_OUT: tl.constexpr,  # also write y's partial row statistics, one slot per STAT_W output columns
    STAT_W: tl.constexpr,  # divides BLOCK_N
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Grouped ordering: consecutive programs walk GROUP_M row-tiles down one column of tiles, so the W tile
    # (BLOCK_N × K) they share is read from L2 rather than HBM.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # int64 row offsets: M·K exceeds 2³¹ elements at large batch (e.g. 4096 images × 577 tokens × 3072).
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
    w_ptrs = w_ptr + offs_n.to(tl.int64)[None, :] * stride_wn + offs_k[:, None]  # (BLOCK_K, BLOCK_N) view of Wᵀ

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        a = tl.load(x_ptrs, mask=mask_m[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=k_mask[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    # Epilogue in fp32: LayerNorm correction, bias, activation, residual, then a single rounding on store.
    offs_m64 = offs_m.to(tl.int64)
    if NORM_IN:
        # Merge the row's statistic slots exactly: μ = Σ n_t μ_t / K, M2 = Σ M2_t + n_t (μ_t − μ)².
        t = tl.arange(0, T_IN_PAD)
        t_ok = t < T_IN
        n_t = tl.where(t_ok, tl.minimum(K - t * W_IN, W_IN), 0).to(tl.float32)
        sp = s_ptr + offs_m64[:, None] * (T_IN * 2) + t[None, :] * 2
        s_mask = mask_m[:, None] & t_ok[None, :]
        mu_t = tl.load(sp, mask=s_mask, other=0.0)
        m2_t = tl.load(sp + 1, mask=s_mask, other=0.0)
        mean = tl.sum(mu_t * n_t[None, :], axis=1) / K
        dev = mu_t - mean[:, None]
        m2 = tl.sum(m2_t + n_t[None, :] * dev * dev, axis=1)
        rstd = 1.0 / tl.sqrt(m2 / K + eps)
        # (x − μ)·rstd @ Wᵀ = rstd·(x @ Wᵀ − μ·Σ_k W[n, k]): the main loop multiplied the raw rows.
        csum = tl.load(c_ptr + offs_n, mask=mask_n, other=0.0)
        acc = (acc - mean[:, None] * csum[None, :]) * rstd[:, None]
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    if ACTIVATION == 1:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))  # 1/√2
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_RESIDUAL:
        res = tl.load(r_ptr + offs_m64[:, None] * stride_rm + offs_n[None, :], mask=mask, other=0.0)
        acc = acc + res.to(tl.float32)
    y = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + offs_m64[:, None] * stride_ym + offs_n[None, :], y, mask=mask)
    if STATS_OUT:
        # Statistics of the values as stored (rounded), per slot of STAT_W columns of this tile. Columns >= N hold
        # exact zeros (masked W, bias and residual loads) but are excluded from the counts and the M2 sums.
        tl.static_assert(BLOCK_N % STAT_W == 0, "STAT_W must divide BLOCK_N")
        G: tl.constexpr = BLOCK_N // STAT_W
        col3 = tl.reshape(tl.broadcast_to(offs_n[None, :], (BLOCK_M, BLOCK_N)), (BLOCK_M, G, STAT_W))
        ok3 = col3 < N
        y3 = tl.where(ok3, tl.reshape(y.to(tl.float32), (BLOCK_M, G, STAT_W)), 0.0)
        cnt = tl.sum(ok3.to(tl.float32), axis=2)
        mu = tl.sum(y3, axis=2) / tl.maximum(cnt, 1.0)
        d3 = tl.where(ok3, y3 - mu[:, :, None], 0.0)
        m2o = tl.sum(d3 * d3, axis=2)
        slot = pid_n * G + tl.arange(0, G)
        t_out = tl.cdiv(N, STAT_W)
        op = so_ptr + offs_m64[:, None] * (t_out * 2) + slot[None, :] * 2
        o_mask = mask_m[:, None] & (slot < t_out)[None, :]
        tl.store(op, mu, mask=o_mask)
        tl.store(op + 1, m2o, mask=o_mask)


# ---------------------------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------------------------
# Two small, pre-pruned autotune lists chosen by M in the launcher (pruning in Python rather than through
# prune_configs_by keeps the kernel simple for torch.compile's user-kernel support). Large M (batched throughput):
# 128-row tiles, 8 warps, 3-4 stages of BLOCK_K = 64 (bf16: (128+256)·64·2 B = 48 KB per stage). Small M (batch 1-2,
# M ≈ 197-394): smaller tiles so more than a handful of the 132 SMs get work.
# IEEE fp32 operands (the accuracy path: no tensor cores) skip autotuning and use one config that fits shared
# memory: their big-tile variants take ~5-30 s each to compile and would not be fast anyway.
def _config(bm, bn, bk, warps, stages, group_m=8):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                         num_warps=warps, num_stages=stages)


_CONFIGS_LARGE_M = [
    _config(128, 256, 64, 8, 3),
    _config(128, 128, 64, 8, 4),
    _config(128, 128, 64, 4, 4),
    _config(128, 64, 64, 4, 4),
]
_CONFIGS_SMALL_M = [
    _config(64, 128, 64, 4, 4),
    _config(64, 64, 64, 4, 4),
    _config(32, 64, 128, 4, 4),
    _config(64, 64, 32, 4, 3),
]
#: M at or below this uses the small-tile list (1-2 images at 224 px).
SMALL_M = 512

_linear_kernel_large = autotuned(_linear_kernel, _CONFIGS_LARGE_M, ["M", "N", "K", "EPILOGUE"])
_linear_kernel_small = autotuned(_linear_kernel, _CONFIGS_SMALL_M, ["M", "N", "K", "EPILOGUE"])


def _epilogue_key(has_bias: bool, has_residual: bool, activation: int, norm_in: bool, stats_out: bool,
                  tf32: bool) -> int:
    """One int per epilogue variant, for the autotune key (the variants differ in registers and shared memory,
    so each wants its own tile)."""
    return (int(has_bias) | int(has_residual) << 1 | int(activation) << 2 | int(norm_in) << 4 | int(stats_out) << 5
            | int(tf32) << 6)

#: fp32 operands (IEEE or tf32): one conservative config, (64·32 + 32·64)·4 B = 16 KB per stage. The bf16 tile
#: lists would need 2x the shared memory in fp32: 128x256x64 x 3 stages is 288 KB, over the 227 KB an H100 block
#: may use (found by the sm_90 compile check, tests/test_sm90_compile.py).
_FP32_META = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}

#: One small config under the interpreter: autotuning there re-runs the whole interpreted kernel per config.
#: 16 is the smallest tile tl.dot accepts.
_INTERPRETER_META = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}


def _linear_launch(x2: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   residual2: Optional[torch.Tensor], y2: torch.Tensor, activation: Optional[str],
                   allow_tf32: bool, norm: Optional[RowStats] = None, colsum: Optional[torch.Tensor] = None,
                   eps: float = 0.0, stats_out: Optional[torch.Tensor] = None) -> None:
    """Launch on validated 2-D operands: x2 (M, K), weight (N, K), residual2 (M, N) or None, y2 (M, N); norm with
    partials viewed as (M, T_IN, 2); stats_out (M, cdiv(N, STAT_W), 2) or None."""
    M, K = x2.shape
    N = weight.shape[0]
    if M == 0 or skip_launch(x2):
        return
    # Unused pointer slots get a real, read-only tensor (never dereferenced: the constexpr flag removes the load).
    b_arg = bias if bias is not None else weight
    r_arg = residual2 if residual2 is not None else x2
    stride_rm = residual2.stride(0) if residual2 is not None else 0
    t_in = norm.partials.shape[-2] if norm is not None else 1
    precision = "tf32" if (allow_tf32 and x2.dtype == torch.float32) else "ieee"

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    kernel, meta = launch_choice(_linear_kernel, _linear_kernel_small if M <= SMALL_M else _linear_kernel_large,
                                 interpreter_meta=_INTERPRETER_META, fp32_meta=_FP32_META,
                                 fp32=x2.dtype == torch.float32)
    with device_guard(x2):
        wrap_triton(kernel)[grid](
            x2, weight, b_arg, r_arg, y2,
            norm.partials if norm is not None else x2, colsum if colsum is not None else x2,
            stats_out if stats_out is not None else x2,
            M, N, K,
            _epilogue_key(bias is not None, residual2 is not None, ACTIVATIONS[activation], norm is not None,
                          stats_out is not None, precision == "tf32"),
            x2.stride(0), weight.stride(0), stride_rm, y2.stride(0),
            float(eps),
            HAS_BIAS=bias is not None,
            HAS_RESIDUAL=residual2 is not None,
            ACTIVATION=ACTIVATIONS[activation],
            INPUT_PRECISION=precision,
            NORM_IN=norm is not None,
            W_IN=norm.width if norm is not None else 1,
            T_IN=t_in,
            T_IN_PAD=max(2, next_power_of_2(t_in)),
            STATS_OUT=stats_out is not None,
            STAT_W=STAT_W,
            **meta,
        )


def _check_norm_args(x, weight, norm_partials, norm_width, norm_colsum, norm_eps, allow_tf32):
    """Validate the fused-LayerNorm inputs of `linear` (all None/0 when unused); return the slot width as an int."""
    if norm_partials is None:
        if norm_colsum is not None:
            raise ValueError("norm_colsum given without norm statistics")
        return 0
    N, K = weight.shape
    if allow_tf32 and x.dtype == torch.float32:
        # The main loop multiplies the raw x: TF32 rounding then scales with |x|, not |x − mean| (relative errors of
        # 3e-2 at a mean/std of 100), and the colsum would not match the TF32-rounded weight.
        raise ValueError("linear(norm=...) with allow_tf32=True: the normalising epilogue needs the exact product "
                         "of the raw rows; use IEEE fp32 (allow_tf32=False) or 16-bit inputs")
    if norm_colsum is None:
        raise ValueError("linear(norm=...) needs colsum: the fp32 row sums weight.double().sum(1) of the weight "
                         "as stored (see column_sums)")
    if not isinstance(norm_width, (int, torch.SymInt)) or isinstance(norm_width, bool) or not norm_width >= 1:
        raise ValueError(f"norm width must be a positive int (columns per statistics slot), got {norm_width!r}")
    norm_width = int(norm_width)   # a kernel constexpr
    t = -(-K // norm_width)
    check_tensor(norm_partials, "norm.partials", ndim=x.dim() + 1, shape=tuple(x.shape[:-1]) + (t, 2),
                 dtypes=None, dtype=torch.float32)
    check_tensor(norm_colsum, "colsum", ndim=1, shape=(N,), dtypes=None, dtype=torch.float32)
    if not isinstance(norm_eps, (int, float)) or not norm_eps >= 0:
        raise ValueError(f"eps must be a non-negative float, got {norm_eps!r}")
    check_same_device(x=x, norm_partials=norm_partials, colsum=norm_colsum)
    return norm_width


def _check_linear_args(x, weight, bias, residual, activation, out_dtype):
    """Validate; return (out_shape, out_dtype)."""
    check_tensor(x, "x", min_ndim=1)
    check_tensor(weight, "weight", ndim=2, dtype=x.dtype)
    N, K = weight.shape
    if K == 0 or N == 0:
        raise ValueError(f"weight must have non-zero shape (out_features, in_features), got {tuple(weight.shape)}")
    if x.shape[-1] != K:
        raise ValueError(f"x's last dim ({x.shape[-1]}) must equal weight's in_features ({K}); "
                         f"got x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    out_shape = tuple(x.shape[:-1]) + (N,)
    if bias is not None:
        check_tensor(bias, "bias", ndim=1, shape=(N,))
    if residual is not None:
        check_tensor(residual, "residual", shape=out_shape, ndim=len(out_shape))
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be one of float16, bfloat16, float32 or None, got {out_dtype}")
    check_same_device(x=x, weight=weight, bias=bias, residual=residual)
    return out_shape, out_dtype


def _prepare_call(x, weight, bias, residual, activation, out_dtype, allow_tf32, norm_partials, norm_width,
                  norm_colsum, norm_eps):
    out_shape, out_dtype = _check_linear_args(x, weight, bias, residual, activation, out_dtype)
    norm_width = _check_norm_args(x, weight, norm_partials, norm_width, norm_colsum, norm_eps, allow_tf32)
    norm = None
    if norm_partials is not None:
        norm = RowStats(norm_partials.view(-1, norm_partials.shape[-2], 2), norm_width)
    return out_shape, out_dtype, norm


def _stats_shape(out_shape) -> tuple:
    return tuple(out_shape[:-1]) + (-(-out_shape[-1] // STAT_W), 2)


def _linear_call(x, weight, bias, residual, activation, out_dtype, allow_tf32, norm_partials, norm_width,
                 norm_colsum, norm_eps, with_stats: bool):
    """Validate, allocate, launch: (y, partial statistics of y or None)."""
    out_shape, out_dtype, norm = _prepare_call(x, weight, bias, residual, activation, out_dtype, allow_tf32,
                                               norm_partials, norm_width, norm_colsum, norm_eps)
    y = torch.empty(out_shape, dtype=out_dtype, device=x.device)
    stats = torch.empty(_stats_shape(out_shape), dtype=torch.float32, device=x.device) if with_stats else None
    K, N = weight.shape[1], weight.shape[0]
    _linear_launch(x.view(-1, K), weight, bias, None if residual is None else residual.view(-1, N),
                   y.view(-1, N), activation, allow_tf32, norm, norm_colsum, norm_eps,
                   None if stats is None else stats.view(-1, stats.shape[-2], 2))
    return y, stats


# The two registered ops differ only in their outputs (their schemas are inferred from these signatures).
def _linear_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
               residual: Optional[torch.Tensor], activation: Optional[str], out_dtype: Optional[torch.dtype],
               allow_tf32: bool, norm_partials: Optional[torch.Tensor] = None, norm_width: int = 0,
               norm_colsum: Optional[torch.Tensor] = None, norm_eps: float = 0.0) -> torch.Tensor:
    return _linear_call(x, weight, bias, residual, activation, out_dtype, allow_tf32, norm_partials, norm_width,
                        norm_colsum, norm_eps, with_stats=False)[0]


def _linear_stats_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     residual: Optional[torch.Tensor], activation: Optional[str], out_dtype: Optional[torch.dtype],
                     allow_tf32: bool, norm_partials: Optional[torch.Tensor] = None, norm_width: int = 0,
                     norm_colsum: Optional[torch.Tensor] = None,
                     norm_eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    return _linear_call(x, weight, bias, residual, activation, out_dtype, allow_tf32, norm_partials, norm_width,
                        norm_colsum, norm_eps, with_stats=True)


_linear_registered = register_op("linear", _linear_op)
_linear_stats_registered = register_op("linear_stats", _linear_stats_op)


def column_sums(weight: torch.Tensor) -> torch.Tensor:
    """Σ_k weight[n, k] in float64, returned as fp32 (N,): the `colsum` a normalising `linear` needs. Compute it from
    the weight exactly as the GEMM reads it (after any cast), once per weight, not per call."""
    return weight.detach().double().sum(dim=1).float().contiguous()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           residual: Optional[torch.Tensor] = None, activation: Optional[str] = None,
           out_dtype: Optional[torch.dtype] = None, allow_tf32: bool = False,
           norm: Optional[RowStats] = None, colsum: Optional[torch.Tensor] = None, eps: float = 1e-6,
           return_stats: bool = False, out: Optional[torch.Tensor] = None):
    """``y = act(x @ weight.T + bias) + residual`` in one kernel, fp32 accumulation; optionally LayerNorm'd input
    and output statistics for the next one.

    Args:
        x: (..., K) float16/bfloat16/float32, contiguous, CUDA (CPU only under ``TRITON_INTERPRET=1``).
            Leading dims flatten to M rows; M = 0 gives an empty result without a launch.
        weight: (N, K), same dtype and device as x, contiguous (nn.Linear layout). N, K >= 1.
        bias: optional (N,), any float dtype (added in fp32).
        residual: optional (..., N) with x's leading dims, any float dtype, contiguous; added after the activation.
        activation: None or ``"gelu"`` (exact erf GELU).
        out_dtype: result dtype (default x.dtype).
        allow_tf32: fp32 operands use TF32 tensor cores (faster, ~1e-3 relative error) instead of IEEE fp32.
        norm: RowStats of x (from `row_stats(x)` or a previous ``linear(..., return_stats=True)`` that produced x):
            computes ``act(LN(x) @ weight.T + bias) + residual`` with LN = LayerNorm without affine (fold the affine
            into weight/bias). The main loop multiplies the raw x; the epilogue applies
            ``rstd·(acc − mean·colsum)``, so no normalised copy of x is written or read.
        colsum: with `norm`, ``column_sums(weight)`` (fp32 (N,)), computed once per weight.
        eps: with `norm`, the LayerNorm epsilon.
        return_stats: also return RowStats of y as stored (slots of 32 columns), for the next normalising GEMM.
        out: optional preallocated result (..., N) of dtype ``out_dtype or x.dtype``, not sharing memory with any
            input. Bypasses the registered op (eager only); used by tests to poison the output.

    Returns:
        y, shape (..., N); with ``return_stats`` a tuple (y, RowStats((..., ceil(N / 32), 2) fp32, 32)).
        Registered as ``torch.ops.ttf.linear(x, weight, bias, residual, activation, out_dtype, allow_tf32,
        norm_partials, norm_width, norm_colsum, norm_eps)``, and ``torch.ops.ttf.linear_stats(...)`` (same
        arguments, returns (y, partials)).

    On CUDA the kernel autotunes on the first call for each (M, N, K): warm up before CUDA-graph capture.
    """
    if norm is not None and not isinstance(norm, RowStats):
        raise TypeError(f"norm must be a RowStats (from row_stats or linear(..., return_stats=True)), got "
                        f"{type(norm).__name__}")
    n_args = (norm.partials, int(norm.width), colsum, float(eps)) if norm is not None else (None, 0, colsum, 0.0)
    if out is None:
        if return_stats:
            y, stats = _linear_stats_registered(x, weight, bias, residual, activation, out_dtype, bool(allow_tf32),
                                                *n_args)
            return y, RowStats(stats, STAT_W)
        return _linear_registered(x, weight, bias, residual, activation, out_dtype, bool(allow_tf32), *n_args)
    if return_stats:
        raise ValueError("out= and return_stats=True cannot be combined")
    out_shape, out_dtype, nrm = _prepare_call(x, weight, bias, residual, activation, out_dtype, bool(allow_tf32),
                                              *n_args)
    check_out(out, "out", out_shape, out_dtype, x.device,
              {"x": x, "weight": weight, "bias": bias, "residual": residual})
    K, N = weight.shape[1], weight.shape[0]
    _linear_launch(x.view(-1, K), weight, bias, None if residual is None else residual.view(-1, N),
                   out.view(-1, N), activation, bool(allow_tf32), nrm, colsum, n_args[3])
    return out


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
               residual: Optional[torch.Tensor] = None, activation: Optional[str] = None,
               out_dtype: Optional[torch.dtype] = None, upcast: bool = False, normalize_input: bool = False,
               eps: float = 1e-6) -> torch.Tensor:
    """Reference in plain PyTorch, op by op (each op rounds to the working dtype, as an unfused model would).
    normalize_input=True applies LayerNorm without affine (`eps`) to x first: the reference of ``linear(norm=...)``.

    upcast=True computes everything in float64 and returns float64 (the oracle); otherwise it works in x.dtype
    and casts the result to ``out_dtype``.
    """
    dt = torch.float64 if upcast else x.dtype
    if normalize_input:  # the unfused chain: LayerNorm (without affine), rounded to x's dtype, then the GEMM
        x = torch.nn.functional.layer_norm(x.to(dt), (x.shape[-1],), eps=eps)
    y = torch.nn.functional.linear(x.to(dt), weight.to(dt), None if bias is None else bias.to(dt))
    if activation == "gelu":
        y = torch.nn.functional.gelu(y)
    elif activation is not None:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    if residual is not None:
        y = y + residual.to(dt)
    return y if upcast else y.to(out_dtype or x.dtype)
