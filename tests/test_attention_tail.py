"""Attention at sequence lengths that are not a multiple of the key block: the three key-block modes of the kernel
(no tail, a narrow tail block held through the key loop, the tail as the loop's last masked iteration), the tile
choice by padded work, and the online softmax's running max at logits past fp32's exp range.

Without CUDA the kernel runs under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before triton is
imported) at tiny shapes, fp32 and fp16 (bf16 ``tl.dot`` is wrong under the interpreter; bf16 runs on a GPU only).
The interpreter tile is switched through ``_INTERPRETER_META`` so both a 32-key and a 64-key block meet every tail.
Accuracy bound as in test_triton_ops: with the kernel's output f, the reference in the same low precision r and the
float64 reference r64, ``max|f − r64| <= 2·max|r − r64| + floor(dtype)``; outputs are NaN-poisoned through ``out=``.
"""
import importlib
import os
import random

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the import of the kernels

triton = pytest.importorskip("triton", reason="triton is not installed")

from threethings_fast.triton_kernels import SUPPORTED_HEAD_DIMS  # noqa: E402
from threethings_fast.triton_kernels._common import pdl_enabled  # noqa: E402
from helpers import NOT_INTERPRETED, assert_close_to_ref, kernels_runnable  # noqa: E402

# The package re-exports the function `attention`, which shadows the submodule attribute: go through importlib.
att = importlib.import_module("threethings_fast.triton_kernels.attention")

DEVICE = "cuda" if HAS_CUDA else "cpu"
needs_kernels = pytest.mark.skipif(not kernels_runnable(att._attention_kernel), reason=NOT_INTERPRETED)
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]


def kernel_test(fn):
    """Runs the kernel: skipped when it cannot, marked `interpreter` when it runs interpreted."""
    fn = needs_kernels(fn)
    return fn if HAS_CUDA else pytest.mark.interpreter(fn)


# (dtype, floor): the floor covers outputs whose reference error happens to be ~0 (N = 1: o = v exactly).
DTYPES = [
    pytest.param(torch.float32, 1e-6, id="fp32"),
    pytest.param(torch.float16, 1e-3, id="fp16"),
    pytest.param(torch.bfloat16, 8e-3, id="bf16", marks=gpu),
]

#: Interpreter tiles: 32x32 (the default) and 16 query rows x 64 keys, whose tails are 16, 32 or 64 keys wide. On a
#: GPU the launcher's own list decides the tile: one pass only.
TILES = [pytest.param({"BLOCK_M": 32, "BLOCK_N": 32}, id="32x32"), pytest.param({"BLOCK_M": 16, "BLOCK_N": 64},
                                                                                  id="16x64")][:1 if HAS_CUDA else 2]

#: Around every block edge (16, 32, 64) and short of it; plus a few lengths drawn once with a fixed seed.
EDGE_N = [1, 2, 15, 16, 17, 31, 33, 50, 64, 65]
RANDOM_N = sorted(random.Random(197).sample(range(3, 130), 3))


def poisoned(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def make_qkv(B, N, H, d, dtype, seed, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, N, 3 * H * d, generator=g) * scale).to(device=DEVICE, dtype=dtype)


def run_and_check(B, N, H, d, dtype, floor, seed, what, q_scale=None):
    qkv = make_qkv(B, N, H, d, dtype, seed)
    if q_scale is not None:
        qkv[..., :H * d] *= q_scale
    scale = d ** -0.5
    o = att.attention(qkv, H, d, scale, out=poisoned((B, N, H * d), dtype))
    assert_close_to_ref(o, att.attention_ref(qkv, H, d, scale), att.attention_ref(qkv, H, d, scale, upcast=True),
                        floor, what)
    return qkv, o


# ---------------------------------------------------------------------------------------------------------------
# Kernel runs
# ---------------------------------------------------------------------------------------------------------------
@kernel_test
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("dtype,floor", DTYPES)
@pytest.mark.parametrize("N", EDGE_N + RANDOM_N)
def test_tail_lengths(N, dtype, floor, tile, monkeypatch):
    """Every tail width and mode, 3 heads (K·H > 1: the head offsets into the packed qkv), 2 images."""
    for k, v in tile.items():
        monkeypatch.setitem(att._INTERPRETER_META, k, v)
    tail = att.tail_block(N, tile["BLOCK_N"])
    run_and_check(2, N, 3, 32, dtype, floor, seed=N, what=f"N={N} tile={tile} tail={tail}")


