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

Tile choice by shape (config_order): the tile lists are pruned per (M, N). A tile whose BLOCK_N pads N by more than
MAX_N_PADDING = 10 % is dropped, and so is any tile wider than 128 columns when N <= NARROW_N = 768: N = 384 at M > 512
runs 128×128 tiles (3 column tiles, exact), not 128×256 (512 columns computed for 384: 1.33× the work, and half the
programs). The first remaining config is the one TTF_TRITON_AUTOTUNE=0 runs. The autotune key is (M bucket, N, K,
epilogue variant): the bucket next_power_of_2(⌈M/128⌉) tunes batch 1 and batch 256 of one (N, K) separately without
retuning every M.

Split-K, for grids that cannot fill the GPU. At batch 1-8 (M = 197·B) proj (N = 384, K = 768) and fc2 (N = 384,
K = 3072) have 12-39 output tiles for 132 SMs, each with up to 48 serial K steps. The K loop is then cut into S ranges
of whole BLOCK_K steps (P = ⌈⌈K/BLOCK_K⌉/S⌉ steps each):
    kernel 1, grid (tiles, S):   W_s[m, n] = Σ_{k ∈ range s} x[m, k]·W[n, k]      fp32 workspace (S, M, N), plain stores
    kernel 2, grid (tiles'):      acc = ((W_0 + W_1) + W_2) + ... + W_{S−1}         fixed order, then the epilogue
The epilogue (LayerNorm correction, bias, GELU, residual, rounding, output statistics) is the same @triton.jit
function the single-pass kernel runs, on the summed accumulator; no atomics, so repeats are bitwise equal.
    Choice (split_k_for), with the reference tile (BLOCK_M, BLOCK_N, BLOCK_K) = the first config for (M, N) (fp32: the
    fp32 meta), tiles = ⌈M/BLOCK_M⌉·⌈N/BLOCK_N⌉, steps = ⌈K/BLOCK_K⌉ and the device's SM count (132 under the
    interpreter):   S = min(⌊SMs/tiles⌋, ⌊steps/4⌋, 16), evened out to ⌈steps/⌈steps/S⌉⌉, and 1 when below 2.
    At most one wave of programs, at least 4 steps per range (a pipeline of 3-4 stages), so a grid of more than
    SMs/2 tiles is never split. S18x2 on 132 SMs: proj 3 ranges at batch 1-8; fc2 10 / 6 / 6 / 3 at batch 1 / 2 / 4 /
    8; qkv and fc1 (K = 384: 6 steps) never; nothing at batch 64.
    Cost: the partials are written once and read once, 2·S·M·N·4 extra bytes (fc2 at batch 1, S = 10: 6.1 MB, mostly
    through L2, next to 3.6 MB of x and W), and a second launch. TTF_LINEAR_SPLIT_K=S (or linear(..., _split_k=S))
    forces S; S = 1 forces the single pass.

Programmatic dependent launch (TTF_TRITON_PDL=1 on sm_90+, see _common): the kernels do their index math (and, in
eager launches, an L2 prefetch of their first W tile, which no predecessor writes) before gdc_wait(), which precedes
every read of x, the residual, the statistics or the split-K partials, and call gdc_launch_dependents() after the main
loop.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from ._common import (FLOAT_DTYPES, RowStats, autotune_enabled, autotuned, cached_check, check_out,
                      check_same_device, check_tensor, device_guard, env_value, gdc_launch_dependents, gdc_wait,
                      interpreter_active, launch_choice, next_power_of_2, pdl_enabled, pdl_launch_kwargs,
                      register_op, skip_launch, wrap_triton)
from ._row_stats import check_row_stats, merge_row_stats, stats_meta

__all__ = ["linear", "linear_ref", "column_sums", "ACTIVATIONS", "STAT_W"]

#: Output columns per statistics slot of ``linear(..., return_stats=True)``; divides every config's BLOCK_N.
STAT_W = 32

#: Supported epilogue activations (the ``activation`` string) -> kernel constexpr code.
ACTIVATIONS = {None: 0, "gelu": 1}


