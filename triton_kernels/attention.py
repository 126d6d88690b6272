r"""Multi-head self-attention over the packed qkv of all branches of a (parallel) ViT block.

Math, for every image b and head h (of H = K·heads_per_branch heads, head dim d), queries/keys/values read in
place from the packed projection (no permute, no copy):

    qkv (B, N, 3·H·d), columns [q of heads 0..H−1 | k of heads 0..H−1 | v of heads 0..H−1], d each
    S   = scale · Q_h K_hᵀ                      (N, N)   (d^-0.5 is usually folded into Wq: scale = 1)
    P   = softmax(S) row-wise                    fp32, online (flash-attention), exp2 with log2(e) folded in
    O_h = P V_h                                  (N, d) -> o[b, :, h·d:(h+1)·d]
    o   (B, N, H·d), heads in the same order, i.e. the inner-dim order of the folded out-projection.

Non-causal, no mask, no dropout (ViT inference). N is anything ≥ 1 (197, 577, 50, 1 ...): keys past N are masked
to −inf (see "Key blocks" below); queries past N are computed and not stored.

Cost: 4·B·H·N²·d FLOPs (QKᵀ and PV; padded d counts as computed: 80/96 run as 128), plus ~B·H·N² exp2.
Bytes (floor): read B·N·3·H·d, write B·N·H·d elements; S and P never leave the SM.
S18x2 at 224 px, batch 64, bf16 (H = 2·6 = 12 heads of 64, N = 197): 4·64·12·197²·64 = 7.6 GFLOP per block
(~10 µs at 800 TFLOP/s, but at N = 197 the kernel is latency/softmax bound, expect 25-40% of peak),
bytes 64·197·(2304 + 768)·2 B = 77 MB -> 26 µs at 3 TB/s: at N = 197 this op is memory bound, not compute bound.

Design: one program per (query block of BLOCK_M rows, b·H + h). Q tile stays in registers; the loop streams
BLOCK_N-row K and V tiles of the same head. head_dim d is padded to D_PAD = next_power_of_2(d) with masked loads
(tl.arange needs powers of two): 80 and 96 waste 37.5 % / 25 % of the dot work.

Key blocks. Every program multiplies its BLOCK_M query rows (padded past N) with every key block it runs, and pays
the exp2 of every score it computes, padded or not: per head that is cdiv(N, BLOCK_M)·BLOCK_M × (keys computed)
against N² needed, the ratio `padded_work` returns. The keys are cut into N // BLOCK_N full blocks and a remainder
r = N mod BLOCK_N, run as one block of TAIL_N = min(BLOCK_N, max(16, next_power_of_2(r))) keys (`tail_block`, a
constexpr chosen at launch; 16 is tl.dot's smallest tile):

* TAIL_N = 0 (BLOCK_N divides N): one loop, no key mask.
* TAIL_N = BLOCK_N (r > BLOCK_N / 2, so a narrower block saves nothing): the tail is the last iteration of the one
  software-pipelined loop over cdiv(N, BLOCK_N) blocks. Its key mask is a bias row (0 or −inf) added to the scaled
  scores, fused with the scale multiply: in the sm_90 PTX a masked block runs two FP instructions per score (an FMA,
  then the subtract of the row max), as an unmasked one does (a multiply, then an FMA), plus one select per key
  column a thread holds.
* 16 ≤ TAIL_N ≤ BLOCK_N / 2: the loop runs over the full blocks without masks; the tail block, TAIL_N keys wide, is
  loaded together with Q before the loop (its load latency overlaps Q's and the loop's) and folded in after it.

N = 197 with 128×64 tiles: 256 query rows × (3·64 + 16) keys = 1.37× the needed work; a 64-key tail block would
give 256 × 256 = 1.69×. The launcher orders the tile configs by padded work (`attention_configs`); with
TTF_TRITON_AUTOTUNE=0 the first one runs.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (autotuned, cached_check, check_out, check_tensor, device_guard, gdc_launch_dependents,
                      gdc_wait, launch_choice, next_power_of_2, pdl_enabled, pdl_launch_kwargs, register_op,
                      skip_launch, wrap_triton)

__all__ = ["attention", "attention_ref", "attention_configs", "padded_work", "tail_block", "SUPPORTED_HEAD_DIMS"]

#: head_dim values the kernel is built and tested for.
SUPPORTED_HEAD_DIMS = (32, 64, 80, 96, 128)

_LOG2E = 1.4426950408889634

#: Narrowest key block: tl.dot needs every dimension >= 16.
_MIN_TAIL = 16


@triton.jit
def _kv_tile(base,                  # pointer to row 0, column 0 of this head's K or V
             start_n, N, stride_n,  # first key of the tile, sequence length, token stride
             HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK: tl.constexpr,
             MASK_N: tl.constexpr):  # rows past N read as zeros (only blocks that may reach past N)
    """(BLOCK, D_PAD) tile of K or V, keys start_n .. start_n + BLOCK − 1; zeros in the head_dim padding."""
    offs_n = start_n + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, D_PAD)
    mask = (offs_d < HEAD_DIM)[None, :]  # folds away when HEAD_DIM == D_PAD
    if MASK_N:
        mask = mask & (offs_n < N)[:, None]
    return tl.load(base + offs_n.to(tl.int64)[:, None] * stride_n + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _scores(q, k,                   # (BLOCK_M, D_PAD) query tile, (BLOCK, D_PAD) key tile
            start_n, N, qk_scale,   # first key of the tile, sequence length, scale · log2(e)
            BLOCK: tl.constexpr, MASK_N: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """(BLOCK_M, BLOCK) log2-domain scores s = qk_scale · q kᵀ in fp32; with MASK_N, −inf for keys ≥ N."""
    s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)
    if MASK_N:
        # A bias row instead of a select per score: s·scale + bias contracts to one FMA, and the exp2 argument
        # s − m one subtract, where the unmasked block has a multiply and an FMA. Masked keys were loaded as zeros,
        # so their dot is 0 and the FMA gives exactly −inf.
        offs_n = start_n + tl.arange(0, BLOCK)
        key_bias = tl.where(offs_n < N, 0.0, float("-inf"))
        s = s * qk_scale + key_bias[None, :]
    else:
        s = s * qk_scale
    return s


@triton.jit
def _softmax_update(acc, l_i, m_i,  # running (BLOCK_M, D_PAD) output, (BLOCK_M,) denominators and row maxima, fp32
                    s, v,           # (BLOCK_M, BLOCK) scores of one key block, (BLOCK, D_PAD) its values
                    INPUT_PRECISION: tl.constexpr):
    """One online-softmax step: fold a key block into (acc, l_i, m_i)."""
    # Every block has at least one key < N, so m_new is finite and alpha = 0 on the first block; exp2 of a
    # running-max-shifted score never overflows, whatever the logits' size.
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
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
    TAIL_N: tl.constexpr,  # tail_block(N, BLOCK_N): 0, BLOCK_N (tail inside the loop) or 16 .. BLOCK_N / 2
    USE_PDL: tl.constexpr,  # launched with programmatic dependent launch (see _common.pdl_enabled)
):
    # (batch, head) on grid axis 0 (up to 2^31 - 1 programs): axis 1 holds at most 65,535, which B18x2's 24 heads
    # would pass at batch 2,731. Query tiles (a handful) on axis 1.
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H

    # Index math first: with PDL it overlaps the tail of the kernel that writes qkv.
    qkv_b = qkv_ptr + b.to(tl.int64) * stride_qkv_b
    q_base = qkv_b + h * HEAD_DIM
    k_base = qkv_b + (H + h) * HEAD_DIM
    v_base = qkv_b + (2 * H + h) * HEAD_DIM

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    q_mask = (offs_m < N)[:, None] & (offs_d < HEAD_DIM)[None, :]
    q_ptrs = q_base + offs_m.to(tl.int64)[:, None] * stride_qkv_n + offs_d[None, :]

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, D_PAD), dtype=tl.float32)

    n_full = (N // BLOCK_N) * BLOCK_N
    if TAIL_N == BLOCK_N:
        n_loop = N  # the partial block is the loop's last iteration
    else:
        n_loop = n_full

    if USE_PDL:
        gdc_wait()  # qkv is written by the previous kernel: no load of it before this
    q = tl.load(q_ptrs, mask=q_mask, other=0.0)
    if TAIL_N != BLOCK_N:
        if TAIL_N != 0:
            # The narrow tail block, issued now so its latency overlaps Q's load and the loop, used after the loop.
            k_tail = _kv_tile(k_base, n_full, N, stride_qkv_n, HEAD_DIM, D_PAD, TAIL_N, True)
            v_tail = _kv_tile(v_base, n_full, N, stride_qkv_n, HEAD_DIM, D_PAD, TAIL_N, True)

    for start_n in range(0, n_loop, BLOCK_N):
        k = _kv_tile(k_base, start_n, N, stride_qkv_n, HEAD_DIM, D_PAD, BLOCK_N, TAIL_N == BLOCK_N)
        s = _scores(q, k, start_n, N, qk_scale, BLOCK_N, TAIL_N == BLOCK_N, INPUT_PRECISION)
        v = _kv_tile(v_base, start_n, N, stride_qkv_n, HEAD_DIM, D_PAD, BLOCK_N, TAIL_N == BLOCK_N)
        acc, l_i, m_i = _softmax_update(acc, l_i, m_i, s, v, INPUT_PRECISION)

    if TAIL_N != BLOCK_N:
        if TAIL_N != 0:
            s = _scores(q, k_tail, n_full, N, qk_scale, TAIL_N, True, INPUT_PRECISION)
            acc, l_i, m_i = _softmax_update(acc, l_i, m_i, s, v_tail, INPUT_PRECISION)
    if USE_PDL:
        gdc_launch_dependents()  # every qkv read is issued: the next kernel may start its prologue

    out = acc / l_i[:, None]
    o_ptrs = (o_ptr + b.to(tl.int64) * stride_o_b + offs_m.to(tl.int64)[:, None] * stride_o_n
              + h * HEAD_DIM + offs_d[None, :])
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=q_mask)


def tail_block(n: int, block_n: int) -> int:
    """Width TAIL_N of the key block after the n // block_n full ones: 0 when block_n divides n, else the smallest
    power of two >= max(16, n mod block_n), at most block_n (equal to it: the tail runs inside the key loop)."""
    if n < 1 or block_n < _MIN_TAIL or block_n & (block_n - 1):
        raise ValueError(f"tail_block needs n >= 1 and a power-of-two block_n >= {_MIN_TAIL}, got {n}, {block_n}")
    r = n % block_n
    if r == 0:
        return 0
    return min(block_n, max(_MIN_TAIL, next_power_of_2(r)))


def padded_work(n: int, block_m: int, block_n: int, tail_n: Optional[int] = None) -> float:
    """Computed / needed score-matrix work of one head at sequence length n: the factor by which padding inflates
    the MMA work (QKᵀ and PV) and the exp2 count of a tile config.

        computed = cdiv(n, block_m)·block_m  ×  ((n // block_n)·block_n + TAIL_N·[n mod block_n > 0])
        needed   = n²

    tail_n: width of the partial key block, default `tail_block(n, block_n)` (this kernel); block_n models a kernel
    that runs the partial block at full width. The head_dim padding (80, 96 -> 128) multiplies every config alike
    and is left out.
    """
    if tail_n is None:
        tail_n = tail_block(n, block_n)
    rows = triton.cdiv(n, block_m) * block_m
    keys = (n // block_n) * block_n + (tail_n if n % block_n else 0)
    return rows * keys / (n * n)


# GPU tiles (H100), (BLOCK_M, BLOCK_N, num_warps, num_stages) in order of preference where padded work and grid fill
# tie: BLOCK_M 128 with 8 warps (two warpgroups sharing each K/V tile) is the usual sweet spot for d = 64; 64-row
# tiles waste less on the query axis at some N (257: 320 rows instead of 384) and give twice the programs at small
# batch; 32-key blocks suit short sequences.
_TILES = (
    (128, 64, 8, 3),
    (128, 64, 4, 3),
    (128, 128, 8, 2),
    (64, 64, 4, 3),
    (64, 32, 4, 4),
)
#: Padded work within this factor of the least counts as equal: the order then follows grid fill and _TILES.
_PAD_TIE = 1.10
#: Tiles doing this factor more work than the least are not tuned at all (N = 50: 128-row tiles do 2x).
_PAD_PRUNE = 1.5
#: Streaming multiprocessors of an H100 SXM, for the grid-fill rule when the device is not a GPU.
_DEFAULT_SMS = 132


def _config(bm, bn, tail, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "TAIL_N": tail}, num_warps=warps, num_stages=stages)


@functools.lru_cache(maxsize=None)
def attention_configs(n: int, head_dim: int, work_bucket: int, num_sms: int = _DEFAULT_SMS) -> tuple:
    """The autotune list for one value of the autotune key (n, head_dim, work_bucket), best guess first.

    Each tile of _TILES gets its TAIL_N for n; the list is ordered by
    1. padded work (`padded_work`), tiles within _PAD_TIE of the least counting as equal,
    2. grid fill: more of the num_sms SMs busy first (programs = work_bucket · cdiv(n, BLOCK_M); at batch 1 an
       S18x2 layer has 24 (image, head) pairs, 48 programs of 128 rows or 96 of 64),
    3. the order of _TILES;
    tiles doing _PAD_PRUNE times the least work are left out. head_dim is part of the key the list belongs to; every
    tile fits shared memory at every supported head_dim (tests/sm90_compile_check.py), and only 128x64 with 4 warps
    spills at d = 128 (~0.1 KB per thread; never first, the autotuner's timing judges it).
    """
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {head_dim!r}")
    ranked = []
    for pref, (bm, bn, warps, stages) in enumerate(_TILES):
        tail = tail_block(n, bn)
        ranked.append((padded_work(n, bm, bn, tail), min(work_bucket * triton.cdiv(n, bm), num_sms), pref,
                       _config(bm, bn, tail, warps, stages)))
    least = min(r[0] for r in ranked)
    kept = [r for r in ranked if r[0] < least * _PAD_PRUNE]
    kept.sort(key=lambda r: (r[0] > least * _PAD_TIE, -r[1], r[2]))
    return tuple(r[3] for r in kept)


@functools.lru_cache(maxsize=None)
def _tuned_kernel(n: int, head_dim: int, work_bucket: int, num_sms: int):
    """The autotuner over attention_configs(...): one per list (the list depends on the whole key)."""
    return autotuned(_attention_kernel, attention_configs(n, head_dim, work_bucket, num_sms),
                     ["N", "HEAD_DIM", "WORK_BUCKET"])


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_sms(t: torch.Tensor) -> int:
    """SMs of t's GPU (for the grid-fill rule of attention_configs); _DEFAULT_SMS elsewhere."""
    if t.device.type != "cuda":
        return _DEFAULT_SMS
    return _cuda_sm_count(t.device.index if t.device.index is not None else torch.cuda.current_device())


#: Above this many (image, head) pairs every config fills the GPU many times over: one tuning covers them all.
_WORK_BUCKET_CAP = 2048


def _work_bucket(batch: int, heads: int) -> int:
    """B·H rounded up to a power of two (capped): the autotuner re-tunes per bucket, not per batch size."""
    return min(next_power_of_2(max(1, batch * heads)), _WORK_BUCKET_CAP)

#: fp32 operands (accuracy path, IEEE dots without tensor cores): one tile that fits shared memory for every
#: head_dim, no autotuning (each fp32 variant takes 10-100 s to compile). TAIL_N is added per N at launch.
_FP32_META = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}

#: Under the interpreter one tile (TAIL_N added per N at launch); 16 is tl.dot's minimum, 32 keeps the number of
#: interpreted programs low.
_INTERPRETER_META = {"BLOCK_M": 32, "BLOCK_N": 32}


def _attention_launch(qkv: torch.Tensor, o: torch.Tensor, num_heads: int, head_dim: int, scale: float) -> None:
    B, N, _ = qkv.shape
    if B == 0 or N == 0 or skip_launch(qkv):
        return
    precision = "ieee"  # fp32 inputs are the accuracy path; bf16/fp16 ignore it
    bucket = _work_bucket(B, num_heads)

    def grid(meta):
        return (B * num_heads, triton.cdiv(N, meta["BLOCK_M"]))

    kernel, meta = launch_choice(_attention_kernel, _tuned_kernel(N, head_dim, bucket, _num_sms(qkv)),
                                 interpreter_meta=_INTERPRETER_META, fp32_meta=_FP32_META,
                                 fp32=qkv.dtype == torch.float32)
    if "BLOCK_N" in meta and "TAIL_N" not in meta:  # a fixed tile (interpreter, fp32): its tail for this N
        meta["TAIL_N"] = tail_block(N, meta["BLOCK_N"])
    use_pdl = pdl_enabled(qkv)
    with device_guard(qkv):
        wrap_triton(kernel)[grid](
            qkv, o,
            N, num_heads, bucket,
            qkv.stride(0), qkv.stride(1),
            o.stride(0), o.stride(1),
            scale * _LOG2E,
            HEAD_DIM=head_dim, D_PAD=next_power_of_2(head_dim), INPUT_PRECISION=precision, USE_PDL=use_pdl,
            **meta, **pdl_launch_kwargs(use_pdl),
        )


@cached_check
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