@kernel_test
@pytest.mark.parametrize("dtype,floor", DTYPES)
@pytest.mark.parametrize("d", SUPPORTED_HEAD_DIMS)
@pytest.mark.parametrize("N,tile", [
    pytest.param(33, {"BLOCK_M": 16, "BLOCK_N": 64}, id="N33-16x64-loop-tail"),    # tail 64 = BLOCK_N: masked loop
    pytest.param(17, {"BLOCK_M": 16, "BLOCK_N": 64}, id="N17-16x64-tail32"),       # narrow tail, empty key loop
    pytest.param(65, {"BLOCK_M": 32, "BLOCK_N": 32}, id="N65-32x32-tail16"),       # narrow tail after the loop
])
def test_head_dims(N, tile, d, dtype, floor, monkeypatch):
    """head_dim padding (80, 96 -> 128) together with the key tails; 2 heads."""
    for k, v in tile.items():
        monkeypatch.setitem(att._INTERPRETER_META, k, v)
    run_and_check(1, N, 2, d, dtype, floor, seed=1000 + d + N, what=f"N={N} d={d} tile={tile}")


@kernel_test
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("N", [17, 50, 65])
def test_logits_past_fp32_exp_range(N, tile, monkeypatch):
    """Scores of several hundred (exp(88) overflows fp32): only the running-max subtraction keeps them finite.
    The largest score must sit in the tail block too, so the last block rescales everything before it."""
    for k, v in tile.items():
        monkeypatch.setitem(att._INTERPRETER_META, k, v)
    B, H, d = 1, 2, 32
    qkv = make_qkv(B, N, H, d, torch.float32, seed=7)
    qkv[..., :H * d] *= 40.0
    qkv[:, N - 1, H * d:2 * H * d] *= 3.0  # the last key (in the tail) gets the largest scores of many rows
    q, k, _ = qkv.double().view(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
    assert (q @ k.transpose(-2, -1)).max().item() > 200.0, "the test needs logits far past 88"
    o = att.attention(qkv, H, d, 1.0, out=poisoned((B, N, H * d), torch.float32))
    assert_close_to_ref(o, att.attention_ref(qkv, H, d, 1.0), att.attention_ref(qkv, H, d, 1.0, upcast=True),
                        1e-5, f"large logits N={N}")


@kernel_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_repeat_is_bitwise_equal(dtype, monkeypatch):
    """No atomics, no order that depends on scheduling: two runs give the same bits (narrow-tail and loop-tail)."""
    for tile, N in [({"BLOCK_M": 32, "BLOCK_N": 32}, 37), ({"BLOCK_M": 16, "BLOCK_N": 64}, 45)]:
        for k, v in tile.items():
            monkeypatch.setitem(att._INTERPRETER_META, k, v)
        qkv = make_qkv(2, N, 2, 64, dtype, seed=11)
        o1 = att.attention(qkv, 2, 64, 0.125, out=poisoned((2, N, 128), dtype))
        o2 = att.attention(qkv, 2, 64, 0.125, out=poisoned((2, N, 128), dtype))
        assert torch.equal(o1, o2), f"N={N} tile={tile}: repeated runs differ"


@kernel_test
def test_pdl_flag_keeps_the_result(monkeypatch):
    """TTF_TRITON_PDL=1 never turns PDL on for interpreted (CPU) launches; on a GPU it may, and the bits stay."""
    qkv = make_qkv(1, 19, 2, 32, torch.float32, seed=3)
    o_off = att.attention(qkv, 2, 32, 0.2)
    monkeypatch.setenv("TTF_TRITON_PDL", "1")
    if not HAS_CUDA:
        assert not pdl_enabled(qkv)
    o_on = att.attention(qkv, 2, 32, 0.2, out=poisoned((1, 19, 64), torch.float32))
    assert torch.equal(o_on, o_off)


def test_pdl_off_by_default(monkeypatch):
    monkeypatch.delenv("TTF_TRITON_PDL", raising=False)
    assert not pdl_enabled(torch.empty(1, device=DEVICE))


# ---------------------------------------------------------------------------------------------------------------
# Tile choice (pure Python)
# ---------------------------------------------------------------------------------------------------------------
def test_tail_block_invariants():
    for block_n in (16, 32, 64, 128):
        for n in range(1, 1200):
            t = att.tail_block(n, block_n)
            r = n % block_n
            if r == 0:
                assert t == 0
                continue
            assert r <= t <= block_n and t >= 16 and t & (t - 1) == 0, (n, block_n, t)
            # Narrower than the block only where that saves keys, and then at most half of it.
            assert t == block_n or t <= block_n // 2, (n, block_n, t)
            assert t == block_n or r <= block_n // 2, (n, block_n, t)
    with pytest.raises(ValueError, match="power-of-two block_n"):
        att.tail_block(10, 48)
    with pytest.raises(ValueError, match="n >= 1"):
        att.tail_block(0, 64)


@pytest.mark.parametrize("n,bm,bn,tail,rows,keys", [
    (197, 128, 64, None, 256, 192 + 16),
    (197, 128, 64, 64, 256, 256),       # a full-width tail block (the kernel before narrow tails)
    (197, 64, 32, None, 256, 192 + 16),
    (197, 128, 128, None, 256, 256),    # r = 69 > 64: the tail runs as a full block inside the loop
    (577, 128, 64, None, 640, 576 + 16),
    (50, 64, 64, None, 64, 64),
    (1, 64, 32, None, 64, 16),
    (785, 64, 64, None, 832, 768 + 32),
    (256, 128, 64, None, 256, 256),
])
def test_padded_work_counts(n, bm, bn, tail, rows, keys):
    assert att.padded_work(n, bm, bn, tail) == pytest.approx(rows * keys / n ** 2, rel=1e-12)


#: ViT sequence lengths: 224/16 (197), 384/16 (577), 224/32 (50), 448/16 (785), 224/14 (257), 192/16 (145), and 1.
REAL_N = [197, 577, 50, 785, 257, 145, 1]


@pytest.mark.parametrize("N", REAL_N)
@pytest.mark.parametrize("bucket", [16, 1024])
@pytest.mark.parametrize("d", [64, 80])
def test_configs_order_by_padded_work(N, bucket, d):
    cfgs = att.attention_configs(N, d, bucket)
    assert cfgs, "empty autotune list"
    work = [att.padded_work(N, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["TAIL_N"]) for c in cfgs]
    least = min(att.padded_work(N, bm, bn) for bm, bn, _, _ in att._TILES)
    assert work[0] <= least * att._PAD_TIE, f"first config does {work[0]:.3f}x, the best tile {least:.3f}x"
    assert max(work) < least * att._PAD_PRUNE
    for c in cfgs:
        assert c.kwargs["TAIL_N"] == att.tail_block(N, c.kwargs["BLOCK_N"])
    # Never more padded work than the same first tile with a full-width tail block (the kernel before).
    first = cfgs[0].kwargs
    assert work[0] <= att.padded_work(N, first["BLOCK_M"], first["BLOCK_N"], first["BLOCK_N"])
    # The autotuner holds the same list (TTF_TRITON_AUTOTUNE=0 launches its first config).
    assert list(att._tuned_kernel(N, d, bucket, att._DEFAULT_SMS).configs) == list(cfgs)


def test_padded_work_before_and_after():
    """The shapes of the models, against the previous kernel's first config (128x64, full-width tail block)."""
    expect_after = {197: 1.372, 577: 1.138, 50: 1.638, 1: 1024.0, 785: 1.163}
    for n, want in expect_after.items():
        c = att.attention_configs(n, 64, 1024)[0].kwargs
        after = att.padded_work(n, c["BLOCK_M"], c["BLOCK_N"], c["TAIL_N"])
        before = att.padded_work(n, 128, 64, 64)
        assert after == pytest.approx(want, abs=1e-3), (n, after)
        assert after <= before, (n, before, after)
    assert att.padded_work(197, 128, 64, 64) == pytest.approx(256 * 256 / 197 ** 2)  # the 1.69x of the issue


def test_small_grids_prefer_more_programs():
    """At batch 1 (24 (image, head) pairs, bucket 32) 64-row tiles give twice the programs: they come first."""
    assert att.attention_configs(197, 64, 32)[0].kwargs["BLOCK_M"] == 64
    assert att.attention_configs(197, 64, 1024)[0].kwargs["BLOCK_M"] == 128


@kernel_test
@pytest.mark.parametrize("N", [15, 50, 65])
def test_launcher_runs_the_first_gpu_config(N, monkeypatch):
    """With TTF_TRITON_AUTOTUNE=0 the launcher runs the first config of attention_configs, TAIL_N included (here
    interpreted: the GPU tile under the interpreter)."""
    from threethings_fast.triton_kernels import _common
    monkeypatch.setenv("TTF_TRITON_AUTOTUNE", "0")
    seen = {}

    def first_config(kernel, tuned, **_):
        _, meta = _common.tuned_or_first(tuned)
        seen.update(meta)
        return kernel, {k: v for k, v in meta.items() if k not in ("num_warps", "num_stages")}

    monkeypatch.setattr(att, "launch_choice", first_config)
    run_and_check(1, N, 2, 32, torch.float16, 1e-3, seed=50 + N, what=f"first GPU config N={N}")
    want = att.attention_configs(N, 32, att._work_bucket(1, 2), att._num_sms(torch.empty(0, device=DEVICE)))[0]
    assert seen == {**want.kwargs, "num_warps": want.num_warps, "num_stages": want.num_stages}
