"""Stems: the masking property of the reference (exact, float64) and the fused Triton stems (hMLP, linear).

Reference: masking before the stem (run it on the visible patches only) equals masking after (run it on every
patch, then select / replace) bit for bit in float64, and hidden patches cannot leak into visible tokens (NaN in the
hidden pixels leaves the visible tokens unchanged, bit for bit).

Fused kernels (CPU: Triton interpreter, tiny shapes): the error against the float64 reference is bounded by the
reference's own low-precision error, ``max|f − r64| <= 2·max|r_lowp − r64| + atol``; outputs NaN-poisoned through ``out=``; fp32 and fp16 here, bf16
on GPU only (``tl.dot`` on bf16 is wrong under the interpreter). TRITON_INTERPRET=1 is set by tests/conftest.py
(and here) before triton is imported.
"""
import importlib
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the import of the kernels

from threethings_fast.stem_fold import fold_stem  # noqa: E402
from threethings_fast.reference.stems import (HMLPStem, PatchEmbed, extract_patches, indices_to_mask,  # noqa: E402
                                              mask_to_indices)

from helpers import kernels_interpreted, assert_within_bound  # noqa: E402

triton = pytest.importorskip("triton", reason="triton is not installed")

# The package may re-export the functions `hmlp_stem` / `patch_embed`, shadowing the submodule attributes.
hs = importlib.import_module("threethings_fast.triton_kernels.hmlp_stem")
pe = importlib.import_module("threethings_fast.triton_kernels.patch_embed")
from threethings_fast.triton_kernels._common import interpreter_active  # noqa: E402




DEVICE = "cuda" if HAS_CUDA else "cpu"
needs_kernels = pytest.mark.skipif(
    not HAS_CUDA and not (interpreter_active() and kernels_interpreted(hs._hmlp_stem_kernel)),
    reason="the Triton kernels were imported before TRITON_INTERPRET=1 was set; run pytest with TRITON_INTERPRET=1")

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]
DTYPES_GPU = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]  # tl.dot bf16: GPU only


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def make_stem(kind: str, E: int, in_chans: int = 3, dtype=torch.float64, device="cpu"):
    """Reference stem with non-trivial norms ("bn", "ln" or "linear"), eval mode."""
    stem = PatchEmbed(16, in_chans, E) if kind == "linear" else HMLPStem(in_chans, E, norm=kind)
    for m in stem.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
            m.weight.copy_(1 + 0.3 * torch.randn_like(m.weight))
            m.bias.copy_(0.2 * torch.randn_like(m.bias))
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.3 * torch.randn_like(m.running_mean))
            m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
    return stem.to(device=device, dtype=dtype).eval()


