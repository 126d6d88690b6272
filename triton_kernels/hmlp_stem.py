r"""Fused hMLP stem: image (B, C, H, W) -> tokens (B, [1 +] N, E) in one launch.

Math, per 16×16 patch (C4 = E/4; C = in_chans, 3 for images; W_i, b_i the convs with BatchNorm folded in, or the raw
convs followed by a LayerNorm over channels, eps 1e-6, for the LN variant):

    x[s]  ∈ R^{16C}    the 16 sub-patches of 4×4 pixels, s = (sy, sx) ∈ 4×4, features ordered (c, ky, kx)
    h1[s] = gelu(norm1(W1 x[s] + b1))                       ∈ R^{C4}   W1 (C4, 16C)
    h2[t] = gelu(norm2(Σ_{j<4} W2[:, :, j] h1[child_j(t)] + b2))     t ∈ 2×2 groups,  W2 (C4, C4, 4)
    y     = norm3(Σ_{j<4} W3[:, :, j] h2[child_j] + b3)    ∈ R^E      W3 (E, C4, 4)
    token = y (+ pos[n]) ;  optional class-token row at index 0, masked rows = mask_token (+ pos[n])

with j = ky·2 + kx the position of a child in its 2×2 group (the conv kernel index) and
child_j(t) = (2·ty + j // 2, 2·tx + j % 2). gelu is exact (erf). The 16/4/1 intermediates of a patch stay on chip
(registers and shared memory); the kernel never writes them to memory.

Kernel design. One program takes BLOCK_P patches. The 2×2 regrouping needs no in-register reshape: the program
loops over the 4 stage-3 children t (unrolled) and, inside, over the 4 stage-2 children j (a runtime loop), loading
for every patch of the block the sub-patch child_j(t) as a (16C, BLOCK_P) tile straight from the image (im2col by
address arithmetic, any strides: NCHW or channels-last). Every GEMM is computed transposed, channels × patches:
the weights are the MMA's A operand (M = output channels) and the activations its B operand (N = BLOCK_P):

    16×  (C4, K1P) @ (K1P, BLOCK_P)        stage 1   (K1P = 16C padded to a power of two: 48 -> 64)
    16×  (C4, C4)  @ (C4, BLOCK_P)         stage 2   accumulated over j with the weight slice W2[:, :, j]
     4×  (BLOCK_E, C4) @ (C4, BLOCK_P)     stage 3   per E chunk, accumulated over t with W3[:, :, t]

Why transposed: Hopper's wgmma reads B from shared memory, and Triton keeps a computed A operand in registers in a
layout every warpgroup holds in full. With patches as M, the four h2 tiles (then the A operand of stage 3) sit in
registers through the whole E loop (4·64·C4·2 B / 128 threads = 192 registers per thread at BLOCK_P = 64,
E = 768), and every per-channel vector (biases, LN parameters) costs a register per column a thread owns (32 per
128 channels): the 64-row configs of that layout spilled 0.5-2 KB per thread. As B operands the activations go to
shared memory (h2[t] right after it is computed), per-channel vectors are per-row (2 registers), and M is at least
64 for any BLOCK_P, so every config gets wgmma. The hidden width C4 is held as two power-of-two row tiles
C4A + C4B (192 = 128 + 64, 96 = 64 + 32, 256 = 128 + 128; `split_hidden`), so nothing is padded for ViT-S/B/L; every
"dot" above is 2 (stages 1, 3) or 4 (stage 2) tl.dot over those parts.

Stage 3 walks E in chunks of BLOCK_E; its (BLOCK_E, BLOCK_P) result is transposed back to token rows for the
epilogue. Padded channels (tiny E only) have zero weights, biases and LN parameters, so they stay exactly 0 through
every norm and GELU. The LN of stage 3 spans all E chunks: with one chunk it is done in registers; with several,
pass 1 writes d = y − μ' into the output rows, where μ' = Σ_t h2[t]·mean_o(W3[o, :, t]) + mean(b3) is the exact
(linear) channel mean known before any chunk (accumulated right after each h2[t]), accumulating Σd and Σd² (no
E[y²] − E[y]² cancellation: d is already centred), and pass 2 re-reads d (the program's own rows, hot in L2) and
writes ((d − mean d)·rstd)·g + b (+ pos).

Masking (patches never mix, so masking before or after the stem is the same): the program's rows are gathered
through an index tensor. MAE: rows are the (B, N_vis) visible indices, output (B, [1+]N_vis, E), work ∝ N_vis.
BEiT: rows are all N patches of each sample ordered visible-first (a stable sort of the mask, no host sync); a
block whose rows are all masked skips the GEMMs and only writes the mask token, so work ∝ visible + one partial
block per sample; output (B, [1+]N, E).

Cost per patch: MACs = 16·16C·C4 + 4·4·C4·C4 + 4·C4·E = 192E + E² + E² (C = 3);   FLOPs = 2·MACs.
    E = 768 (ViT-B): 1.327 MMAC per patch (linear stem: 16·16·3·768 = 0.590 MMAC); ×196 patches = 0.260 GMAC per
    224-px image (+0.145 GMAC over the linear stem: ViT-B 17.58 -> 17.73 GMACs).
    Executed (K1P = 64 pads stage 1 only): 16·64·192 + 16·192² + 4·192·768 = 1.38 MMAC per patch (+4 %).
Bytes: image B·C·H·W·s_img in + tokens B·N·E·s_out out (+ pos N·E once, L2-resident) (+ 2·B·N·E·s_out of L2
traffic for LN with several E chunks). ViT-B, batch 256, 224 px, fp32 image, bf16 tokens: 154 MB + 77 MB;
133 GFLOP -> ~580 FLOP/B: compute bound on H100 (see bench/notes/hmlp_stem.md). Each program also re-reads all
the weights from L2 (2.4 MB at E = 768: W2 once per (t, j), W3 once per chunk), ~37 KB per patch at BLOCK_P = 64
and 4× that at 16: what makes the 64-patch tile worth keeping (a prediction; see the notes).

Programmatic dependent launch (TTF_TRITON_PDL=1 on sm_90+, see _common): the row index math and the stage-1
weights come before gdc_wait(), which precedes every read of the images (and, masked, of the row indices / mask)
and every store; gdc_launch_dependents() follows the last image read (end of stages 1-2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (FLOAT_DTYPES, autotuned, check_out, check_same_device, check_tensor, device_guard,
                      gdc_launch_dependents, gdc_wait, launch_choice, next_power_of_2, pdl_enabled, pdl_launch_kwargs,
                      register_op, skip_launch, wrap_triton)
from ._stem_common import (_patch_rows, _token_rows, _write_extra_rows, check_stem_inputs, flat_pos,
                           flat_vector, resolve_masking, row_order, select_tokens)

__all__ = ["HMLPStemWeights", "prepare_hmlp_stem", "hmlp_stem", "hmlp_stem_ref", "resolve_masking", "split_hidden"]

PATCH = 16  # hMLP patch: 4 (stage 1) × 2 (stage 2) × 2 (stage 3)


def split_hidden(c4: int) -> tuple[int, int]:
    """Hidden width C4 = E/4 as two power-of-two tile widths (C4A, C4B), each >= 16 (the smallest tl.dot tile):
    C4A the largest power of two below C4, C4B the next power of two of the rest. 192 -> (128, 64), 96 -> (64, 32),
    256 -> (128, 128): no padding for ViT-S/B/L, against 33 % wasted MACs with one 192 -> 256 padded tile (and
    half the shared memory per staged weight tile). Tiny widths pad: 8 -> (16, 16)."""
    if c4 <= 16:
        return 16, 16
    a = 1 << ((c4 - 1).bit_length() - 1)
    return a, max(16, next_power_of_2(c4 - a))


# ---------------------------------------------------------------------------------------------------------------
# Kernel
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def _ln_rows(y, w, b, col_ok, n, eps):
    """LayerNorm over the valid columns of y (R, C) fp32; padded columns come out 0 (w, b are zero-padded)."""
    mean = tl.sum(tl.where(col_ok[None, :], y, 0.0), 1) / n
    d = tl.where(col_ok[None, :], y - mean[:, None], 0.0)
    var = tl.sum(d * d, 1) / n
    rstd = 1.0 / tl.sqrt(var + eps)
    return d * rstd[:, None] * w[None, :] + b[None, :]


@triton.jit
def _ln_pair(ya, yb, wa, ba, wb, bb, n: tl.constexpr, eps):
    """LayerNorm over the n valid channels of the columns of two tiles ya (CA, R), yb (CB, R), fp32: channels along
    axis 0 (the transposed layout of stages 1-2), so the per-channel parameters are per-row vectors. Channels past
    n (zero-padded weights, biases and parameters) come out 0."""
    if ya.shape[0] + yb.shape[0] > n:
        ok_a = tl.arange(0, ya.shape[0]) < n
        ok_b = ya.shape[0] + tl.arange(0, yb.shape[0]) < n
        mean = (tl.sum(tl.where(ok_a[:, None], ya, 0.0), 0) + tl.sum(tl.where(ok_b[:, None], yb, 0.0), 0)) / n
        da = tl.where(ok_a[:, None], ya - mean[None, :], 0.0)
        db = tl.where(ok_b[:, None], yb - mean[None, :], 0.0)
    else:  # no padding (ViT-S/B/L): no masks
        mean = (tl.sum(ya, 0) + tl.sum(yb, 0)) / n
        da = ya - mean[None, :]
        db = yb - mean[None, :]
    rstd = 1.0 / tl.sqrt((tl.sum(da * da, 0) + tl.sum(db * db, 0)) / n + eps)
    return (da * rstd[None, :] * wa[:, None] + ba[:, None]), (db * rstd[None, :] * wb[:, None] + bb[:, None])


@triton.jit
def _hmlp_stage12(img_ptr, img_rows, pix, w1a, w1b, b1_ptr, w2_ptr, b2_ptr, lnw_ptr, lnb_ptr, eps,
                  s_ih, s_iw,
                  T: tl.constexpr, C4: tl.constexpr, C4A: tl.constexpr, C4B: tl.constexpr, IS_LN: tl.constexpr,
                  DOT_PREC: tl.constexpr, BLOCK_P: tl.constexpr):
    """h2[T]ᵀ of every patch in the block (channels × patches), as its two channel parts (C4A, BLOCK_P) and
    (C4B, BLOCK_P), compute dtype. w1a (C4A, K1P), w1b (C4B, K1P): the stage-1 weight parts, loaded once."""
    DT = w1a.dtype
    C4T = C4A + C4B
    ca = tl.arange(0, C4A)
    cb = C4A + tl.arange(0, C4B)
    acc_a = tl.zeros((C4A, BLOCK_P), dtype=tl.float32)
    acc_b = tl.zeros((C4B, BLOCK_P), dtype=tl.float32)
    # a runtime loop: unrolling it (static_range) quadruples the code and the compile time (~1 min per config)
    for j in range(4):
        sy = 2 * (T // 2) + j // 2
        sx = 2 * (T % 2) + j % 2
        # Unmasked: every address is valid (see img_rows, pix in the kernel), and a column (patch) never mixes
        # with another, so what a padded or invisible column reads only reaches outputs nobody stores. The
        # sub-patch offset joins the per-column vector before the broadcast: a (K1P, BLOCK_P) pointer tensor
        # independent of j would be hoisted out of the loops and hold 32 registers through all of stages 1-2.
        xt = tl.load(img_ptr + pix[:, None] + (img_rows + ((4 * sy) * s_ih + (4 * sx) * s_iw))[None, :]).to(DT)
        # BN: part a goes through GELU and its two stage-2 dots before part b is computed, so one fp32 stage-1
        # tile at a time is live next to the stage-2 accumulators; the LN statistics need both parts first.
        ha = tl.dot(w1a, xt, input_precision=DOT_PREC) + tl.load(b1_ptr + ca)[:, None]
        if IS_LN:
            hb = tl.dot(w1b, xt, input_precision=DOT_PREC) + tl.load(b1_ptr + cb)[:, None]
            ha, hb = _ln_pair(ha, hb, tl.load(lnw_ptr + ca), tl.load(lnb_ptr + ca), tl.load(lnw_ptr + cb),
                              tl.load(lnb_ptr + cb), C4, eps)
            hb = _gelu(hb).to(DT)
        ha = _gelu(ha).to(DT)
        w2 = w2_ptr + j * C4T * C4T  # W2[j] (out, in)
        acc_a = tl.dot(tl.load(w2 + ca[:, None] * C4T + ca[None, :]), ha, acc_a, input_precision=DOT_PREC)
        acc_b = tl.dot(tl.load(w2 + cb[:, None] * C4T + ca[None, :]), ha, acc_b, input_precision=DOT_PREC)
        if not IS_LN:
            hb = tl.dot(w1b, xt, input_precision=DOT_PREC) + tl.load(b1_ptr + cb)[:, None]
            hb = _gelu(hb).to(DT)
        acc_a = tl.dot(tl.load(w2 + ca[:, None] * C4T + cb[None, :]), hb, acc_a, input_precision=DOT_PREC)
        acc_b = tl.dot(tl.load(w2 + cb[:, None] * C4T + cb[None, :]), hb, acc_b, input_precision=DOT_PREC)
    acc_a += tl.load(b2_ptr + ca)[:, None]
    acc_b += tl.load(b2_ptr + cb)[:, None]
    if IS_LN:
        acc_a, acc_b = _ln_pair(acc_a, acc_b, tl.load(lnw_ptr + C4T + ca), tl.load(lnb_ptr + C4T + ca),
                                tl.load(lnw_ptr + C4T + cb), tl.load(lnb_ptr + C4T + cb), C4, eps)
    return _gelu(acc_a).to(DT), _gelu(acc_b).to(DT)


@triton.jit
def _w3_dot(h, w3_ptr, cols, offs_e, e_ok, acc, C4T: tl.constexpr, DOT_PREC: tl.constexpr):
    """acc (BLOCK_E, BLOCK_P) += W3[t][offs_e, cols] @ h: a (BLOCK_E, C4x) slice of W3[t] (out, in) times h2[t]ᵀ."""
    w = tl.load(w3_ptr + offs_e[:, None] * C4T + cols[None, :], mask=e_ok[:, None], other=0.0)
    return tl.dot(w, h, acc, input_precision=DOT_PREC)


@triton.jit
def _hmlp_stage3(h0a, h0b, h1a, h1b, h2a, h2b, h3a, h3b, w3_ptr, e0,
                 E: tl.constexpr, C4A: tl.constexpr, C4B: tl.constexpr, DOT_PREC: tl.constexpr,
                 BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr):
    """Σ_t W3[t][e0:e0+BLOCK_E] @ h2[t]ᵀ, returned as (BLOCK_P, BLOCK_E) fp32 (patches × channels, the layout of the
    output rows), plus the chunk's columns and their mask."""
    C4T = C4A + C4B
    offs_e = e0 + tl.arange(0, BLOCK_E)
    e_ok = offs_e < E
    ca = tl.arange(0, C4A)
    cb = C4A + tl.arange(0, C4B)
    acc = tl.zeros((BLOCK_E, BLOCK_P), dtype=tl.float32)
    acc = _w3_dot(h0a, w3_ptr, ca, offs_e, e_ok, acc, C4T, DOT_PREC)
    acc = _w3_dot(h0b, w3_ptr, cb, offs_e, e_ok, acc, C4T, DOT_PREC)
    acc = _w3_dot(h1a, w3_ptr + E * C4T, ca, offs_e, e_ok, acc, C4T, DOT_PREC)
    acc = _w3_dot(h1b, w3_ptr + E * C4T, cb, offs_e, e_ok, acc, C4T, DOT_PREC)
    acc = _w3_dot(h2a, w3_ptr + 2 * E * C4T, ca, offs_e, e_ok, acc, C4T, DOT_PREC)
    acc = _w3_dot(h2b, w3_ptr + 2 * E * C4T, cb, offs_e, e_ok, acc, C4T, DOT_PREC)
    acc = _w3_dot(h3a, w3_ptr + 3 * E * C4T, ca, offs_e, e_ok, acc, C4T, DOT_PREC)
    acc = _w3_dot(h3b, w3_ptr + 3 * E * C4T, cb, offs_e, e_ok, acc, C4T, DOT_PREC)
    return tl.trans(acc), offs_e, e_ok


