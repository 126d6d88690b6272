r"""Multi-head self-attention over the packed qkv of all branches of a (parallel) ViT block.

Math, for every image b and head h (of H = K·heads_per_branch heads, head dim d), queries/keys/values read in
place from the packed projection (no permute, no copy):

    qkv (B, N, 3·H·d), columns [q of heads 0..H−1 | k of heads 0..H−1 | v of heads 0..H−1], d each
    S   = scale · Q_h K_hᵀ                      (N, N)   (d^-0.5 is usually folded into Wq: scale = 1)
    P   = softmax(S) row-wise                    fp32, online (flash-attention), exp2 with log2(e) folded in
    O_h = P V_h                                  (N, d) -> o[b, :, h·d:(h+1)·d]
    o   (B, N, H·d), heads in the same order, i.e. the inner-dim order of the folded out-projection.

Non-causal, no mask, no dropout (ViT inference). N is anything ≥ 1 (197, 577, 50, 1 ...): keys past N are masked
to −inf in the last key block only; queries past N are computed and not stored.

Cost: 4·B·H·N²·d FLOPs (QKᵀ and PV; padded d counts as computed: 80/96 run as 128), plus ~B·H·N² exp2.
Bytes (floor): read B·N·3·H·d, write B·N·H·d elements; S and P never leave the SM.
S18x2 at 224 px, batch 64, bf16 (H = 2·6 = 12 heads of 64, N = 197): 4·64·12·197²·64 = 7.6 GFLOP per block
(~10 µs at 800 TFLOP/s, but at N = 197 the kernel is latency/softmax bound, expect 25-40% of peak),
bytes 64·197·(2304 + 768)·2 B = 77 MB -> 26 µs at 3 TB/s: at N = 197 this op is memory bound, not compute bound.

Design: one program per (query block of BLOCK_M rows, b·H + h). Q tile stays in registers; the loop streams
BLOCK_N-row K and V tiles of the same head. head_dim d is padded to D_PAD = next_power_of_2(d) with masked loads
(tl.arange needs powers of two): 80 and 96 waste 37.5 % / 25 % of the dot work. The full key blocks run without
key masks; only the tail block pays for them.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (autotuned, check_out, check_tensor, device_guard, launch_choice, next_power_of_2, register_op,
                      skip_launch, wrap_triton)

__all__ = ["attention", "attention_ref", "SUPPORTED_HEAD_DIMS"]

#: head_dim values the kernel is built and tested for.
SUPPORTED_HEAD_DIMS = (32, 64, 80, 96, 128)

_LOG2E = 1.4426950408889634


@triton.jit
def _attention_block(
    acc, l_i, m_i,           # running (BLOCK_M, D_PAD) output, (BLOCK_M,) denominators and row maxima, fp32
    q,                        # (BLOCK_M, D_PAD) query tile
    k_base, v_base,           # pointers to row 0, column 0 of this head's K and V
    start_n, N, stride_n,     # first key of this block, sequence length, token stride
    qk_scale,                 # scale · log2(e)
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
    MASK_N: tl.constexpr,     # True only for the last, partial key block
    INPUT_PRECISION: tl.constexpr,
):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    kv_mask = (offs_d < HEAD_DIM)[None, :]  # folds away when HEAD_DIM == D_PAD
    if MASK_N:
        kv_mask = kv_mask & (offs_n < N)[:, None]
    kv_off = offs_n.to(tl.int64)[:, None] * stride_n + offs_d[None, :]
    k = tl.load(k_base + kv_off, mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale  # log2-domain scores, fp32
    if MASK_N:
        s = tl.where((offs_n < N)[None, :], s, float("-inf"))
    # Online softmax: every block has at least one valid key, so m_new is finite and alpha = 0 on the first block.
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(v_base + kv_off, mask=kv_mask, other=0.0)
    # P is rounded to V's dtype for the tensor-core dot (as flash-attention does); the sum l_i stays fp32.
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
    return acc, l_i, m_new


# WORK_BUCKET only keys the autotuner: no value specialisation (1, multiple of 16), which would compile the same code
# up to three times.
@triton.jit(do_not_specialize=["WORK_BUCKET"])
def _attention_kernel(
    # pointers
    qkv_ptr,  # (B, N, 3·H·HEAD_DIM) packed projections, unit inner stride
    o_ptr,    # (B, N, H·HEAD_DIM) output
    # sizes
    N, H,
    WORK_BUCKET,  # unused by the body: autotune key only (see _work_bucket)
    # strides
    stride_qkv_b, stride_qkv_n,
    stride_o_b, stride_o_n,
    # scalars
    qk_scale,  # scale · log2(e), so softmax uses exp2
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,  # next power of two >= HEAD_DIM
    INPUT_PRECISION: tl.constexpr,  # "ieee" for fp32 operands (fp16/bf16 ignore it)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # (batch, head) on grid axis 0 (up to 2^31 - 1 programs): axis 1 holds at most 65,535, which B18x2's 24 heads
    # would pass at batch 2,731. Query tiles (a handful) on axis 1.
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H

    qkv_b = qkv_ptr + b.to(tl.int64) * stride_qkv_b
    q_base = qkv_b + h * HEAD_DIM
    k_base = qkv_b + (H + h) * HEAD_DIM
    v_base = qkv_b + (2 * H + h) * HEAD_DIM

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    q_mask = (offs_m < N)[:, None] & (offs_d < HEAD_DIM)[None, :]
    q = tl.load(q_base + offs_m.to(tl.int64)[:, None] * stride_qkv_n + offs_d[None, :], mask=q_mask, other=0.0)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, D_PAD), dtype=tl.float32)

    n_full = (N // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _attention_block(acc, l_i, m_i, q, k_base, v_base, start_n, N, stride_qkv_n, qk_scale,
                                         HEAD_DIM, D_PAD, BLOCK_N, False, INPUT_PRECISION)
    if n_full < N:
        acc, l_i, m_i = _attention_block(acc, l_i, m_i, q, k_base, v_base, n_full, N, stride_qkv_n, qk_scale,
                                         HEAD_DIM, D_PAD, BLOCK_N, True, INPUT_PRECISION)

    out = acc / l_i[:, None]
    o_ptrs = (o_ptr + b.to(tl.int64) * stride_o_b + offs_m.to(tl.int64)[:, None] * stride_o_n
              + h * HEAD_DIM + offs_d[None, :])
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=q_mask)


# GPU configs (H100): BLOCK_M 128 with 8 warps is the usual sweet spot for d = 64; 64-row tiles halve the query
# padding waste at N = 197 / 50 and give more programs at small batch. Keyed on N, the head dim and the bucketed
# number of (image, head) pairs: at batch 1 an S18x2 layer has 24 of them, 48 programs of 128 rows for 132 SMs,
# where the smaller tiles should win; at batch 256, thousands, where the larger ones should.
def _config(bm, bn, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


_CONFIGS = [
    _config(128, 64, 8, 3),
    _config(128, 64, 4, 3),
    _config(128, 128, 8, 2),
    _config(64, 64, 4, 3),
    _config(64, 32, 4, 4),
]
_attention_kernel_tuned = autotuned(_attention_kernel, _CONFIGS, ["N", "HEAD_DIM", "WORK_BUCKET"])

#: Above this many (image, head) pairs every config fills the GPU many times over: one tuning covers them all.
_WORK_BUCKET_CAP = 2048


def _work_bucket(batch: int, heads: int) -> int:
    """B·H rounded up to a power of two (capped): the autotuner re-tunes per bucket, not per batch size."""
    return min(next_power_of_2(max(1, batch * heads)), _WORK_BUCKET_CAP)

#: fp32 operands (accuracy path, IEEE dots without tensor cores): one config that fits shared memory for every
#: head_dim, no autotuning (each fp32 variant takes 10-100 s to compile).
_FP32_META = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}

#: Under the interpreter one config; 16 is tl.dot's minimum, 32 keeps the number of interpreted programs low.
_INTERPRETER_META = {"BLOCK_M": 32, "BLOCK_N": 32}


def _attention_launch(qkv: torch.Tensor, o: torch.Tensor, num_heads: int, head_dim: int, scale: float) -> None:
    B, N, _ = qkv.shape
    if B == 0 or N == 0 or skip_launch(qkv):
        return
    precision = "ieee"  # fp32 inputs are the accuracy path; bf16/fp16 ignore it

    def grid(meta):
        return (B * num_heads, triton.cdiv(N, meta["BLOCK_M"]))

    kernel, meta = launch_choice(_attention_kernel, _attention_kernel_tuned, interpreter_meta=_INTERPRETER_META,
                                 fp32_meta=_FP32_META, fp32=qkv.dtype == torch.float32)
    with device_guard(qkv):
        wrap_triton(kernel)[grid](
            qkv, o,
            N, num_heads, _work_bucket(B, num_heads),
            qkv.stride(0), qkv.stride(1),
            o.stride(0), o.stride(1),
            scale * _LOG2E,
            HEAD_DIM=head_dim, D_PAD=next_power_of_2(head_dim), INPUT_PRECISION=precision,
            **meta,
        )


def _check_attention_args(qkv, num_heads, head_dim, scale):
    """Validate; return the output shape."""
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {head_dim!r}")
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float, got {scale!r}")
    check_tensor(qkv, "qkv", ndim=3, shape=(None, None, 3 * num_heads * head_dim))
    B, N, _ = qkv.shape
    return (B, N, num_heads * head_dim)


def _attention_op(qkv: torch.Tensor, num_heads: int, head_dim: int, scale: float) -> torch.Tensor:
    out_shape = _check_attention_args(qkv, num_heads, head_dim, scale)
    o = torch.empty(out_shape, dtype=qkv.dtype, device=qkv.device)
    _attention_launch(qkv, o, num_heads, head_dim, scale)
    return o


_attention_registered = register_op("attention", _attention_op)


def attention(qkv: torch.Tensor, num_heads: int, head_dim: int, scale: float = 1.0,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Non-causal multi-head attention read straight from a packed qkv projection.

    Args:
        qkv: (B, N, 3·num_heads·head_dim) float16/bfloat16/float32, contiguous, CUDA (CPU only under
            ``TRITON_INTERPRET=1``); columns [q heads | k heads | v heads], each head's head_dim contiguous.
            B = 0 or N = 0 gives an empty result without a launch.
        num_heads: total heads H (all branches: K·heads_per_branch).
        head_dim: one of 32, 64, 80, 96, 128.
        scale: multiplies QKᵀ; 1.0 when head_dim**-0.5 is already folded into the q projection.
        out: optional preallocated (B, N, num_heads·head_dim) result of qkv's dtype, not sharing memory with qkv.
            Bypasses the registered op (eager only); used by tests to poison the output.

    Returns:
        o (B, N, num_heads·head_dim), heads in qkv's order, dtype of qkv.
        Registered as ``torch.ops.ttf.attention(qkv, num_heads, head_dim, scale)``.

    On CUDA the kernel autotunes on the first call for each (N, head_dim, bucket of B·num_heads): warm up at the
    batch size you capture before CUDA-graph capture.
    """
    if out is None:
        return _attention_registered(qkv, num_heads, head_dim, float(scale))
    out_shape = _check_attention_args(qkv, num_heads, head_dim, scale)
    check_out(out, "out", out_shape, qkv.dtype, qkv.device, {"qkv": qkv})
    _attention_launch(qkv, out, num_heads, head_dim, float(scale))
    return out


def attention_ref(qkv: torch.Tensor, num_heads: int, head_dim: int, scale: float = 1.0,
                  upcast: bool = False) -> torch.Tensor:
    """Reference: explicit softmax(scale·QKᵀ)V per head in plain PyTorch.

    upcast=True computes in float64 and returns float64 (the oracle); otherwise in qkv.dtype.
    """
    B, N, _ = qkv.shape
    x = qkv.double() if upcast else qkv
    q, k, v = x.view(B, N, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d) each
    s = (q @ k.transpose(-2, -1)) * scale
    p = torch.softmax(s, dim=-1)
    o = p @ v  # (B, H, N, d)
    return o.transpose(1, 2).reshape(B, N, num_heads * head_dim)
