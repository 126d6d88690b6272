r"""Fused linear patch embedding (the ViT stem): image (B, C, H, W) -> tokens (B, [1 +] N, E) in one launch.

Math (Conv2d(C -> E, kernel = stride = p) as a GEMM; im2col by address arithmetic, never materialised):

    x[n]    ∈ R^{C·p·p}   pixels of patch n, features ordered (c, ky, kx) — the conv weight's flattening
    token_n = W x[n] + b (+ pos[n])        W (E, C·p·p), b (E,);   fp32 accumulation, one rounding
    optional class-token row at index 0; masking as in hmlp_stem (MAE: visible rows only, BEiT: mask token rows)

Kernel: tiled GEMM, one program per (BLOCK_P patches) × (BLOCK_E channels) tile, K loop of BLOCK_K over C·p·p:
each A tile is gathered from the image with the patch's base address plus (c, ky, kx) offsets (any strides, so
NCHW and channels-last both work), B tiles read W through its strides (no transposed copy).

Cost: 2·B·N·E·C·p² FLOPs (ViT-B/16 at 224: 196·768·768 = 115.6 MMAC per image).
Bytes: image B·C·H·W·s_img + W E·C·p²·s_w (L2-resident) + tokens B·N·E·s_out.
ViT-B, batch 256, fp32 image, bf16 tokens: 154 MB + 77 MB and 59 GFLOP: ~256 FLOP/B, near the H100 ridge point —
the linear stem is about as memory bound as compute bound; the image read dominates the floor (~70 µs).

Programmatic dependent launch (TTF_TRITON_PDL=1 on sm_90+, see _common): as in hmlp_stem, the index math runs
before gdc_wait(), which precedes every read of the images, row indices or mask and every store;
gdc_launch_dependents() follows the K loop.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (FLOAT_DTYPES, autotuned, check_out, check_same_device, check_tensor, device_guard,
                      gdc_launch_dependents, gdc_wait, launch_choice, pdl_enabled, pdl_launch_kwargs, register_op,
                      skip_launch, wrap_triton)
from ._stem_common import (_patch_rows, _token_rows, _write_extra_rows, check_stem_inputs, flat_pos, flat_vector,
                           resolve_masking, row_order, select_tokens)

__all__ = ["patch_embed", "patch_embed_ref"]


@triton.jit
def _patch_embed_kernel(
    # pointers
    img_ptr,    # (B, C, H, W) images, any strides, any float dtype
    w_ptr,      # (E, C·p·p) weight, columns (c, ky, kx), strides s_we, s_wk; compute dtype
    b_ptr,      # (E,) bias (HAS_BIAS)
    pos_ptr,    # (N, E) position embedding (HAS_POS)
    cls_ptr,    # (E,) class-token row (HAS_CLS)
    mtok_ptr,   # (E,) mask token (BEIT)
    idx_ptr,    # (B, S) patch number of each row (HAS_IDX)
    mask_ptr,   # (B, N) uint8, 1 = masked (BEIT)
    out_ptr,    # (B, HAS_CLS + S, E), unit inner stride
    # sizes
    R, S, N, WP,
    # strides
    s_ib, s_ic, s_ih, s_iw,
    s_we, s_wk,
    s_xb, s_xs,
    s_mb, s_mn,
    s_pn, s_pe,
    s_ob, s_on,
    # meta-parameters
    PATCH: tl.constexpr, E: tl.constexpr, K: tl.constexpr,  # K = C·p², fixed per model: constant trip count
    HAS_BIAS: tl.constexpr, HAS_POS: tl.constexpr, HAS_CLS: tl.constexpr, HAS_IDX: tl.constexpr,
    BEIT: tl.constexpr, DOT_PREC: tl.constexpr,
    USE_PDL: tl.constexpr,  # launched with programmatic dependent launch (see _common.pdl_enabled)
    BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_e = tl.program_id(1)
    b, v, n, row_ok, vis = _patch_rows(pid, R, S, N, idx_ptr, s_xb, s_xs, mask_ptr, s_mb, s_mn,
                                       HAS_IDX, BEIT, BLOCK_P, USE_PDL)
    out_rows = _token_rows(out_ptr, b, v, n, s_ob, s_on, HAS_CLS, BEIT)
    e0 = pid_e * BLOCK_E
    offs_e = e0 + tl.arange(0, BLOCK_E)
    e_ok = offs_e < E
    if USE_PDL:
        # The images may be written by the previous kernel (a copy or cast before the first kernel of a forward),
        # and the output may be memory it still reads: index math above, every image load and store below.
        gdc_wait()

    n_vis = tl.sum(vis.to(tl.int32), 0)
    if n_vis > 0:
        DT = w_ptr.dtype.element_ty
        py = n // WP
        px = n % WP
        img_rows = b * s_ib + (py * PATCH).to(tl.int64) * s_ih + (px * PATCH).to(tl.int64) * s_iw
        acc = tl.zeros((BLOCK_P, BLOCK_E), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            k_ok = kk < K
            pix = (kk // (PATCH * PATCH)) * s_ic + ((kk // PATCH) % PATCH) * s_ih + (kk % PATCH) * s_iw
            x = tl.load(img_ptr + img_rows[:, None] + pix[None, :], mask=vis[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_ptr + kk[:, None] * s_wk + offs_e[None, :] * s_we, mask=k_ok[:, None] & e_ok[None, :],
                        other=0.0)
            acc = tl.dot(x.to(DT), w, acc, input_precision=DOT_PREC)
        if USE_PDL:
            gdc_launch_dependents()  # every image read is issued: the next kernel may start its prologue
        m = vis[:, None] & e_ok[None, :]
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_e, mask=e_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_POS:
            acc += tl.load(pos_ptr + n[:, None] * s_pn + offs_e[None, :] * s_pe, mask=m, other=0.0).to(tl.float32)
        tl.store(out_rows[:, None] + offs_e[None, :], acc.to(out_ptr.dtype.element_ty), mask=m)

    if HAS_CLS or BEIT:
        _write_extra_rows(out_ptr, out_rows, b, v, n, row_ok, vis, cls_ptr, mtok_ptr, pos_ptr, s_ob, s_pn, s_pe,
                          e0, E, HAS_CLS, BEIT, HAS_POS, BLOCK_E)


# Unmeasured starting points (no GPU has run them yet); a plain GEMM with K = C·p² = 768.
def _config(bp, be, bk, warps, stages):
    return triton.Config({"BLOCK_P": bp, "BLOCK_E": be, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


_CONFIGS = [
    _config(128, 128, 64, 8, 3),
    _config(128, 64, 64, 4, 4),
    _config(64, 128, 64, 4, 4),
    _config(64, 64, 64, 4, 3),
    _config(32, 64, 64, 4, 3),
]
_patch_embed_kernel_tuned = autotuned(_patch_embed_kernel, _CONFIGS, ["R", "E", "K"])
_INTERPRETER_META = {"BLOCK_P": 16, "BLOCK_E": 32, "BLOCK_K": 64}
#: fp32 weights (IEEE dots, no tensor cores): one config, no autotuning; the first 16-bit config would spill in
#: fp32 (480 B per thread at sm_90), this one does not and needs 32 KB of shared memory.
_FP32_META = {"BLOCK_P": 64, "BLOCK_E": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}


def _patch_embed_launch(images, weight, bias, patch, pos, cls, visible_idx, mask, mask_token, out) -> None:
    B, C, H, W = images.shape
    E, K = weight.shape
    Wp = W // patch
    N = (H // patch) * Wp
    idx, mask_u8 = row_order(mask, visible_idx)
    S = idx.shape[1] if idx is not None else N
    R = B * S
    if B == 0 or skip_launch(images):
        return
    if R == 0:
        if cls is not None:
            out[:, 0, :] = cls.to(out.dtype)
        return
    dummy = weight

    def grid(meta):
        return (triton.cdiv(R, meta["BLOCK_P"]), triton.cdiv(E, meta["BLOCK_E"]))

    kernel, meta = launch_choice(_patch_embed_kernel, _patch_embed_kernel_tuned, interpreter_meta=_INTERPRETER_META,
                                 fp32_meta=_FP32_META, fp32=weight.dtype == torch.float32)
    use_pdl = pdl_enabled(images)
    with device_guard(images):
        wrap_triton(kernel)[grid](
            images, weight, bias if bias is not None else dummy,
            pos if pos is not None else dummy, cls if cls is not None else dummy,
            mask_token if mask_token is not None else dummy,
            idx if idx is not None else dummy, mask_u8 if mask_u8 is not None else dummy, out,
            R, S, N, Wp,
            images.stride(0), images.stride(1), images.stride(2), images.stride(3),
            weight.stride(0), weight.stride(1),
            idx.stride(0) if idx is not None else 0, idx.stride(1) if idx is not None else 0,
            mask_u8.stride(0) if mask_u8 is not None else 0, mask_u8.stride(1) if mask_u8 is not None else 0,
            pos.stride(0) if pos is not None else 0, pos.stride(1) if pos is not None else 0,
            out.stride(0), out.stride(1),
            PATCH=patch, E=E, K=K,
            HAS_BIAS=bias is not None, HAS_POS=pos is not None, HAS_CLS=cls is not None,
            HAS_IDX=idx is not None, BEIT=mask is not None, DOT_PREC="ieee", USE_PDL=use_pdl,
            **meta, **pdl_launch_kwargs(use_pdl),
        )


def _infer_patch(images, weight, patch: int) -> int:
    C = images.shape[1]
    K = weight.shape[1]
    if patch <= 0:
        p = int(round((K / max(C, 1)) ** 0.5))
        if C * p * p != K:
            raise ValueError(f"weight has {K} input features, not in_chans·p·p for the images' {C} channels "
                             f"(shape {tuple(images.shape)})")
        patch = p
    if C * patch * patch != K:
        raise ValueError(f"images must have in_chans = weight.shape[1] / patch² = {K / patch ** 2:g} channels "
                         f"(patch {patch}), got shape {tuple(images.shape)}")
    return patch


def _patch_embed_op(images: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], patch: int,
                    pos: Optional[torch.Tensor], cls: Optional[torch.Tensor], visible_idx: Optional[torch.Tensor],
                    mask: Optional[torch.Tensor], mask_token: Optional[torch.Tensor]) -> torch.Tensor:
    check_tensor(images, "images", ndim=4, contiguous=False)
    check_tensor(weight, "weight", ndim=2, contiguous=False)
    patch = _infer_patch(images, weight, patch)
    E = weight.shape[0]
    if bias is not None:
        check_tensor(bias, "bias", ndim=1, shape=(E,), contiguous=False)
    *_, out_shape = check_stem_inputs(images, images.shape[1], E, patch, pos, cls, visible_idx, mask, mask_token)
    check_same_device(images=images, weight=weight, bias=bias)
    out = torch.empty(out_shape, dtype=weight.dtype, device=images.device)
    _patch_embed_launch(images, weight, bias, patch, pos, cls, visible_idx, mask, mask_token, out)
    return out


_patch_embed_registered = register_op("patch_embed", _patch_embed_op)


def patch_embed(images: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                pos: Optional[torch.Tensor] = None, cls: Optional[torch.Tensor] = None,
                visible_idx: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                mask_token: Optional[torch.Tensor] = None, patch_size: Optional[int] = None,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused linear patch embedding (conv p×p / p as one GEMM), one launch: images -> tokens.

    Args:
        images: (B, C, H, W), H and W positive multiples of p, float16 / bfloat16 / float32, any strides.
        weight: (E, C·p·p) (columns (c, ky, kx): `fold_stem(PatchEmbed)["weight"]` cast) or the conv weight
            (E, C, p, p); its dtype is the compute and output dtype. p is inferred from the shapes unless given.
        bias: optional (E,), any float dtype.
        pos, cls, visible_idx, mask, mask_token, out: as in `hmlp_stem` (MAE / BEiT masking, class-token row,
            position embedding (N, E) added at each token's original patch number).

    Returns:
        tokens (B, [1 +] S, E) in weight.dtype. Registered as ``torch.ops.ttf.patch_embed``.
    """
    check_tensor(weight, "weight", ndim=(2, 4), contiguous=False)
    if weight.dim() == 4:
        if patch_size is None:
            patch_size = weight.shape[-1]
        weight = weight.reshape(weight.shape[0], -1)
    check_tensor(images, "images", ndim=4, contiguous=False)
    p = _infer_patch(images, weight, int(patch_size or 0))
    B, _, H, W = images.shape
    N = (H // p) * (W // p)
    E = weight.shape[0]
    pos, cls, mask_token = flat_pos(pos, N, E), flat_vector(cls, "cls", E), flat_vector(mask_token,
                                                                                         "mask_token", E)
    visible_idx, mask, mask_token = resolve_masking(B, N, visible_idx, mask, mask_token, images.device)
    if out is None:
        return _patch_embed_registered(images, weight, bias, p, pos, cls, visible_idx, mask, mask_token)
    if bias is not None:
        check_tensor(bias, "bias", ndim=1, shape=(E,), contiguous=False)
    *_, out_shape = check_stem_inputs(images, images.shape[1], E, p, pos, cls, visible_idx, mask, mask_token)
    check_out(out, "out", out_shape, weight.dtype, images.device,
              {"images": images, "weight": weight, "bias": bias, "pos": pos, "cls": cls, "mask_token": mask_token})
    _patch_embed_launch(images, weight, bias, p, pos, cls, visible_idx, mask, mask_token, out)
    return out


def patch_embed_ref(images: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, pos=None,
                    cls=None, visible_idx=None, mask=None, mask_token=None, patch_size: Optional[int] = None,
                    dtype: Optional[torch.dtype] = None, upcast: bool = False) -> torch.Tensor:
    """Plain-PyTorch linear stem (one strided conv), then pos / masking / class token ("mask after").

    Works in `dtype` (default images.dtype); upcast=True computes and returns float64.
    """
    import torch.nn.functional as F
    dt = torch.float64 if upcast else (dtype or images.dtype)
    if weight.dim() == 2:
        p = patch_size or _infer_patch(images, weight, 0)
        weight = weight.reshape(weight.shape[0], images.shape[1], p, p)
    p = weight.shape[-1]
    x = F.conv2d(images.to(dt), weight.to(dt), None if bias is None else bias.to(dt), stride=p)
    return select_tokens(x.flatten(2).transpose(1, 2), pos, cls, visible_idx, mask, mask_token)