@triton.jit
def _row_mean_w3(mu, ha, hb, w3m_ptr, C4A: tl.constexpr, C4B: tl.constexpr, ON: tl.constexpr):
    """mu + child t's term of the stage-3 channel mean μ', Σ_c h2[t]ᵀ[c, :]·mean_o W3[t][o, c] (ON: the two-pass LN
    needs μ'; otherwise mu as is). Taken right after each stage-1/2 call, while h2[t] is still in registers."""
    if ON:
        ca = tl.arange(0, C4A)
        cb = C4A + tl.arange(0, C4B)
        mu += tl.sum(ha.to(tl.float32) * tl.load(w3m_ptr + ca)[:, None], 0)
        mu += tl.sum(hb.to(tl.float32) * tl.load(w3m_ptr + cb)[:, None], 0)
    return mu


@triton.jit
def _hmlp_stem_kernel(
    # pointers
    img_ptr,    # (B, C, H, W) images, any strides, any float dtype
    w1_ptr,     # (C4T, K1P) stage 1 (out, in), column k = c·16 + ky·4 + kx; zero columns k >= 16C, rows >= C4
    b1_ptr,     # (C4T,) fp32
    w2_ptr,     # (4, C4T, C4T) stage 2, [j = ky·2 + kx, out, in]
    b2_ptr,     # (C4T,) fp32
    w3_ptr,     # (4, E, C4T) stage 3, [t = ky·2 + kx, out, in]
    b3_ptr,     # (E,) fp32
    lnw_ptr,    # (2, C4T) fp32 LN gains of stages 1, 2 (IS_LN)
    lnb_ptr,    # (2, C4T) fp32 LN biases of stages 1, 2 (IS_LN)
    ln3w_ptr,   # (E,) fp32 (IS_LN)
    ln3b_ptr,   # (E,) fp32 (IS_LN)
    w3m_ptr,    # (4, C4T) fp32 mean over outputs of the (rounded) W3 (IS_LN, E > BLOCK_E)
    pos_ptr,    # (N, E) position embedding (HAS_POS)
    cls_ptr,    # (E,) class-token row (HAS_CLS)
    mtok_ptr,   # (E,) mask token (BEIT)
    idx_ptr,    # (B, S) patch number of each row (HAS_IDX)
    mask_ptr,   # (B, N) uint8, 1 = masked (BEIT)
    out_ptr,    # (B, HAS_CLS + S, E), unit inner stride
    # sizes
    R, S, N, WP, b3_mean, eps,
    # strides
    s_ib, s_ic, s_ih, s_iw,
    s_xb, s_xs,
    s_mb, s_mn,
    s_pn, s_pe,
    s_ob, s_on,
    # meta-parameters
    C_IN: tl.constexpr, E: tl.constexpr, C4: tl.constexpr, C4A: tl.constexpr, C4B: tl.constexpr,
    K1P: tl.constexpr,
    IS_LN: tl.constexpr, HAS_POS: tl.constexpr, HAS_CLS: tl.constexpr, HAS_IDX: tl.constexpr, BEIT: tl.constexpr,
    DOT_PREC: tl.constexpr,
    USE_PDL: tl.constexpr,  # launched with programmatic dependent launch (see _common.pdl_enabled)
    BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr,
):
    pid = tl.program_id(0)
    b, v, n, row_ok, vis = _patch_rows(pid, R, S, N, idx_ptr, s_xb, s_xs, mask_ptr, s_mb, s_mn,
                                       HAS_IDX, BEIT, BLOCK_P, USE_PDL)
    OUT_DT = out_ptr.dtype.element_ty

    n_vis = tl.sum(vis.to(tl.int32), 0)
    if n_vis > 0:  # BEiT: a block of masked rows only skips every GEMM
        C4T = C4A + C4B
        py = n // WP
        px = n % WP
        # Image offsets of the patches (16 = PATCH) and of the pixels of a 4×4 sub-patch, valid for every column and
        # row: rows past R take sample 0, the K padding (k >= 16·C_IN, zero weights) repeats channel 0.
        img_rows = tl.where(row_ok, b, 0) * s_ib + (py * 16).to(tl.int64) * s_ih + (px * 16).to(tl.int64) * s_iw
        kk = tl.arange(0, K1P)
        kc = kk % (16 * C_IN)
        pix = (kc // 16) * s_ic + ((kc // 4) % 4) * s_ih + (kc % 4) * s_iw
        ca = tl.arange(0, C4A)
        cb = C4A + tl.arange(0, C4B)
        w1a = tl.load(w1_ptr + ca[:, None] * K1P + kk[None, :])
        w1b = tl.load(w1_ptr + cb[:, None] * K1P + kk[None, :])
        if USE_PDL:
            # A stem is the first kernel of a forward, but its images may be written by a copy or cast just before
            # it, and the output may be memory that kernel still reads: the index math and the stage-1 weights
            # above overlap its tail, every image load and every store comes after this.
            gdc_wait()
        two_pass = IS_LN and E > BLOCK_E  # a constexpr
        mu = tl.zeros((BLOCK_P,), dtype=tl.float32) + b3_mean
        h0a, h0b = _hmlp_stage12(img_ptr, img_rows, pix, w1a, w1b, b1_ptr, w2_ptr, b2_ptr, lnw_ptr,
                                 lnb_ptr, eps, s_ih, s_iw, 0, C4, C4A, C4B, IS_LN, DOT_PREC, BLOCK_P)
        mu = _row_mean_w3(mu, h0a, h0b, w3m_ptr, C4A, C4B, two_pass)
        h1a, h1b = _hmlp_stage12(img_ptr, img_rows, pix, w1a, w1b, b1_ptr, w2_ptr, b2_ptr, lnw_ptr,
                                 lnb_ptr, eps, s_ih, s_iw, 1, C4, C4A, C4B, IS_LN, DOT_PREC, BLOCK_P)
        mu = _row_mean_w3(mu, h1a, h1b, w3m_ptr + C4T, C4A, C4B, two_pass)
        h2a, h2b = _hmlp_stage12(img_ptr, img_rows, pix, w1a, w1b, b1_ptr, w2_ptr, b2_ptr, lnw_ptr,
                                 lnb_ptr, eps, s_ih, s_iw, 2, C4, C4A, C4B, IS_LN, DOT_PREC, BLOCK_P)
        mu = _row_mean_w3(mu, h2a, h2b, w3m_ptr + 2 * C4T, C4A, C4B, two_pass)
        h3a, h3b = _hmlp_stage12(img_ptr, img_rows, pix, w1a, w1b, b1_ptr, w2_ptr, b2_ptr, lnw_ptr,
                                 lnb_ptr, eps, s_ih, s_iw, 3, C4, C4A, C4B, IS_LN, DOT_PREC, BLOCK_P)
        mu = _row_mean_w3(mu, h3a, h3b, w3m_ptr + 3 * C4T, C4A, C4B, two_pass)
        if USE_PDL:
            gdc_launch_dependents()  # every image read is issued: the next kernel may start its prologue
        # (BLOCK_P,) output row pointers, formed here rather than with the other index math: 64-bit values not
        # needed by stages 1-2 would stay live through them
        out_rows = _token_rows(out_ptr, b, v, n, s_ob, s_on, HAS_CLS, BEIT)

        if two_pass:
            # Several E chunks: two passes through the output rows (see the module docstring); mu = μ'.
            s1 = tl.zeros((BLOCK_P,), dtype=tl.float32)
            s2 = tl.zeros((BLOCK_P,), dtype=tl.float32)
            for e0 in range(0, E, BLOCK_E):
                acc, offs_e, e_ok = _hmlp_stage3(h0a, h0b, h1a, h1b, h2a, h2b, h3a, h3b, w3_ptr, e0,
                                                 E, C4A, C4B, DOT_PREC, BLOCK_P, BLOCK_E)
                y = acc + tl.load(b3_ptr + offs_e, mask=e_ok, other=0.0)[None, :]
                d = tl.where(e_ok[None, :], y - mu[:, None], 0.0)
                s1 += tl.sum(d, 1)
                s2 += tl.sum(d * d, 1)
                tl.store(out_rows[:, None] + offs_e[None, :], d.to(OUT_DT), mask=vis[:, None] & e_ok[None, :])
            dm = s1 / E
            rstd = 1.0 / tl.sqrt(tl.maximum(s2 / E - dm * dm, 0.0) + eps)
            tl.debug_barrier()  # pass 2 reads rows other threads of this program wrote
            for e0 in range(0, E, BLOCK_E):
                offs_e = e0 + tl.arange(0, BLOCK_E)
                e_ok = offs_e < E
                m = vis[:, None] & e_ok[None, :]
                d = tl.load(out_rows[:, None] + offs_e[None, :], mask=m, other=0.0).to(tl.float32)
                g = tl.load(ln3w_ptr + offs_e, mask=e_ok, other=0.0)
                bb = tl.load(ln3b_ptr + offs_e, mask=e_ok, other=0.0)
                y = (d - dm[:, None]) * rstd[:, None] * g[None, :] + bb[None, :]
                if HAS_POS:
                    y += tl.load(pos_ptr + n[:, None] * s_pn + offs_e[None, :] * s_pe, mask=m, other=0.0).to(
                        tl.float32)
                tl.store(out_rows[:, None] + offs_e[None, :], y.to(OUT_DT), mask=m)
        else:
            for e0 in range(0, E, BLOCK_E):
                acc, offs_e, e_ok = _hmlp_stage3(h0a, h0b, h1a, h1b, h2a, h2b, h3a, h3b, w3_ptr, e0,
                                                 E, C4A, C4B, DOT_PREC, BLOCK_P, BLOCK_E)
                y = acc + tl.load(b3_ptr + offs_e, mask=e_ok, other=0.0)[None, :]
                if IS_LN:  # E <= BLOCK_E: the whole row is in registers
                    g = tl.load(ln3w_ptr + offs_e, mask=e_ok, other=0.0)
                    bb = tl.load(ln3b_ptr + offs_e, mask=e_ok, other=0.0)
                    y = _ln_rows(y, g, bb, e_ok, E, eps)
                m = vis[:, None] & e_ok[None, :]
                if HAS_POS:
                    y += tl.load(pos_ptr + n[:, None] * s_pn + offs_e[None, :] * s_pe, mask=m, other=0.0).to(
                        tl.float32)
                tl.store(out_rows[:, None] + offs_e[None, :], y.to(OUT_DT), mask=m)

    if HAS_CLS or BEIT:
        if USE_PDL:
            gdc_wait()  # a program whose rows are all masked skipped the wait above (a no-op once waited)
        out_rows = _token_rows(out_ptr, b, v, n, s_ob, s_on, HAS_CLS, BEIT)
        for e0 in range(0, E, BLOCK_E):
            _write_extra_rows(out_ptr, out_rows, b, v, n, row_ok, vis, cls_ptr, mtok_ptr, pos_ptr, s_ob, s_pn, s_pe,
                              e0, E, HAS_CLS, BEIT, HAS_POS, BLOCK_E)


# ---------------------------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------------------------
# Unmeasured starting points (no GPU has run them yet), checked only by compiling for sm_90 on a CPU host
# (tests/test_sm90_compile.py; per-config table in bench/notes/hmlp_stem.md). All use 8 warps: the 4-warp versions of
# the same tiles stage twice the weight bytes per thread and spill. BLOCK_P is the N of every MMA (M is channels,
# so all get wgmma); BLOCK_E bounds the stage-3 accumulator and the W3 slice staged per dot. At E = 768 (bf16, pos +
# class token, triton 3.6 and 3.9):
#   (16, 128, 8): no spills, BN and LN, unmasked, MAE and BEiT; 80 KB of shared memory (96 KB at E = 1024).
#   (64, 64, 8): BN spills 72-96 B per thread (values kept from the index math to the epilogue), LN 0.34-0.36 KB
#   (its per-patch statistics cost 16 registers each at 64 patches); 152 KB (184 KB at E = 1024). Kept as an
#   autotune candidate of the large-batch list, not as its first config: it re-reads the 2.4 MB of weights from
#   L2 once per 64 patches instead of once per 16, which is predicted to matter more than its spills; the GPU
#   autotuner decides. No 32-patch tile: it spills under LN too (0.1-0.3 KB) without the 64-patch weight reuse.
# The first config of each list (what runs with TTF_TRITON_AUTOTUNE=0) is spill-free. The kernel is large (10-50 s
# per config to compile), so the lists are short and picked by row count (like linear.py).
def _config(bp, be, warps, stages=1):
    return triton.Config({"BLOCK_P": bp, "BLOCK_E": be}, num_warps=warps, num_stages=stages)


_CONFIGS_LARGE = [_config(16, 128, 8), _config(64, 64, 8)]
_CONFIGS_SMALL = [_config(16, 128, 8)]
#: Row counts (patches computed) at or below this use the small-tile list: ~10 images at 224 px.
SMALL_R = 2048
_KEY = ["R", "E", "C4", "IS_LN", "BEIT"]
_hmlp_stem_kernel_large = autotuned(_hmlp_stem_kernel, _CONFIGS_LARGE, _KEY)
_hmlp_stem_kernel_small = autotuned(_hmlp_stem_kernel, _CONFIGS_SMALL, _KEY)

#: fp32 weights (the accuracy path: IEEE dots on CUDA cores, no tensor cores): one config, no autotuning. Every
#: fp32 variant takes 1-2 min to compile; this one uses 160 KB of shared memory at E = 768 (sm_90 compile check)
#: and spills (0.6-2.6 KB per thread): slow, but exact.
_FP32_META = {"BLOCK_P": 16, "BLOCK_E": 64, "num_warps": 4, "num_stages": 1}

#: A triton.Config to launch instead of the launcher's choice, on the GPU and under the interpreter alike (its
#: BLOCK_P / BLOCK_E, warps and stages, no autotuning): tests and config sweeps set it to run each config of the
#: lists above. None: the normal choice (`launch_choice`).
_FORCED_CONFIG: Optional[triton.Config] = None

#: The single config used under the interpreter (autotuning there would re-run the interpreted kernel per config).
#: Tests lower BLOCK_E to exercise the several-chunk paths at tiny E.
_INTERPRETER_META = {"BLOCK_P": 16, "BLOCK_E": 64}


# ---------------------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HMLPStemWeights:
    """hMLP stem weights packed once for the kernel (see `prepare_hmlp_stem`). Shapes in the kernel comments."""

    norm: str                  # "bn" (folded) or "ln"
    in_chans: int
    embed_dim: int
    hidden: int                # C4 = E/4
    w1: torch.Tensor           # (C4T, K1P) compute dtype; C4T = C4A + C4B = sum(split_hidden(C4))
    b1: torch.Tensor           # (C4T,) fp32
    w2: torch.Tensor           # (4, C4T, C4T) compute dtype
    b2: torch.Tensor           # (C4T,) fp32
    w3: torch.Tensor           # (4, E, C4T) compute dtype
    b3: torch.Tensor           # (E,) fp32
    ln_w: Optional[torch.Tensor] = None    # (2, C4T) fp32, LN only
    ln_b: Optional[torch.Tensor] = None
    ln3_w: Optional[torch.Tensor] = None   # (E,) fp32
    ln3_b: Optional[torch.Tensor] = None
    w3_mean: Optional[torch.Tensor] = None  # (4, C4T) fp32
    b3_mean: float = 0.0
    eps: float = 1e-6

    @property
    def dtype(self) -> torch.dtype:
        return self.w1.dtype

    @property
    def device(self) -> torch.device:
        return self.w1.device

    def tensors(self) -> list[torch.Tensor]:
        names = ("w1", "b1", "w2", "b2", "w3", "b3", "ln_w", "ln_b", "ln3_w", "ln3_b", "w3_mean")
        return [t for t in (getattr(self, n) for n in names) if t is not None]


def prepare_hmlp_stem(folded, dtype: torch.dtype = torch.bfloat16,
                      device: torch.device | str | None = None) -> HMLPStemWeights:
    """Pack a folded hMLP stem for the kernel.

    folded: an object with attributes `norm` ("bn": BatchNorm folded into the convs, or "ln"), `w1`, `b1`, `w2`, `b2`,
    `w3`, `b3` (convs (E/4, C, 4, 4), (E/4, E/4, 2, 2), (E, E/4, 2, 2) and their biases) and, for "ln",
    `ln_weights` / `ln_biases` (three vectors each) and `eps` — `threethings_fast.stem_fold.HMLPStemFold`.

    Weights go to `dtype` (the kernel's compute and output dtype), biases and LN parameters stay fp32. The hidden
    width C4 = E/4 is stored as two power-of-two parts C4A + C4B (`split_hidden`; exact for E = 384, 768, 1024)
    and 16·in_chans is zero-padded to a power of two (>= 16, the smallest tl.dot tile). Run once at load time.
    """
    norm = getattr(folded, "norm", None)
    if norm not in ("bn", "ln") or not hasattr(folded, "w3"):
        raise ValueError(f"prepare_hmlp_stem needs a folded hMLP stem (norm 'bn' or 'ln' and convs w1..w3), got "
                         f"{type(folded).__name__}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    f64 = torch.float64
    w1, w2, w3 = (t.detach().to(f64) for t in (folded.w1, folded.w2, folded.w3))
    c4, c_in = w1.shape[0], w1.shape[1]
    e = w3.shape[0]
    if w1.shape[2:] != (4, 4) or w2.shape != (c4, c4, 2, 2) or w3.shape != (e, c4, 2, 2):
        raise ValueError(f"unexpected hMLP conv shapes w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}, "
                         f"w3 {tuple(w3.shape)}")
    device = torch.device(device) if device is not None else w1.device
    c4a, c4b = split_hidden(c4)
    c4t = c4a + c4b
    k1p = max(16, next_power_of_2(16 * c_in))

    def pad(t, shape):
        z = torch.zeros(shape, dtype=f64, device=t.device)
        z[tuple(slice(0, s) for s in t.shape)] = t
        return z

    # (out, in) per conv tap, the A operand of the kernel's transposed GEMMs: in-features contiguous
    p_w1 = pad(w1.reshape(c4, 16 * c_in), (c4t, k1p))                          # [out, (c, ky, kx)]
    p_w2 = pad(w2.permute(2, 3, 0, 1).reshape(4, c4, c4), (4, c4t, c4t))         # [j, out, in]
    p_w3 = pad(w3.permute(2, 3, 0, 1).reshape(4, e, c4), (4, e, c4t))            # [t, out, in]
    w3_lp = p_w3.to(dtype)
    fp32 = dict(dtype=torch.float32, device=device)
    out = dict(
        norm=norm, in_chans=c_in, embed_dim=e, hidden=c4,
        w1=p_w1.to(device=device, dtype=dtype).contiguous(),
        b1=pad(folded.b1.to(f64), (c4t,)).to(**fp32),
        w2=p_w2.to(device=device, dtype=dtype).contiguous(),
        b2=pad(folded.b2.to(f64), (c4t,)).to(**fp32),
        w3=w3_lp.to(device=device).contiguous(),
        b3=folded.b3.to(f64).to(**fp32).contiguous(),
    )
    if norm == "ln":
        ln_w, ln_b = folded.ln_weights, folded.ln_biases
        out.update(
            ln_w=torch.stack([pad(ln_w[i].to(f64), (c4t,)) for i in (0, 1)]).to(**fp32),
            ln_b=torch.stack([pad(ln_b[i].to(f64), (c4t,)) for i in (0, 1)]).to(**fp32),
            ln3_w=ln_w[2].to(f64).to(**fp32).contiguous(),
            ln3_b=ln_b[2].to(f64).to(**fp32).contiguous(),
            # channel mean of stage 3 as a linear map of h2, from the weights the kernel actually multiplies
            w3_mean=w3_lp.to(f64).mean(dim=1).to(**fp32).contiguous(),
            b3_mean=float(folded.b3.to(f64).to(torch.float32).to(f64).mean()),
            eps=float(folded.eps),
        )
    return HMLPStemWeights(**out)


# ---------------------------------------------------------------------------------------------------------------
# Launcher and registered op
# ---------------------------------------------------------------------------------------------------------------
def _hmlp_stem_launch(images, w1, b1, w2, b2, w3, b3, ln_w, ln_b, ln3_w, ln3_b, w3_mean, b3_mean, eps, hidden,
                      pos, cls, visible_idx, mask, mask_token, out) -> None:
    B, C, H, W = images.shape
    E = w3.shape[1]
    Hp, Wp = H // PATCH, W // PATCH
    N = Hp * Wp
    idx, mask_u8 = row_order(mask, visible_idx)
    S = idx.shape[1] if idx is not None else N
    R = B * S
    if B == 0 or skip_launch(images):
        return
    if R == 0:  # MAE with nothing visible: only class tokens
        if cls is not None:
            out[:, 0, :] = cls.to(out.dtype)
        return
    is_ln = ln_w is not None
    c4a, c4b = split_hidden(hidden)
    dummy = b1
    precision = "ieee"  # fp32 compute must match an fp32 reference; 16-bit operands ignore it

    def grid(meta):
        return (triton.cdiv(R, meta["BLOCK_P"]),)

    if _FORCED_CONFIG is not None:
        forced = _FORCED_CONFIG
        kernel, meta = _hmlp_stem_kernel, {**forced.kwargs, "num_warps": forced.num_warps,
                                           "num_stages": forced.num_stages}
    else:
        kernel, meta = launch_choice(_hmlp_stem_kernel,
                                     _hmlp_stem_kernel_small if R <= SMALL_R else _hmlp_stem_kernel_large,
                                     interpreter_meta=_INTERPRETER_META, fp32_meta=_FP32_META,
                                     fp32=w1.dtype == torch.float32)
    use_pdl = pdl_enabled(images)
    with device_guard(images):
        wrap_triton(kernel)[grid](
            images, w1, b1, w2, b2, w3, b3,
            ln_w if is_ln else dummy, ln_b if is_ln else dummy,
            ln3_w if is_ln else dummy, ln3_b if is_ln else dummy, w3_mean if is_ln else dummy,
            pos if pos is not None else dummy, cls if cls is not None else dummy,
            mask_token if mask_token is not None else dummy,
            idx if idx is not None else dummy, mask_u8 if mask_u8 is not None else dummy, out,
            R, S, N, Wp, float(b3_mean), float(eps),
            images.stride(0), images.stride(1), images.stride(2), images.stride(3),
            idx.stride(0) if idx is not None else 0, idx.stride(1) if idx is not None else 0,
            mask_u8.stride(0) if mask_u8 is not None else 0, mask_u8.stride(1) if mask_u8 is not None else 0,
            pos.stride(0) if pos is not None else 0, pos.stride(1) if pos is not None else 0,
            out.stride(0), out.stride(1),
            C_IN=C, E=E, C4=hidden, C4A=c4a, C4B=c4b, K1P=w1.shape[1],
            IS_LN=is_ln, HAS_POS=pos is not None, HAS_CLS=cls is not None, HAS_IDX=idx is not None,
            BEIT=mask is not None, DOT_PREC=precision, USE_PDL=use_pdl,
            **meta, **pdl_launch_kwargs(use_pdl),
        )


def _check_weights(w1, b1, w2, b2, w3, b3, ln_w, ln_b, ln3_w, ln3_b, w3_mean, hidden):
    check_tensor(w1, "w1", ndim=2)
    c4t, k1p = w1.shape
    E = w3.shape[1] if isinstance(w3, torch.Tensor) and w3.dim() == 3 else -1
    check_tensor(w2, "w2", ndim=3, shape=(4, c4t, c4t), dtype=w1.dtype)
    check_tensor(w3, "w3", ndim=3, shape=(4, None, c4t), dtype=w1.dtype)
    for t, name, shape in ((b1, "b1", (c4t,)), (b2, "b2", (c4t,)), (b3, "b3", (E,))):
        check_tensor(t, name, ndim=1, shape=shape, dtype=torch.float32)
    if ln_w is not None:
        for t, name, shape in ((ln_w, "ln_w", (2, c4t)), (ln_b, "ln_b", (2, c4t)), (ln3_w, "ln3_w", (E,)),
                               (ln3_b, "ln3_b", (E,)), (w3_mean, "w3_mean", (4, c4t))):
            if t is None:
                raise ValueError(f"LN stem: {name} is missing")
            check_tensor(t, name, ndim=len(shape), shape=shape, dtype=torch.float32)
    if hidden <= 0 or sum(split_hidden(hidden)) != c4t:
        raise ValueError(f"hidden ({hidden}) does not match the packed width {c4t} (see split_hidden)")
    return E, k1p // 16


def _hmlp_stem_op(images: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                  w3: torch.Tensor, b3: torch.Tensor, ln_w: Optional[torch.Tensor], ln_b: Optional[torch.Tensor],
                  ln3_w: Optional[torch.Tensor], ln3_b: Optional[torch.Tensor], w3_mean: Optional[torch.Tensor],
                  b3_mean: float, eps: float, hidden: int, in_chans: int, pos: Optional[torch.Tensor],
                  cls: Optional[torch.Tensor], visible_idx: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                  mask_token: Optional[torch.Tensor]) -> torch.Tensor:
    E, _ = _check_weights(w1, b1, w2, b2, w3, b3, ln_w, ln_b, ln3_w, ln3_b, w3_mean, hidden)
    *_, out_shape = check_stem_inputs(images, in_chans, E, PATCH, pos, cls, visible_idx, mask, mask_token)
    check_same_device(images=images, w1=w1)
    out = torch.empty(out_shape, dtype=w1.dtype, device=images.device)
    _hmlp_stem_launch(images, w1, b1, w2, b2, w3, b3, ln_w, ln_b, ln3_w, ln3_b, w3_mean, b3_mean, eps, hidden,
                      pos, cls, visible_idx, mask, mask_token, out)
    return out


_hmlp_stem_registered = register_op("hmlp_stem", _hmlp_stem_op)


def hmlp_stem(images: torch.Tensor, prepared: HMLPStemWeights, pos: Optional[torch.Tensor] = None,
              cls: Optional[torch.Tensor] = None, visible_idx: Optional[torch.Tensor] = None,
              mask: Optional[torch.Tensor] = None, mask_token: Optional[torch.Tensor] = None,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused hMLP stem (BN folded or LN), one launch: images -> tokens.

    Args:
        images: (B, C, H, W), C = prepared.in_chans, H and W positive multiples of 16 (non-square fine), float16 /
            bfloat16 / float32, any strides (NCHW or channels-last). Cast to prepared.dtype in-kernel.
        prepared: `prepare_hmlp_stem(fold_stem(stem), dtype, device)`; its dtype is the compute and output dtype.
        pos: optional (N, E) or (1, N, E) position embedding of the N = H/16·W/16 patches, added to every patch token
            (and to BEiT mask tokens) at its original patch number.
        cls: optional (E,) row written at token 0 of every sample, as is (add its position embedding yourself).
        visible_idx: optional int32/int64 (B, N_vis): MAE mode, compute only these patches, in this order.
        mask: optional bool (B, N), True = masked. Without mask_token: MAE mode with ascending visible indices; all
            samples must keep the same count (ValueError otherwise) and checking it syncs with the device — pass
            visible_idx instead to stay sync-free (CUDA graphs).
        mask_token: optional (E,): BEiT mode (needs mask or visible_idx). Masked positions get mask_token (+ pos);
            only visible patches are computed; samples may mask different counts.
        out: optional preallocated result (NaN-poisoning in tests); bypasses the registered op.

    Returns:
        tokens (B, [1 +] S, E) in prepared.dtype; S = N (no masking or BEiT) or N_vis (MAE).
        B = 0 returns an empty tensor without a launch. Registered as ``torch.ops.ttf.hmlp_stem``.
    """
    if not isinstance(prepared, HMLPStemWeights):
        raise TypeError("prepared must be the HMLPStemWeights returned by prepare_hmlp_stem")
    check_tensor(images, "images", ndim=4, contiguous=False)
    B, _, H, W = images.shape
    N = (H // PATCH) * (W // PATCH)
    E = prepared.embed_dim
    pos, cls, mask_token = flat_pos(pos, N, E), flat_vector(cls, "cls", E), flat_vector(mask_token,
                                                                                         "mask_token", E)
    visible_idx, mask, mask_token = resolve_masking(B, N, visible_idx, mask, mask_token, images.device)
    p = prepared
    args = (images, p.w1, p.b1, p.w2, p.b2, p.w3, p.b3, p.ln_w, p.ln_b, p.ln3_w, p.ln3_b, p.w3_mean,
            float(p.b3_mean), float(p.eps), int(p.hidden), int(p.in_chans), pos, cls, visible_idx, mask, mask_token)
    if out is None:
        return _hmlp_stem_registered(*args)
    _check_weights(*args[1:12], p.hidden)
    *_, out_shape = check_stem_inputs(images, p.in_chans, E, PATCH, pos, cls, visible_idx, mask, mask_token)
    check_out(out, "out", out_shape, p.dtype, images.device,
              {"images": images, "pos": pos, "cls": cls, "mask_token": mask_token})
    _hmlp_stem_launch(*args[:15], pos, cls, visible_idx, mask, mask_token, out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------------------------
def hmlp_stem_ref(images: torch.Tensor, folded: dict, pos=None, cls=None, visible_idx=None, mask=None,
                  mask_token=None, dtype: Optional[torch.dtype] = None, upcast: bool = False) -> torch.Tensor:
    """Plain-PyTorch hMLP stem from `fold_stem` weights (three strided convs), then pos / masking / class token.

    Works in `dtype` (default images.dtype), rounding after every op as an unfused model would; upcast=True
    computes and returns float64 (the oracle). Masking here is "mask after" (full grid, then select); the
    reference module's `forward_masked` is the "mask before" twin.
    """
    import torch.nn.functional as F
    dt = torch.float64 if upcast else (dtype or images.dtype)
    x = images.to(dt)
    ln = folded.norm == "ln"
    convs = ((folded.w1, folded.b1, 4), (folded.w2, folded.b2, 2), (folded.w3, folded.b3, 2))
    for i, (w, b, stride) in enumerate(convs, start=1):
        x = F.conv2d(x, w.to(dt), b.to(dt), stride=stride)
        if ln:
            x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), folded.ln_weights[i - 1].to(dt),
                             folded.ln_biases[i - 1].to(dt), folded.eps).permute(0, 3, 1, 2)
        if i < 3:
            x = F.gelu(x)
    tokens = x.flatten(2).transpose(1, 2)
    return select_tokens(tokens, pos, cls, visible_idx, mask, mask_token)