# ---------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program_id(0) in grouped order: consecutive programs walk GROUP_M row-tiles down one
    column of tiles, so the W tile (BLOCK_N × K) they share is read from L2 rather than HBM."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _prefetch_w_l2(w_ptr, offs_n, N, k_lo, stride_wn):
    """Hint: pull the first W tile's rows (BLOCK_K elements from column k_lo, one 128-byte line at BLOCK_K = 64 in
    16 bits) into L2 while the kernel waits for its predecessor. W is never written by a predecessor kernel, and a
    prefetch has no architectural effect, so it may precede gdc_wait(). Rows past N are clamped to N − 1.
    Eager launches only (_prefetch_allowed): torch.compile's mutation analysis cannot see through a non-pure inline
    asm and would then treat every input of the kernel as written (and copy it)."""
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [w_ptr + rows * stride_wn + k_lo],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _mainloop(x_ptr, w_ptr, offs_m, offs_n, mask_m, mask_n, k_lo, k_hi, K, stride_xm, stride_wn,
              INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc[m, n] = Σ_{k_lo <= k < k_hi} x[m, k]·W[n, k] in fp32, (BLOCK_M, BLOCK_N); k_lo a multiple of BLOCK_K,
    k_hi = K or a multiple of BLOCK_K (only the step that reaches K needs the K mask, taken against K)."""
    offs_k = tl.arange(0, BLOCK_K)
    # int64 row offsets: M·K exceeds 2³¹ elements at large batch (e.g. 4096 images × 577 tokens × 3072).
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + (k_lo + offs_k)[None, :]
    w_ptrs = w_ptr + offs_n.to(tl.int64)[None, :] * stride_wn + (k_lo + offs_k)[:, None]  # (BLOCK_K, BLOCK_N) of Wᵀ
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k_mask = offs_k < K - k0
        a = tl.load(x_ptrs, mask=mask_m[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=k_mask[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    return acc


@triton.jit
def _tile_product(x_ptr, w_ptr, pid_m, pid_n, M, N, K, k_lo, k_hi, stride_xm, stride_wn,
                  INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr, PREFETCH_W: tl.constexpr):
    """The (pid_m, pid_n) output tile's product over K range [k_lo, k_hi), with the programmatic-dependent-launch
    protocol around it: (acc, offs_m, offs_n, mask_m, mask_n). Shared by the single-pass and split-K kernels."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    if USE_PDL:
        # Everything above overlaps the predecessor's tail; x, the residual and the statistics may be its outputs.
        if PREFETCH_W:
            _prefetch_w_l2(w_ptr, offs_n, N, tl.minimum(k_lo, K - 1), stride_wn)
        gdc_wait()
    acc = _mainloop(x_ptr, w_ptr, offs_m, offs_n, mask_m, mask_n, k_lo, k_hi, K, stride_xm, stride_wn,
                    INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    if USE_PDL:
        gdc_launch_dependents()  # a hint: the dependent's own gdc_wait() still waits for this grid to finish
    return acc, offs_m, offs_n, mask_m, mask_n


@triton.jit
def _epilogue(acc, pid_n, offs_m, offs_n, mask_m, mask_n, N, K,
              b_ptr, r_ptr, y_ptr, s_ptr, c_ptr, so_ptr, stride_rm, stride_ym, eps,
              HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr, NORM_IN: tl.constexpr,
              W_IN: tl.constexpr, T_IN: tl.constexpr, T_IN_PAD: tl.constexpr, STATS_OUT: tl.constexpr,
              STAT_W: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Everything after the product, shared by the single-pass and the split-K reduction kernels so both round and
    report the same values: LayerNorm correction, bias, activation, residual in fp32, a single rounding on store,
    then the statistics of the stored values. acc is the (BLOCK_M, BLOCK_N) fp32 tile of x @ Wᵀ at column tile
    pid_n (columns offs_n = pid_n·BLOCK_N + [0, BLOCK_N))."""
    offs_m64 = offs_m.to(tl.int64)
    if NORM_IN:
        mean, rstd = merge_row_stats(s_ptr, offs_m64, mask_m, K, eps, W_IN, T_IN, T_IN_PAD)
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


# EPILOGUE and MBUCKET only key the autotuner (Triton's key holds the listed arguments and the dtypes, not the
# constexpr flags: without EPILOGUE the separate- and fused-norm variants of one shape would share whichever config was
# tuned first; MBUCKET separates batch 1 from batch 256 without retuning every M). Not specialised: one binary for
# all their values.
@triton.jit(do_not_specialize=["EPILOGUE", "MBUCKET"])
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
    MBUCKET,  # unused by the body: autotune key only (_m_bucket)
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
    USE_PDL: tl.constexpr,  # launched with programmatic dependent launch: wait before reading activations
    PREFETCH_W: tl.constexpr,  # with USE_PDL: L2 prefetch of the first W tile before the wait (_prefetch_w_l2)
):
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    acc, offs_m, offs_n, mask_m, mask_n = _tile_product(
        x_ptr, w_ptr, pid_m, pid_n, M, N, K, 0, K, stride_xm, stride_wn,
        INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, USE_PDL, PREFETCH_W)
    _epilogue(acc, pid_n, offs_m, offs_n, mask_m, mask_n, N, K, b_ptr, r_ptr, y_ptr, s_ptr, c_ptr, so_ptr,
              stride_rm, stride_ym, eps, HAS_BIAS, HAS_RESIDUAL, ACTIVATION, NORM_IN, W_IN, T_IN, T_IN_PAD,
              STATS_OUT, STAT_W, BLOCK_M, BLOCK_N)


# SPLIT_K is a runtime argument (one binary for every split count) listed in the autotune key.
@triton.jit(do_not_specialize=["MBUCKET", "SPLIT_K"])
def _linear_splitk_kernel(
    x_ptr,  # (M, K) activations, row stride stride_xm, unit inner stride
    w_ptr,  # (N, K) weight, row stride stride_wn, unit inner stride
    ws_ptr,  # (SPLIT_K, M, N) fp32 workspace: ws[s] = x[:, K_s] @ W[:, K_s]ᵀ, contiguous
    M, N, K,
    MBUCKET,  # unused by the body: autotune key only (_m_bucket)
    SPLIT_K,  # number of K ranges = grid axis 1
    stride_xm, stride_wn,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    USE_PDL: tl.constexpr,
    PREFETCH_W: tl.constexpr,
):
    """Split-K main loop: program (tile, s) multiplies K range s, [s·P·BLOCK_K, min((s+1)·P·BLOCK_K, K)) with
    P = ⌈⌈K/BLOCK_K⌉/SPLIT_K⌉ steps, and stores its fp32 partial tile with a plain store. A range past K (more
    splits than steps) stores zeros: every element of the workspace is written, so it needs no clearing."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_s = tl.program_id(1)
    steps = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K)
    k_lo = pid_s * steps * BLOCK_K
    k_hi = tl.minimum(k_lo + steps * BLOCK_K, K)
    acc, offs_m, offs_n, mask_m, mask_n = _tile_product(
        x_ptr, w_ptr, pid_m, pid_n, M, N, K, k_lo, k_hi, stride_xm, stride_wn,
        INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, USE_PDL, PREFETCH_W)
    # Row s·M + m of the (SPLIT_K·M, N) view: the offset's divisibility is N's, so stores vectorise when N allows.
    rows = pid_s.to(tl.int64) * M + offs_m
    tl.store(ws_ptr + rows[:, None] * N + offs_n[None, :], acc, mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _linear_reduce_kernel(
    ws_ptr,  # (SPLIT_K, M, N) fp32 partial products from _linear_splitk_kernel
    b_ptr, r_ptr, y_ptr, s_ptr, c_ptr, so_ptr,  # as in _linear_kernel
    M, N, K,
    stride_rm, stride_ym,
    eps,
    SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACTIVATION: tl.constexpr,
    NORM_IN: tl.constexpr,
    W_IN: tl.constexpr,
    T_IN: tl.constexpr,
    T_IN_PAD: tl.constexpr,
    STATS_OUT: tl.constexpr,
    STAT_W: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """acc = ((ws[0] + ws[1]) + ws[2]) + ... in this fixed order (bitwise reproducible), then the epilogue of
    _linear_kernel. SPLIT_K is a constexpr: the unrolled loop issues every split's load before the first add."""
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    mask = mask_m[:, None] & mask_n[None, :]
    rows = offs_m.to(tl.int64)
    if USE_PDL:
        gdc_wait()  # the partials are the predecessor's output
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _s in tl.static_range(SPLIT_K):
        acc = acc + tl.load(ws_ptr + rows[:, None] * N + offs_n[None, :], mask=mask, other=0.0)
        rows += M
    if USE_PDL:
        gdc_launch_dependents()
    _epilogue(acc, pid_n, offs_m, offs_n, mask_m, mask_n, N, K, b_ptr, r_ptr, y_ptr, s_ptr, c_ptr, so_ptr,
              stride_rm, stride_ym, eps, HAS_BIAS, HAS_RESIDUAL, ACTIVATION, NORM_IN, W_IN, T_IN, T_IN_PAD,
              STATS_OUT, STAT_W, BLOCK_M, BLOCK_N)


# ---------------------------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------------------------
# Two small, pre-pruned autotune lists chosen by M in the launcher (pruning in Python rather than through
# prune_configs_by keeps the kernel simple for torch.compile's user-kernel support). Large M (batched throughput):
# 128-row tiles, 8 warps, 3-4 stages of BLOCK_K = 64 (bf16: (128+256)·64·2 B = 48 KB per stage). Small M (batch 1-2,
# M ≈ 197-394): smaller tiles so more than a handful of the 132 SMs get work. Each list is then pruned by N
# (config_order): the order below is the preference where every tile fits N.
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
_CONFIG_LISTS = {"large": _CONFIGS_LARGE_M, "small": _CONFIGS_SMALL_M}
#: M at or below this uses the small-tile list (1-2 images at 224 px).
SMALL_M = 512
#: Outputs this narrow or narrower use no tile wider than 128 columns: a 256-wide tile leaves at most 3 column tiles,
#: half the programs of a 128-wide one at the same M (N = 384: 128x256 also computes 512 columns, 1.33x the work).
NARROW_N = 768
#: A tile whose BLOCK_N pads N by more than this fraction (⌈N/BLOCK_N⌉·BLOCK_N > (1 + f)·N) is dropped from the list.
MAX_N_PADDING = 0.10
#: Rows per step of the autotune key's M bucket (_m_bucket).
M_BUCKET_ROWS = 128

_KEY = ["MBUCKET", "N", "K", "EPILOGUE"]
_SPLIT_KEY = ["MBUCKET", "N", "K", "SPLIT_K"]
_linear_kernel_large = autotuned(_linear_kernel, _CONFIGS_LARGE_M, _KEY)
_linear_kernel_small = autotuned(_linear_kernel, _CONFIGS_SMALL_M, _KEY)


def _epilogue_key(has_bias: bool, has_residual: bool, activation: int, norm_in: bool, stats_out: bool,
                  tf32: bool) -> int:
    """One int per epilogue variant, for the autotune key (the variants differ in registers and shared memory,
    so each wants its own tile)."""
    return (int(has_bias) | int(has_residual) << 1 | int(activation) << 2 | int(norm_in) << 4 | int(stats_out) << 5
            | int(tf32) << 6)


def _m_bucket(M: int) -> int:
    """Autotune key of M: next_power_of_2(⌈M / 128⌉). S18x2 at 224 px (197 tokens): batch 1 -> 2, 2 -> 4, 4 -> 8,
    8 -> 16, 64 -> 128, 256 -> 512: a new tuning per doubling of the batch, not per M."""
    return next_power_of_2(triton.cdiv(int(M), M_BUCKET_ROWS))

#: fp32 operands (IEEE or tf32): one conservative config, (64·32 + 32·64)·4 B = 16 KB per stage. The bf16 tile
#: lists would need 2x the shared memory in fp32: 128x256x64 x 3 stages is 288 KB, over the 227 KB an H100 block
#: may use (found by the sm_90 compile check, tests/test_sm90_compile.py).
_FP32_META = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}

#: One small config under the interpreter: autotuning there re-runs the whole interpreted kernel per config.
#: 16 is the smallest tile tl.dot accepts.
_INTERPRETER_META = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}

#: The split-K reduction (memory bound, no tl.dot): small tiles so even M = 197 gives ~80 programs; BLOCK_N = 64
#: holds two statistics slots. Under the interpreter too (two slots per tile exercise the in-tile slot numbering).
_REDUCE_META = {"BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 2, "num_stages": 1}
_REDUCE_INTERPRETER_META = {"BLOCK_M": 16, "BLOCK_N": 64}

# ---------------------------------------------------------------------------------------------------------------
# Split-K choice
# ---------------------------------------------------------------------------------------------------------------
#: Environment override of the split count: a positive int forces it for every call (1: never split); unset, empty
#: or 0: automatic (split_k_for).
SPLIT_K_ENV = "TTF_LINEAR_SPLIT_K"
#: Most K ranges the automatic rule picks (the workspace grows with it: 2·SPLIT·M·N·4 bytes of traffic).
MAX_SPLIT_K = 16
#: Fewest BLOCK_K steps per K range the automatic rule accepts: below ~4 the 3-4-stage pipeline never fills and the
#: reduction's extra traffic and launch are not paid back.
MIN_K_STEPS_PER_SPLIT = 4
#: Streaming multiprocessors assumed off CUDA (the interpreter), an H100 SXM's count: the rule then picks what it
#: would pick on that GPU for the same shape.
INTERPRETER_SMS = 132


def split_k_for(M: int, N: int, K: int, block_m: int, block_n: int, block_k: int, num_sms: int) -> int:
    """Number of K ranges for an (M, N, K) GEMM tiled (block_m, block_n, block_k) on `num_sms` SMs; 1 = no split.

    tiles = ⌈M/block_m⌉·⌈N/block_n⌉ and steps = ⌈K/block_k⌉; the split fills at most one wave of programs, gives
    every range at least MIN_K_STEPS_PER_SPLIT steps and stays within MAX_SPLIT_K:
        s = min(⌊num_sms / tiles⌋, ⌊steps / MIN_K_STEPS_PER_SPLIT⌋, MAX_SPLIT_K)
    then evened out to the fewest ranges with the same steps per range, ⌈steps / ⌈steps / s⌉⌉ (no empty range), and
    1 when below 2. So a grid of more than num_sms / 2 tiles is never split: it already keeps each SM busy.
    """
    tiles = triton.cdiv(M, block_m) * triton.cdiv(N, block_n)
    steps = triton.cdiv(K, block_k)
    s = min(num_sms // max(tiles, 1), steps // MIN_K_STEPS_PER_SPLIT, MAX_SPLIT_K)
    if s < 2:
        return 1
    return triton.cdiv(steps, triton.cdiv(steps, s))


def _fits_n(config, N: int) -> bool:
    bn = config.kwargs["BLOCK_N"]
    if bn > 128 and N <= NARROW_N:
        return False
    return triton.cdiv(N, bn) * bn <= (1.0 + MAX_N_PADDING) * N


@functools.lru_cache(maxsize=256)
def config_order(M: int, N: int) -> tuple[str, tuple[int, ...]]:
    """(list name, indices of its configs to use, in order) for an (M, ·) x (·, N) GEMM: the "small" list for
    M <= SMALL_M, else "large"; without the tiles that overcompute N (_fits_n: BLOCK_N padding N by more than
    MAX_N_PADDING, or wider than 128 columns for N <= NARROW_N). If no tile fits (tiny N), all of them, least padded
    first. The first index is what TTF_TRITON_AUTOTUNE=0 runs and the split-K rule's reference tile."""
    kind = "small" if M <= SMALL_M else "large"
    configs = _CONFIG_LISTS[kind]
    keep = tuple(i for i, c in enumerate(configs) if _fits_n(c, N))
    if not keep:
        def padded(i):
            bn = configs[i].kwargs["BLOCK_N"]
            return triton.cdiv(N, bn) * bn
        keep = tuple(sorted(range(len(configs)), key=padded))
    return kind, keep


def _tile(config) -> tuple[int, int, int]:
    return config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"]


@functools.lru_cache(maxsize=1024)
def linear_plan(M: int, N: int, K: int, dtype: torch.dtype, num_sms: int) -> tuple[tuple[int, int, int], int]:
    """((BLOCK_M, BLOCK_N, BLOCK_K) of the reference tile, automatic split count) for a 16-bit or fp32 GEMM on a GPU
    with `num_sms` SMs. The reference tile is the first config of config_order(M, N) (fp32: _FP32_META, which is
    never tuned); a split launch tunes only the configs of that tile, so the split suits whichever one wins."""
    if dtype == torch.float32:
        tile = (_FP32_META["BLOCK_M"], _FP32_META["BLOCK_N"], _FP32_META["BLOCK_K"])
    else:
        kind, order = config_order(M, N)
        tile = _tile(_CONFIG_LISTS[kind][order[0]])
    return tile, split_k_for(M, N, K, *tile, num_sms)


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_sms(t: torch.Tensor) -> int:
    """SM count of t's GPU (cached per device); INTERPRETER_SMS under the interpreter or off CUDA."""
    if t.device.type != "cuda" or interpreter_active():
        return INTERPRETER_SMS
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    return _cuda_sm_count(index)


def _forced_split_k(split_k: int) -> int:
    """The split count a caller forces (argument first, then TTF_LINEAR_SPLIT_K); 0 = automatic."""
    if split_k:
        return int(split_k)
    env = env_value(SPLIT_K_ENV).strip()
    if not env:
        return 0
    try:
        value = int(env)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{SPLIT_K_ENV} must be a non-negative int (the forced number of K ranges; 0 or unset: "
                         f"automatic), got {env!r}")
    return value


@functools.lru_cache(maxsize=None)
def _tuner(split: bool, kind: str, order: tuple[int, ...]):
    """Autotuner of the single-pass (split=False) or split-K main kernel over the configs `order` of list `kind`;
    created once per distinct list (a handful: config_order has few outcomes)."""
    configs = _CONFIG_LISTS[kind]
    if not split and order == tuple(range(len(configs))):
        return _linear_kernel_small if kind == "small" else _linear_kernel_large
    chosen = [configs[i] for i in order]
    return autotuned(_linear_splitk_kernel if split else _linear_kernel, chosen, _SPLIT_KEY if split else _KEY)


def _prefetch_allowed(use_pdl: bool, kernel) -> bool:
    """PREFETCH_W: with PDL, and only when `kernel` launches directly (eager: wrap_triton returns it unchanged), not
    while torch.compile traces it (see _prefetch_w_l2)."""
    return use_pdl and wrap_triton(kernel) is kernel


def _alloc_workspace(split: int, M: int, N: int, device: torch.device) -> torch.Tensor:
    """The (split, M, N) fp32 partials of a split-K launch: allocated per call, never cleared (every element is
    written), so a call needs no host sync and can be captured in a CUDA graph."""
    return torch.empty((split, M, N), dtype=torch.float32, device=device)


class _LaunchPlan(NamedTuple):
    """What a launch needs besides its tensors, computed once per (shapes, dtype, epilogue, switches)."""
    split: int           # 1: single pass; > 1: split-K main kernel + reduction
    kernel: object       # plain kernel or autotuner (single pass, or the split-K main kernel)
    grid: object         # grid of `kernel` (a function of its meta-parameters)
    kwargs: dict         # constexprs and launch options of `kernel` (PREFETCH_W assumes an eager launch)
    reduce_grid: object  # split-K: grid and keyword arguments of the reduction
    reduce_kwargs: dict
    use_pdl: bool
    mbucket: int         # autotune key arguments (see _m_bucket, _epilogue_key)
    epilogue_key: int


@functools.lru_cache(maxsize=1024)
def _launch_plan(M: int, N: int, K: int, dtype: torch.dtype, num_sms: int, forced_split: int, has_bias: bool,
                 has_residual: bool, activation: int, norm_width: int, stats_out: bool, precision: str,
                 use_pdl: bool, interpreted: bool, autotune: bool) -> _LaunchPlan:
    # `interpreted` and `autotune` are part of the cache key only: launch_choice reads the same switches.
    fp32 = dtype == torch.float32
    split = forced_split or linear_plan(M, N, K, dtype, num_sms)[1]
    kind, order = config_order(M, N)
    epilogue = dict(
        HAS_BIAS=has_bias,
        HAS_RESIDUAL=has_residual,
        ACTIVATION=activation,
        NORM_IN=norm_width > 0,
        **stats_meta(norm_width, K),   # W_IN, T_IN, T_IN_PAD of the input statistics
        STATS_OUT=stats_out,
        STAT_W=STAT_W,
    )

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    pdl = pdl_launch_kwargs(use_pdl)
    mbucket = _m_bucket(M)
    epilogue_key = _epilogue_key(has_bias, has_residual, activation, norm_width > 0, stats_out, precision == "tf32")
    if split == 1:
        kernel, meta = launch_choice(_linear_kernel, _tuner(False, kind, order), interpreter_meta=_INTERPRETER_META,
                                     fp32_meta=_FP32_META, fp32=fp32)
        kwargs = dict(INPUT_PRECISION=precision, USE_PDL=use_pdl, PREFETCH_W=use_pdl, **epilogue, **meta, **pdl)
        return _LaunchPlan(1, kernel, grid, kwargs, None, None, use_pdl, mbucket, epilogue_key)

    # Split-K: tune only the configs of the reference tile the split was chosen for.
    ref = _tile(_CONFIG_LISTS[kind][order[0]])
    same_tile = tuple(i for i in order if _tile(_CONFIG_LISTS[kind][i])[:2] == ref[:2])
    kernel, meta = launch_choice(_linear_splitk_kernel, _tuner(True, kind, same_tile),
                                 interpreter_meta=_INTERPRETER_META, fp32_meta=_FP32_META, fp32=fp32)

    def split_grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), split)

    kwargs = dict(INPUT_PRECISION=precision, USE_PDL=use_pdl, PREFETCH_W=use_pdl, **meta, **pdl)
    reduce_meta = _REDUCE_INTERPRETER_META if interpreted else _REDUCE_META
    reduce_kwargs = dict(SPLIT_K=split, USE_PDL=use_pdl, **epilogue, **reduce_meta, **pdl)
    return _LaunchPlan(split, kernel, split_grid, kwargs, grid, reduce_kwargs, use_pdl, mbucket, epilogue_key)


def _linear_launch(x2: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   residual2: Optional[torch.Tensor], y2: torch.Tensor, activation: Optional[str],
                   allow_tf32: bool, norm: Optional[RowStats] = None, colsum: Optional[torch.Tensor] = None,
                   eps: float = 0.0, stats_out: Optional[torch.Tensor] = None, split_k: int = 0) -> None:
    """Launch on validated 2-D operands: x2 (M, K), weight (N, K), residual2 (M, N) or None, y2 (M, N); norm with
    partials viewed as (M, T_IN, 2); stats_out (M, cdiv(N, STAT_W), 2) or None; split_k > 0 forces the number of K
    ranges (1: single pass), 0 leaves it to TTF_LINEAR_SPLIT_K or the automatic rule (linear_plan)."""
    M, K = x2.shape
    N = weight.shape[0]
    if M == 0 or skip_launch(x2):
        return
    # The host-side choices take concrete sizes (under torch.compile with dynamic shapes this specialises M).
    M, N, K = int(M), int(N), int(K)
    precision = "tf32" if (allow_tf32 and x2.dtype == torch.float32) else "ieee"
    plan = _launch_plan(M, N, K, x2.dtype, _num_sms(x2), _forced_split_k(split_k), bias is not None,
                        residual2 is not None, ACTIVATIONS[activation], norm.width if norm is not None else 0,
                        stats_out is not None, precision,
                        pdl_enabled(x2), interpreter_active(), autotune_enabled())
    # Unused pointer slots get a real, read-only tensor (never dereferenced: the constexpr flag removes the load).
    b_arg = bias if bias is not None else weight
    r_arg = residual2 if residual2 is not None else x2
    stride_rm = residual2.stride(0) if residual2 is not None else 0
    s_arg = norm.partials if norm is not None else x2
    c_arg = colsum if colsum is not None else x2
    so_arg = stats_out if stats_out is not None else x2
    launcher = wrap_triton(plan.kernel)
    kwargs = plan.kwargs
    if plan.use_pdl and not _prefetch_allowed(True, plan.kernel):
        kwargs = {**kwargs, "PREFETCH_W": False}   # traced by torch.compile: no prefetch (see _prefetch_w_l2)
    with device_guard(x2):
        if plan.split == 1:
            launcher[plan.grid](
                x2, weight, b_arg, r_arg, y2, s_arg, c_arg, so_arg,
                M, N, K, plan.epilogue_key, plan.mbucket,
                x2.stride(0), weight.stride(0), stride_rm, y2.stride(0),
                float(eps),
                **kwargs,
            )
            return
        ws = _alloc_workspace(plan.split, M, N, x2.device)
        launcher[plan.grid](x2, weight, ws, M, N, K, plan.mbucket, plan.split, x2.stride(0), weight.stride(0),
                            **kwargs)
        wrap_triton(_linear_reduce_kernel)[plan.reduce_grid](
            ws, b_arg, r_arg, y2, s_arg, c_arg, so_arg,
            M, N, K,
            stride_rm, y2.stride(0),
            float(eps),
            **plan.reduce_kwargs,
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
    norm_width = check_row_stats(norm_partials, norm_width, tuple(x.shape[:-1]), K, norm_eps, x)
    check_tensor(norm_colsum, "colsum", ndim=1, shape=(N,), dtypes=None, dtype=torch.float32)
    check_same_device(x=x, colsum=norm_colsum)
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


@cached_check
def _check_call(x, weight, bias, residual, activation, out_dtype, allow_tf32, norm_partials, norm_width,
                norm_colsum, norm_eps):
    """Every check of a `linear` call, memoised as one: (out_shape, out_dtype, norm slot width)."""
    out_shape, out_dtype = _check_linear_args(x, weight, bias, residual, activation, out_dtype)
    norm_width = _check_norm_args(x, weight, norm_partials, norm_width, norm_colsum, norm_eps, allow_tf32)
    return out_shape, out_dtype, norm_width


def _prepare_call(x, weight, bias, residual, activation, out_dtype, allow_tf32, norm_partials, norm_width,
                  norm_colsum, norm_eps):
    out_shape, out_dtype, norm_width = _check_call(x, weight, bias, residual, activation, out_dtype, allow_tf32,
                                                   norm_partials, norm_width, norm_colsum, norm_eps)
    norm = None
    if norm_partials is not None:
        norm = RowStats(norm_partials.view(-1, norm_partials.shape[-2], 2), norm_width)
    return out_shape, out_dtype, norm


def _stats_shape(out_shape) -> tuple:
    return tuple(out_shape[:-1]) + (-(-out_shape[-1] // STAT_W), 2)


def _linear_call(x, weight, bias, residual, activation, out_dtype, allow_tf32, norm_partials, norm_width,
                 norm_colsum, norm_eps, with_stats: bool, split_k: int = 0):
    """Validate, allocate, launch: (y, partial statistics of y or None)."""
    out_shape, out_dtype, norm = _prepare_call(x, weight, bias, residual, activation, out_dtype, allow_tf32,
                                               norm_partials, norm_width, norm_colsum, norm_eps)
    y = torch.empty(out_shape, dtype=out_dtype, device=x.device)
    stats = torch.empty(_stats_shape(out_shape), dtype=torch.float32, device=x.device) if with_stats else None
    K, N = weight.shape[1], weight.shape[0]
    _linear_launch(x.view(-1, K), weight, bias, None if residual is None else residual.view(-1, N),
                   y.view(-1, N), activation, allow_tf32, norm, norm_colsum, norm_eps,
                   None if stats is None else stats.view(-1, stats.shape[-2], 2), split_k)
    return y, stats


# The two registered ops differ only in their outputs (their schemas are inferred from these signatures).
def _linear_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
               residual: Optional[torch.Tensor], activation: Optional[str], out_dtype: Optional[torch.dtype],
               allow_tf32: bool, norm_partials: Optional[torch.Tensor] = None, norm_width: int = 0,
               norm_colsum: Optional[torch.Tensor] = None, norm_eps: float = 0.0,
               split_k: int = 0) -> torch.Tensor:
    return _linear_call(x, weight, bias, residual, activation, out_dtype, allow_tf32, norm_partials, norm_width,
                        norm_colsum, norm_eps, with_stats=False, split_k=split_k)[0]


def _linear_stats_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     residual: Optional[torch.Tensor], activation: Optional[str], out_dtype: Optional[torch.dtype],
                     allow_tf32: bool, norm_partials: Optional[torch.Tensor] = None, norm_width: int = 0,
                     norm_colsum: Optional[torch.Tensor] = None, norm_eps: float = 0.0,
                     split_k: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return _linear_call(x, weight, bias, residual, activation, out_dtype, allow_tf32, norm_partials, norm_width,
                        norm_colsum, norm_eps, with_stats=True, split_k=split_k)


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
           return_stats: bool = False, out: Optional[torch.Tensor] = None, _split_k: Optional[int] = None):
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
        _split_k: private: force the number of K ranges of the split-K path (1: single pass); None leaves it to
            TTF_LINEAR_SPLIT_K or the automatic rule (module docstring). For tests and measurements.

    Returns:
        y, shape (..., N); with ``return_stats`` a tuple (y, RowStats((..., ceil(N / 32), 2) fp32, 32)).
        Registered as ``torch.ops.ttf.linear(x, weight, bias, residual, activation, out_dtype, allow_tf32,
        norm_partials, norm_width, norm_colsum, norm_eps, split_k=0)``, and ``torch.ops.ttf.linear_stats(...)`` (same
        arguments, returns (y, partials)).

    On CUDA the kernel autotunes on the first call for each (M bucket, N, K, epilogue, split count): warm up before
    CUDA-graph capture.
    """
    if _split_k is not None and (not isinstance(_split_k, int) or isinstance(_split_k, bool) or _split_k < 1):
        raise ValueError(f"_split_k must be None (automatic) or a positive int (the number of K ranges), "
                         f"got {_split_k!r}")
    split_k = int(_split_k or 0)
    if norm is not None and not isinstance(norm, RowStats):
        raise TypeError(f"norm must be a RowStats (from row_stats or linear(..., return_stats=True)), got "
                        f"{type(norm).__name__}")
    n_args = (norm.partials, int(norm.width), colsum, float(eps)) if norm is not None else (None, 0, colsum, 0.0)
    if out is None:
        if return_stats:
            y, stats = _linear_stats_registered(x, weight, bias, residual, activation, out_dtype, bool(allow_tf32),
                                                *n_args, split_k)
            return y, RowStats(stats, STAT_W)
        return _linear_registered(x, weight, bias, residual, activation, out_dtype, bool(allow_tf32), *n_args,
                                  split_k)
    if return_stats:
        raise ValueError("out= and return_stats=True cannot be combined")
    out_shape, out_dtype, nrm = _prepare_call(x, weight, bias, residual, activation, out_dtype, bool(allow_tf32),
                                              *n_args)
    check_out(out, "out", out_shape, out_dtype, x.device,
              {"x": x, "weight": weight, "bias": bias, "residual": residual})
    K, N = weight.shape[1], weight.shape[0]
    _linear_launch(x.view(-1, K), weight, bias, None if residual is None else residual.view(-1, N),
                   out.view(-1, N), activation, bool(allow_tf32), nrm, colsum, n_args[3], split_k=split_k)
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
