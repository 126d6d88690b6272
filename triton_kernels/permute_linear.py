r"""The Vision Permutator's Permute-MLP projections (height, width, channel) as one grouped GEMM, with no permuted
copies of the activations.

Math. x (B, H, W, C) are the normalised tokens in grid order; the C channels form K segments of S = C / K channels,
so x[b, i, j, k, s] = x[b, i, j, k·S + s]. The three projections are

    h[b, i, j, k, s'] = Σ_{i', s} Wh[i·S + s', i'·S + s] · x[b, i', j, k, s] + bh[i·S + s']     Wh (H·S, H·S)
    w[b, i, j, k, s'] = Σ_{j', s} Ww[j·S + s', j'·S + s] · x[b, i, j', k, s] + bw[j·S + s']     Ww (W·S, W·S)
    c[b, i, j, :]     = Wc (C, C) @ x[b, i, j, :] + bc                                           Wc (C, C)

each a GEMM Y = A Wᵀ + b whose rows r and reduction columns q are these index pairs:

    problem  rows r                 columns q = (outer, s)     address of A[r, q] in x (and of Y[r, q] in y[p])
    h        (b, j, k)  B·W·K rows  (i', s)   H·S columns     b·HWC + j·C   + k·S   +   i'·W·C + s
    w        (b, i, k)  B·H·K rows  (j', s)   W·S columns     b·HWC + i·W·C + k·S   +   j'·C   + s
    c        (b, t)     B·H·W rows  c'        C columns       b·HWC + t·C           +   c'

The address is separable, row_off(r) + col_off(q), and the weights are square, so the output column q' has the
address col_off(q') in the token layout too: every problem reads x and writes y[p] (B, H, W, C) through the same
index math, and no permuted copy of x, h or w is written. Rows decompose as r = (b·mid + m)·kin + k, columns as
q = outer·S + s (the channel problem: kin = 1, outer stride S, so col_off(q) = q). One launch covers the tiles of
all three problems (a flat program index, problem after problem); accumulation is fp32, the bias is added in the
accumulator, y is stored in x's dtype.

Cost (N = H·W tokens): 2·B·N·C·(H·S + W·S + C) FLOPs; bytes: x read (once per output-column tile, from L2 after
the first), y written 3·B·N·C·sizeof(x), weights ((H·S)² + (W·S)² + C²)·sizeof(x). ViP-S/7 stage 1 at batch 64
(H = W = 32, C = 192, K = 32, S = 6, bf16): 14.5 GFLOP for 25 MB read + 75 MB written: ~145 FLOP/byte, memory-bound
on H100 (ridge ~300 FLOP/byte). The copy-based version moved 2 + 2 more activation copies (each written and read)
and launched 3 GEMMs + 4 copies; see bench/notes/permute_linear.md.

Supported: any B ≥ 0, H, W ≥ 1, any K dividing C (S = 1 and odd S included; H·S need not equal C), fp16 / bf16 /
fp32 (fp32 with IEEE dots), x contiguous, H·W·C < 2³¹ and (H·S)², (W·S)², C² < 2³¹ (offsets within a sample
and within a weight are int32, across samples and problems int64). The kernel allocates y.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (FLOAT_DTYPES, cached_check, check_same_device, check_tensor, device_guard,
                      interpreter_active, register_op, skip_launch, wrap_triton)

__all__ = ["permute_projections", "permute_projections_ref"]

_INT32_LIMIT = 2 ** 31


@triton.jit
def _permute_projections_kernel(
    # pointers
    x_ptr,      # (B, H, W, C) normalised tokens, contiguous
    wh_ptr,     # (H·S, H·S) height projection, contiguous
    bh_ptr,     # (H·S,) its bias; unused unless HAS_BIAS
    ww_ptr,     # (W·S, W·S) width projection, contiguous
    bw_ptr,     # (W·S,) its bias; unused unless HAS_BIAS
    wc_ptr,     # (C, C) channel projection, contiguous
    bc_ptr,     # (C,) its bias; unused unless HAS_BIAS
    y_ptr,      # (3, B, H, W, C) output: h, w, c in token layout, contiguous
    # sizes
    B, H, W, C, S,      # C = K·S channels in K segments of S
    K,                  # segments
    # meta-parameters
    HAS_BIAS: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Which problem this program works on: tiles of h first, then w, then c (the table of the module docstring).
    pid = tl.program_id(0)
    tiles_h = tl.cdiv(B * W * K, BLOCK_M) * tl.cdiv(H * S, BLOCK_N)
    tiles_w = tl.cdiv(B * H * K, BLOCK_M) * tl.cdiv(W * S, BLOCK_N)
    is_h = pid < tiles_h
    is_w = (pid >= tiles_h) & (pid < tiles_h + tiles_w)
    problem = tl.where(is_h, 0, tl.where(is_w, 1, 2))
    length = tl.where(is_h, H * S, tl.where(is_w, W * S, C))           # rows and columns of the square weight
    kin = tl.where(problem == 2, 1, K)                                   # innermost row index: the segment k
    mid = tl.where(is_h, W, tl.where(is_w, H, H * W))                   # middle row index: j, i, or the token t
    stride_mid = tl.where(is_w, W * C, C)
    stride_outer = tl.where(is_h, W * C, tl.where(is_w, C, S))          # column q = outer·S + s
    first_tile = tl.where(is_h, 0, tl.where(is_w, tiles_h, tiles_h + tiles_w))
    # Pointer selects need one element type: the launcher checks that the weights (and the biases) share a dtype.
    w_base = tl.where(is_h, wh_ptr, tl.where(is_w, ww_ptr, wc_ptr))

    tiles_n = tl.cdiv(length, BLOCK_N)
    tile = pid - first_tile
    pid_m = tile // tiles_n
    pid_n = tile % tiles_n

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < B * mid * kin
    mask_n = offs_n < length
    # Row offsets once per tile; int64 for the sample index (B·H·W·C can pass 2³¹ at large batches).
    seg = offs_m % kin
    rest = offs_m // kin
    row_off = (rest // mid).to(tl.int64) * (H * W * C) + (rest % mid) * stride_mid + seg * S

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, length, BLOCK_K):
        q = k0 + offs_k
        q_ok = q < length
        col_off = (q // S) * stride_outer + q % S
        a = tl.load(x_ptr + row_off[:, None] + col_off[None, :], mask=mask_m[:, None] & q_ok[None, :], other=0.0)
        # Wᵀ tile (BLOCK_K, BLOCK_N) read from row-major W (length, length): no transposed copy
        wt = tl.load(w_base + offs_n[None, :] * length + q[:, None], mask=q_ok[:, None] & mask_n[None, :],
                     other=0.0)
        acc = tl.dot(a, wt, acc, input_precision=DOT_PREC)
    if HAS_BIAS:
        b_base = tl.where(is_h, bh_ptr, tl.where(is_w, bw_ptr, bc_ptr))
        acc += tl.load(b_base + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out_col = (offs_n // S) * stride_outer + offs_n % S
    y_base = y_ptr + problem.to(tl.int64) * B * (H * W * C)
    tl.store(y_base + row_off[:, None] + out_col[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def _meta(length: int) -> dict:
    """One tile shape for the three problems (the grid mixes them): 64×64 output tiles, 32-deep K steps. ViP's
    projections are 96–512 wide, so BLOCK_N = 64 wastes no columns on them; tiny test sizes get 16-wide tiles. The
    interpreter's cost is per program, so it gets the same tiles."""
    block_n = 64 if length >= 64 else max(16, triton.next_power_of_2(length))
    return dict(BLOCK_M=64, BLOCK_N=block_n, BLOCK_K=32, num_warps=4, num_stages=1 if interpreter_active() else 3)