def images(B, H, W, dtype=torch.float32, channels_last=False, C=3, device=None):
    x = torch.randn(B, C, H, W, dtype=torch.float32, device=device or DEVICE).to(dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def fixed_count_mask(B, N, ratio, device="cpu"):
    """bool (B, N), True = masked, the same number round(ratio·N) of masked patches in every sample."""
    n_mask = int(round(ratio * N))
    order = torch.rand(B, N, device=device).argsort(1)
    return torch.zeros(B, N, dtype=torch.bool, device=device).scatter(1, order[:, :n_mask], True)


def poisoned(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def check(out, ref_lowp, ref64, dtype):
    assert out.shape == ref64.shape, (out.shape, ref64.shape)
    if out.numel():
        assert_within_bound(out, ref_lowp, ref64, dtype)


def run_hmlp(x, folded, dtype, **kw):
    """Fused hMLP stem into a NaN-poisoned out= buffer, plus the two references."""
    prepared = hs.prepare_hmlp_stem(folded, dtype, x.device)
    ref64 = hs.hmlp_stem_ref(x, folded, upcast=True, **kw)
    ref_lowp = hs.hmlp_stem_ref(x, folded, dtype=dtype, **kw)
    out = hs.hmlp_stem(x, prepared, out=poisoned(ref64.shape, dtype), **kw)
    return out, ref_lowp, ref64


# ---------------------------------------------------------------------------------------------------------------
# reference: masking before == masking after (exact, float64)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bn", "ln", "linear"])
@pytest.mark.parametrize("ratio", [0.0, 0.4, 0.75, 1.0])
def test_reference_mask_before_equals_after_exactly(kind, ratio):
    stem = make_stem(kind, 32)
    x = torch.randn(3, 3, 48, 64, dtype=torch.float64)
    B, N, E = 3, 12, 32
    with torch.no_grad():
        full = stem.forward_masked(x)                                  # every patch, as a batch of 16×16 images
        # MAE: equal visible counts, tokens of the visible patches only
        mask = fixed_count_mask(B, N, ratio)
        idx = mask_to_indices(mask)
        mae = stem.forward_masked(x, mask=mask)
        assert mae.shape == (B, N - int(round(ratio * N)), E)
        assert torch.equal(mae, torch.gather(full, 1, idx[:, :, None].expand(-1, -1, E)))
        # MAE with visible_idx in a random order
        perm = idx[:, torch.randperm(idx.shape[1])]
        assert torch.equal(stem.forward_masked(x, visible_idx=perm),
                           torch.gather(full, 1, perm[:, :, None].expand(-1, -1, E)))
        # BEiT: per-sample counts may differ; masked positions get the mask token
        bmask = torch.rand(B, N) < ratio
        token = torch.randn(E, dtype=torch.float64)
        beit = stem.forward_masked(x, mask=bmask, mode="beit", mask_token=token)
        assert torch.equal(beit, torch.where(bmask[:, :, None], token, full))
        # the whole-image forward agrees up to the conv backend's blocking only
        torch.testing.assert_close(full, stem(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["bn", "ln", "linear"])
def test_reference_hidden_patches_do_not_leak(kind):
    """NaN in hidden patches leaves every visible token of the whole-image forward unchanged, bit for bit."""
    stem = make_stem(kind, 32)
    x = torch.randn(2, 3, 32, 64, dtype=torch.float64)
    mask = torch.rand(2, 8) < 0.5
    pix = mask.reshape(2, 1, 2, 1, 4, 1).expand(2, 3, 2, 16, 4, 16).reshape(2, 3, 32, 64)
    with torch.no_grad():
        clean, dirty = stem(x), stem(x.masked_fill(pix, float("nan")))
    assert torch.equal(clean[~mask], dirty[~mask])
    assert torch.isnan(dirty[mask]).all()


def test_reference_mask_helpers():
    mask = torch.tensor([[True, False, False, True], [False, True, False, True]])
    idx = mask_to_indices(mask)
    assert idx.tolist() == [[1, 2], [0, 2]]
    assert torch.equal(indices_to_mask(idx, 4), mask)
    with pytest.raises(ValueError, match="same number of visible patches"):
        mask_to_indices(torch.tensor([[True, False, False], [False, False, False]]))
    x = torch.arange(2 * 3 * 32 * 48, dtype=torch.float64).reshape(2, 3, 32, 48)
    p = extract_patches(x, 16)
    assert p.shape == (2, 6, 3, 16, 16) and torch.equal(p[1, 4], x[1, :, 16:32, 16:32])
    stem = make_stem("bn", 16)
    with pytest.raises(ValueError, match="same number"):
        stem.forward_masked(torch.zeros(2, 3, 16, 32, dtype=torch.float64),
                            mask=torch.tensor([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="mask_token"):
        stem.forward_masked(torch.zeros(1, 3, 16, 16, dtype=torch.float64), mask=torch.zeros(1, 1, dtype=torch.bool),
                            mode="beit")
    with pytest.raises(ValueError, match="bool tensor"):
        stem.forward_masked(torch.zeros(1, 3, 16, 16, dtype=torch.float64), mask=torch.zeros(1, 1))


# ---------------------------------------------------------------------------------------------------------------
# fused hMLP stem vs reference (interpreter on CPU)
# ---------------------------------------------------------------------------------------------------------------
@needs_kernels
@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["bn", "ln"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_hmlp_stem_matches_reference(norm, dtype, channels_last):
    stem = make_stem(norm, 96)                              # C4 = 24: both hidden tiles (16 + 16) carry channels
    x = images(2, 32, 48, channels_last=channels_last)      # non-square: 2×3 patches
    out, ref_lowp, ref64 = run_hmlp(x, fold_stem(stem), dtype)
    check(out, ref_lowp, ref64, dtype)
    # the fold is exact: the float64 reference from folded weights is the module itself
    torch.testing.assert_close(ref64, stem(x.double().cpu()).to(ref64.device), rtol=0, atol=1e-12)


@needs_kernels
@pytest.mark.interpreter
@pytest.mark.parametrize("norm", ["bn", "ln"])
@pytest.mark.parametrize("E, block_e", [(48, 16), (96, 64), (192, 64), (16, 16)],
                         ids=["E48-3chunks", "E96-2chunks", "E192-3chunks", "E16"])
def test_hmlp_stem_e_chunks_and_odd_widths(norm, E, block_e, monkeypatch):
    """E not a power of two, hidden widths split in two tiles (C4 = 24 -> 16 + 16, 48 -> 32 + 16), several stage-3
    chunks (LN: the two-pass path)."""
    monkeypatch.setitem(hs._INTERPRETER_META, "BLOCK_E", block_e)
    folded = fold_stem(make_stem(norm, E))
    x = images(3, 16, 32, dtype=torch.float16)              # fp16 image, fp32 compute
    out, ref_lowp, ref64 = run_hmlp(x, folded, torch.float32)
    check(out, ref_lowp, ref64, torch.float32)
    pos, cls, token = (torch.randn(2, E, device=DEVICE), torch.randn(E, device=DEVICE),
                       torch.randn(E, device=DEVICE))
    mask = torch.tensor([[True, False], [False, False], [True, True]], device=DEVICE)
    out, ref_lowp, ref64 = run_hmlp(x, folded, torch.float32, pos=pos, cls=cls, mask=mask, mask_token=token)
    check(out, ref_lowp, ref64, torch.float32)


def test_split_hidden():
    assert [hs.split_hidden(c) for c in (192, 96, 256, 48, 24, 8)] == [
        (128, 64), (64, 32), (128, 128), (32, 16), (16, 16), (16, 16)]
    for c in range(1, 600):
        a, b = hs.split_hidden(c)
        assert a + b >= c and a >= 16 and b >= 16 and a & (a - 1) == 0 and b & (b - 1) == 0


@needs_kernels
@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["bn", "ln"])
def test_hmlp_stem_pos_cls(norm, dtype):
    E = 32
    folded = fold_stem(make_stem(norm, E))
    x = images(2, 48, 32)
    pos = torch.randn(6, E, device=DEVICE)
    cls = torch.randn(E, device=DEVICE)
    out, ref_lowp, ref64 = run_hmlp(x, folded, dtype, pos=pos, cls=cls)
    assert out.shape == (2, 7, E)
    check(out, ref_lowp, ref64, dtype)


@needs_kernels
@pytest.mark.interpreter
@pytest.mark.parametrize("norm", ["bn", "ln"])
@pytest.mark.parametrize("ratio", [0.4, 0.75, 1.0])
def test_hmlp_stem_masked_mae(norm, ratio):
    E, B, N = 32, 3, 12
    stem = make_stem(norm, E)
    folded = fold_stem(stem)
    x = images(B, 48, 64)
    pos, cls = torch.randn(N, E, device=DEVICE), torch.randn(E, device=DEVICE)
    mask = fixed_count_mask(B, N, ratio, device=DEVICE)
    # visible_idx in a random order (MAE keeps its shuffle order), and the bool-mask path (ascending, syncs)
    idx = mask_to_indices(mask)
    idx = idx[:, torch.randperm(idx.shape[1], device=DEVICE)]
    for kw in (dict(visible_idx=idx), dict(visible_idx=idx.int(), cls=cls), dict(mask=mask, pos=pos, cls=cls)):
        out, ref_lowp, ref64 = run_hmlp(x, folded, torch.float32, **kw)
        n_vis = N - int(round(ratio * N))
        assert out.shape == (B, ("cls" in kw) + n_vis, E)
        check(out, ref_lowp, ref64, torch.float32)
    # against the reference module's mask-before path
    prepared = hs.prepare_hmlp_stem(folded, torch.float32, DEVICE)
    with torch.no_grad():
        before = stem.forward_masked(x.double().cpu(), visible_idx=idx.cpu())
    torch.testing.assert_close(hs.hmlp_stem(x, prepared, visible_idx=idx).double().cpu(), before,
                               rtol=0, atol=1e-5)


@needs_kernels
@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["bn", "ln"])
def test_hmlp_stem_masked_beit(norm, dtype):
    E, B, N = 32, 3, 12
    folded = fold_stem(make_stem(norm, E))
    x = images(B, 48, 64)
    pos, cls, token = (torch.randn(N, E, device=DEVICE), torch.randn(E, device=DEVICE),
                       torch.randn(E, device=DEVICE))
    mask = torch.rand(B, N, device=DEVICE) < 0.4           # different counts per sample are fine in BEiT mode
    mask[0] = True                                          # a sample with every patch masked
    out, ref_lowp, ref64 = run_hmlp(x, folded, dtype, mask=mask, mask_token=token, pos=pos, cls=cls)
    assert out.shape == (B, 1 + N, E)
    check(out, ref_lowp, ref64, dtype)
    idx = mask_to_indices(fixed_count_mask(B, N, 0.5, device=DEVICE))
    out, ref_lowp, ref64 = run_hmlp(x, folded, dtype, visible_idx=idx, mask_token=token)
    check(out, ref_lowp, ref64, dtype)


@needs_kernels
@pytest.mark.interpreter
def test_hmlp_stem_registered_op_and_empty_batch():
    E = 32
    folded = fold_stem(make_stem("ln", E))
    p = hs.prepare_hmlp_stem(folded, torch.float32, DEVICE)
    x = images(1, 16, 16)
    y = torch.ops.ttf.hmlp_stem(x, p.w1, p.b1, p.w2, p.b2, p.w3, p.b3, p.ln_w, p.ln_b, p.ln3_w, p.ln3_b, p.w3_mean,
                                p.b3_mean, p.eps, p.hidden, p.in_chans, None, None, None, None, None)
    torch.testing.assert_close(y, hs.hmlp_stem(x, p))
    assert hs.hmlp_stem(images(0, 32, 32), p).shape == (0, 4, E)
    assert hs.hmlp_stem(images(0, 32, 32), p, cls=torch.zeros(E, device=DEVICE)).shape == (0, 5, E)


# ---------------------------------------------------------------------------------------------------------------
# fused linear stem
# ---------------------------------------------------------------------------------------------------------------
@needs_kernels
@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_patch_embed_matches_reference(dtype, channels_last):
    E, B, N = 48, 2, 6
    stem = make_stem("linear", E)
    f = fold_stem(stem)
    x = images(B, 32, 48, channels_last=channels_last)
    w, b = f.weight.to(DEVICE, dtype), f.bias.to(DEVICE, torch.float32)
    pos, cls, token = (torch.randn(N, E, device=DEVICE), torch.randn(E, device=DEVICE),
                       torch.randn(E, device=DEVICE))
    mask = fixed_count_mask(B, N, 0.5, device=DEVICE)
    for kw in (dict(), dict(pos=pos, cls=cls), dict(mask=mask, pos=pos),
               dict(mask=mask, mask_token=token, pos=pos, cls=cls)):
        ref64 = pe.patch_embed_ref(x, f.weight, f.bias, upcast=True, **kw)
        ref_lowp = pe.patch_embed_ref(x, w, b, dtype=dtype, **kw)
        out = pe.patch_embed(x, w, b, out=poisoned(ref64.shape, dtype), **kw)
        check(out, ref_lowp, ref64, dtype)
    conv_w = stem.proj.weight.to(DEVICE, dtype)                # the conv-shaped weight works as is
    torch.testing.assert_close(pe.patch_embed(x, conv_w, b), pe.patch_embed(x, w, b))


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------
@needs_kernels
@pytest.mark.interpreter
def test_bad_inputs(monkeypatch):
    E = 32
    p = hs.prepare_hmlp_stem(fold_stem(make_stem("bn", E)), torch.float32, DEVICE)
    x = images(2, 32, 32)                                   # N = 4
    with pytest.raises(ValueError, match="3 channels"):
        hs.hmlp_stem(images(2, 32, 32, C=4), p)
    with pytest.raises(ValueError, match="multiples of 16"):
        hs.hmlp_stem(images(2, 32, 40), p)
    with pytest.raises(TypeError, match="bool"):
        hs.hmlp_stem(x, p, mask=torch.zeros(2, 4, device=DEVICE))
    with pytest.raises(ValueError, match="shape"):
        hs.hmlp_stem(x, p, mask=torch.zeros(2, 5, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="same number of visible patches"):
        hs.hmlp_stem(x, p, mask=torch.tensor([[True, False, False, False], [False] * 4], device=DEVICE))
    with pytest.raises(ValueError, match="not both"):
        hs.hmlp_stem(x, p, mask=torch.zeros(2, 4, dtype=torch.bool, device=DEVICE),
                     visible_idx=torch.zeros(2, 1, dtype=torch.long, device=DEVICE))
    with pytest.raises(ValueError, match="needs mask"):
        hs.hmlp_stem(x, p, mask_token=torch.zeros(E, device=DEVICE))
    with pytest.raises(TypeError, match="int32/int64"):
        hs.hmlp_stem(x, p, visible_idx=torch.zeros(2, 1, device=DEVICE))
    with pytest.raises(ValueError, match="visible_idx"):
        hs.hmlp_stem(x, p, visible_idx=torch.zeros(2, 5, dtype=torch.long, device=DEVICE))
    with pytest.raises(ValueError, match="pos"):
        hs.hmlp_stem(x, p, pos=torch.zeros(5, E, device=DEVICE))
    with pytest.raises(ValueError, match="cls"):
        hs.hmlp_stem(x, p, cls=torch.zeros(E + 1, device=DEVICE))
    with pytest.raises(ValueError, match="out"):
        hs.hmlp_stem(x, p, out=poisoned((2, 5, E), torch.float32))
    with pytest.raises(ValueError, match="folded hMLP stem"):
        hs.prepare_hmlp_stem(fold_stem(make_stem("linear", E)), torch.float32, DEVICE)
    with pytest.raises(TypeError, match="prepared"):
        hs.hmlp_stem(x, fold_stem(make_stem("bn", E)))
    with pytest.raises(ValueError, match="channels"):
        pe.patch_embed(images(2, 32, 32, C=4), torch.zeros(E, 768, device=DEVICE))
    with pytest.raises(ValueError, match="multiples of 16"):
        pe.patch_embed(images(2, 32, 24), torch.zeros(E, 768, device=DEVICE))
    if not HAS_CUDA:  # CPU tensors are accepted only under the interpreter
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="CPU tensor"):
            hs.hmlp_stem(x, p)
        with pytest.raises(RuntimeError, match="CPU tensor"):
            pe.patch_embed(x, torch.zeros(E, 768))


# ---------------------------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------------------------
# Each (E, norm, dtype) is a kernel variant that autotunes over 2-3 configs of ~10-50 s compile each: a chosen
# subset rather than the full product.
GPU_VARIANTS = [
    pytest.param(384, "bn", torch.bfloat16, id="E384-bn-bf16"),
    pytest.param(384, "ln", torch.float16, id="E384-ln-fp16"),
    pytest.param(768, "bn", torch.bfloat16, id="E768-bn-bf16"),
    pytest.param(768, "ln", torch.bfloat16, id="E768-ln-bf16"),
    pytest.param(768, "bn", torch.float16, id="E768-bn-fp16"),
    pytest.param(1024, "bn", torch.bfloat16, id="E1024-bn-bf16"),
    pytest.param(1024, "ln", torch.bfloat16, id="E1024-ln-bf16"),
]


@pytest.mark.parametrize("E, norm, dtype", GPU_VARIANTS)
@pytest.mark.parametrize("B, px", [(1, 224), (256, 224), (1, 384), (32, 384)])
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_hmlp_stem_gpu(E, norm, dtype, B, px):
    folded = fold_stem(make_stem(norm, E)).to(device="cuda")
    x = images(B, px, px, dtype=dtype, channels_last=B > 1)
    N = (px // 16) ** 2
    pos, cls = torch.randn(N, E, device="cuda") * 0.1, torch.randn(E, device="cuda")
    out, ref_lowp, ref64 = run_hmlp(x, folded, dtype, pos=pos, cls=cls)
    check(out, ref_lowp, ref64, dtype)


@pytest.mark.parametrize("dtype", DTYPES_GPU)
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_masked_and_linear_gpu(dtype):
    E, B, N = 768, 64, 196
    folded = fold_stem(make_stem("ln", E)).to(device="cuda")
    x = images(B, 224, 224)
    idx = mask_to_indices(fixed_count_mask(B, N, 0.75, device="cuda"))
    check(*run_hmlp(x, folded, dtype, visible_idx=idx), dtype)
    token = torch.randn(E, device="cuda")
    check(*run_hmlp(x, folded, dtype, mask=torch.rand(B, N, device="cuda") < 0.4, mask_token=token), dtype)
    f = fold_stem(make_stem("linear", E))
    w, b = f.weight.to("cuda", dtype), f.bias.to("cuda", torch.float32)
    ref64 = pe.patch_embed_ref(x, f.weight.cuda(), f.bias.cuda(), upcast=True)
    check(pe.patch_embed(x, w, b), pe.patch_embed_ref(x, w, b, dtype=dtype), ref64, dtype)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_opcheck_gpu():
    E = 384
    p = hs.prepare_hmlp_stem(fold_stem(make_stem("ln", E)), torch.bfloat16, "cuda")
    x = images(2, 64, 48, dtype=torch.bfloat16)
    idx = torch.tensor([[0, 5, 3], [11, 2, 7]], device="cuda")
    args = (x, p.w1, p.b1, p.w2, p.b2, p.w3, p.b3, p.ln_w, p.ln_b, p.ln3_w, p.ln3_b, p.w3_mean, p.b3_mean, p.eps,
            p.hidden, p.in_chans, None, torch.randn(E, device="cuda"), idx, None, None)
    torch.library.opcheck(torch.ops.ttf.hmlp_stem.default, args)
    w = torch.randn(E, 768, device="cuda", dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.ttf.patch_embed.default, (x, w, None, 16, None, None, idx, None, None))
    # compiled graphs trace through the triton_op
    f = torch.compile(lambda im: hs.hmlp_stem(im, p, visible_idx=idx), fullgraph=True)
    torch.testing.assert_close(f(x), hs.hmlp_stem(x, p, visible_idx=idx))