def _grid_tiles(batch: int, height: int, width: int, channels: int, seg_width: int, segments: int,
                block_m: int, block_n: int) -> int:
    """Programs of one launch: the output tiles of h, w and c (the kernel's own tile count, on the host)."""
    def tiles(rows, length):
        return triton.cdiv(rows, block_m) * triton.cdiv(length, block_n)
    return (tiles(batch * width * segments, height * seg_width) + tiles(batch * height * segments, width * seg_width)
            + tiles(batch * height * width, channels))


@cached_check
def _check_args(x, height_w, height_b, width_w, width_b, channel_w, channel_b, segments):
    check_tensor(x, "x", ndim=4, dtypes=FLOAT_DTYPES)
    B, H, W, C = x.shape
    if isinstance(segments, bool) or not isinstance(segments, (int, torch.SymInt)) or not segments >= 1:
        raise ValueError(f"segments must be a positive int, got {segments!r}")
    segments = int(segments)
    if C % segments:
        raise ValueError(f"the C = {C} channels of x (B, H, W, C) must split into segments = {segments} equal "
                         f"parts (C % segments == 0)")
    S = C // segments
    sizes = {"height": (H * S, f"(H·S, H·S) with H = {H}, S = C / segments = {S}"),
             "width": (W * S, f"(W·S, W·S) with W = {W}, S = C / segments = {S}"),
             "channel": (C, f"(C, C) with C = {C}")}
    weights = {"height": height_w, "width": width_w, "channel": channel_w}
    biases = {"height": height_b, "width": width_b, "channel": channel_b}
    for which, (n, what) in sizes.items():
        name = f"{which}_w"
        check_tensor(weights[which], name, ndim=2, dtype=x.dtype)
        if tuple(weights[which].shape) != (n, n):
            raise ValueError(f"{name} must have shape {what}: ({n}, {n}), got {tuple(weights[which].shape)}")
    given = [b is not None for b in biases.values()]
    if any(given) and not all(given):
        raise ValueError("give the three biases (height_b, width_b, channel_b) or none of them")
    if all(given):
        for which, (n, _) in sizes.items():
            check_tensor(biases[which], f"{which}_b", ndim=1, shape=(n,), dtypes=FLOAT_DTYPES)
        if len({b.dtype for b in biases.values()}) > 1:
            # the kernel selects the bias pointer per program, and a pointer select needs one element type
            raise TypeError(f"height_b, width_b and channel_b must share a dtype, got "
                            f"{', '.join(str(b.dtype) for b in biases.values())}")
    longest = max(H * S, W * S, C)
    if (H * W * C >= _INT32_LIMIT or B * max(H * W, W * segments, H * segments) >= _INT32_LIMIT
            or longest * longest >= _INT32_LIMIT):
        raise ValueError(f"x {tuple(x.shape)} is too large: the kernel's offsets within a sample (H·W·C), its "
                         f"GEMM row indices (B·H·W, B·W·K, B·H·K) and weight offsets (H·S, W·S or C squared) are "
                         f"int32 (< 2³¹)")
    check_same_device(x=x, height_w=height_w, height_b=height_b, width_w=width_w, width_b=width_b,
                      channel_w=channel_w, channel_b=channel_b)
    return B, H, W, C, S


def _permute_projections_op(x: torch.Tensor, height_w: torch.Tensor, height_b: Optional[torch.Tensor],
                            width_w: torch.Tensor, width_b: Optional[torch.Tensor], channel_w: torch.Tensor,
                            channel_b: Optional[torch.Tensor], segments: int) -> torch.Tensor:
    B, H, W, C, S = _check_args(x, height_w, height_b, width_w, width_b, channel_w, channel_b, segments)
    y = torch.empty((3, B, H, W, C), dtype=x.dtype, device=x.device)
    if y.numel() == 0 or skip_launch(x):
        return y
    meta = _meta(max(H * S, W * S, C))
    grid = (_grid_tiles(B, H, W, C, S, segments, meta["BLOCK_M"], meta["BLOCK_N"]),)
    has_bias = height_b is not None
    dummy = y
    with device_guard(x):
        wrap_triton(_permute_projections_kernel)[grid](
            x, height_w, height_b if has_bias else dummy, width_w, width_b if has_bias else dummy,
            channel_w, channel_b if has_bias else dummy, y,
            B, H, W, C, S, segments,
            HAS_BIAS=has_bias,
            # fp32 operands must match an fp32 reference (no TF32); 16-bit operands ignore it
            DOT_PREC="ieee",
            **meta,
        )
    return y


_permute_projections_registered = register_op("permute_projections", _permute_projections_op)


def permute_projections(x: torch.Tensor, height_w: torch.Tensor, height_b: Optional[torch.Tensor],
                        width_w: torch.Tensor, width_b: Optional[torch.Tensor], channel_w: torch.Tensor,
                        channel_b: Optional[torch.Tensor], segments: int) -> torch.Tensor:
    """The Permute-MLP's height, width and channel projections of x in one launch (module docstring).

    Args:
        x: (B, H, W, C) float16/bfloat16/float32, contiguous (tokens in grid order), CUDA (CPU only under
            ``TRITON_INTERPRET=1``).
        height_w: (H·S, H·S), width_w: (W·S, W·S), channel_w: (C, C), all in x's dtype, contiguous; S = C / segments.
        height_b, width_b, channel_b: (H·S,), (W·S,), (C,), one float dtype for the three, or all None.
        segments: K, the number of channel segments; must divide C.

    Returns:
        (3, B, H, W, C) in x's dtype: [h, w, c], each in the token layout of x. Registered as
        ``torch.ops.ttf.permute_projections``.
    """
    return _permute_projections_registered(x, height_w, height_b, width_w, width_b, channel_w, channel_b, segments)


def permute_projections_ref(x, height_w, height_b, width_w, width_b, channel_w, channel_b, segments: int,
                            upcast: bool = False) -> torch.Tensor:
    """Plain PyTorch, as the unfused model computes it: permuted copies of x, three GEMMs rounded to x.dtype, h and w
    permuted back. upcast=True computes and returns float64 (the oracle)."""
    dt = torch.float64 if upcast else x.dtype
    B, H, W, C = x.shape
    S = C // segments
    grid = x.to(dt).view(B, H, W, segments, S)

    def project(rows, w, b):
        y = rows @ w.to(dt).t()
        return y if b is None else y + b.to(dt)
    h = project(grid.permute(0, 2, 3, 1, 4).reshape(B, W, segments, H * S), height_w, height_b)
    h = h.view(B, W, segments, H, S).permute(0, 3, 1, 2, 4).reshape(B, H, W, C)
    w = project(grid.permute(0, 1, 3, 2, 4).reshape(B, H, segments, W * S), width_w, width_b)
    w = w.view(B, H, segments, W, S).permute(0, 1, 3, 2, 4).reshape(B, H, W, C)
    c = project(x.to(dt), channel_w, channel_b)
    return torch.stack([h, w, c])
