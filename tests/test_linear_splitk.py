"""Split-K, shape-aware tiles and the autotune key of `linear` (threethings_fast.triton_kernels.linear).

Split-K runs the K loop as S ranges whose fp32 partials go to a (S, M, N) workspace, then a reduction kernel sums them
in a fixed order and applies the epilogue. Under the interpreter (no GPU) the split count is forced (``_split_k``,
``TTF_LINEAR_SPLIT_K``) at tiny shapes: S = 1..4 with K not a multiple of BLOCK_K (32 here) and S not dividing the K
steps, including ranges past K (S > steps), M and N not multiples of the tile, every epilogue, fp32 and fp16.

Outputs, output statistics and the workspace are NaN-poisoned before the launch, so an element no program writes
fails. Bounds as in test_triton_ops: ``max|f − r64| <= 2·max|r − r64| + atol`` with r the same chain in the low
precision (linear_ref) and r64 in float64. The choice rules (split count, tile list) are pure functions, checked at
the S18x2 shapes (D = 384, 2 branches, F = 1536: proj, fc2, qkv, fc1 at M = 197·B) on 132 SMs.
"""
import importlib
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the import of the kernels

triton = pytest.importorskip("triton", reason="triton is not installed")

from threethings_fast.triton_kernels import (STAT_W, RowStats, column_sums, linear, linear_ref,  # noqa: E402
                                             row_stats, row_stats_ref)
from threethings_fast.triton_kernels._common import interpreter_active  # noqa: E402
from helpers import NOT_INTERPRETED, assert_close_to_ref, kernels_runnable  # noqa: E402

# The package re-exports the function `linear`, which shadows the submodule attribute: go through sys.modules.
lin = importlib.import_module("threethings_fast.triton_kernels.linear")

DEVICE = "cuda" if HAS_CUDA else "cpu"
needs_kernels = pytest.mark.skipif(not kernels_runnable(lin._linear_kernel), reason=NOT_INTERPRETED)

# (dtype, atol): atol covers values whose reference error happens to be ~0. bf16 tl.dot is wrong under the interpreter.
DTYPES = [pytest.param(torch.float32, 1e-5, id="fp32"), pytest.param(torch.float16, 2e-3, id="fp16")]
SPLITS = [1, 2, 3, 4]


def assert_stats_close(got: RowStats, want: RowStats, what: str):
    assert got.width == want.width and got.partials.shape == want.partials.shape, (got.width, want.width)
    assert got.partials.dtype == torch.float32 and torch.isfinite(got.partials).all(), what
    g, w = got.partials.double().cpu(), want.partials.cpu()
    tol = 2e-5 * (w.abs() + w[..., 1:].abs().amax() ** 0.5) + 1e-6  # fp32: relative to each quantity's magnitude
    assert ((g - w).abs() <= tol).all(), f"{what}: max err {(g - w).abs().max().item():.3g}"


def poisoned(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def randn(*shape, dtype=torch.float32, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)


def residual_stream(M, D, dtype, seed):
    """Rows with a common offset and two large channels, like a ViT residual stream."""
    x = randn(M, D, seed=seed)
    x[:, min(3, D - 1)] += 60.0
    x[:, D // 2] -= 35.0
    return (x + 8.0).to(dtype)


@pytest.fixture
def workspaces(monkeypatch):
    """NaN-poisons every split-K workspace and records the split counts launched (an empty list: single pass)."""
    seen = []

    def alloc(split, M, N, device):
        seen.append(split)
        return torch.full((split, M, N), float("nan"), dtype=torch.float32, device=device)

    monkeypatch.setattr(lin, "_alloc_workspace", alloc)
    monkeypatch.delenv(lin.SPLIT_K_ENV, raising=False)
    return seen


def launch(x, w, b=None, r=None, act=None, out_dtype=None, norm=None, colsum=None, eps=1e-6, stats=False, split=1):
    """_linear_launch on NaN-poisoned y (and output statistics): the one way to poison the outputs of the statistics
    variant, which `linear` allocates itself. Returns y, or (y, RowStats) with stats=True."""
    K, N = x.shape[-1], w.shape[0]
    y = poisoned(tuple(x.shape[:-1]) + (N,), out_dtype or x.dtype)
    so = poisoned(tuple(x.shape[:-1]) + (triton.cdiv(N, STAT_W), 2), torch.float32) if stats else None
    nrm = None if norm is None else RowStats(norm.partials.view(-1, norm.partials.shape[-2], 2), norm.width)
    lin._linear_launch(x.view(-1, K), w, b, None if r is None else r.view(-1, N), y.view(-1, N), act, False,
                       nrm, colsum, eps, None if so is None else so.view(-1, so.shape[-2], 2), split)
    return (y, RowStats(so, STAT_W)) if stats else y


# ---------------------------------------------------------------------------------------------------------------
# Forced split counts: every epilogue against float64
# ---------------------------------------------------------------------------------------------------------------
# x shape, N, bias, residual, activation. BLOCK_K = 32 under the interpreter: K = 100 is 4 steps (3 ranges of 2,
# 2, 0 at S = 3), K = 72 is 3 steps (S = 2: 2 + 1; S = 4: one range past K), K = 40 is 2 steps (S = 3, 4: empty
# ranges); M, N not multiples of the 16 x 32 tile.
CASES = [
    pytest.param((21, 100), 40, False, False, None, id="plain-K100"),
    pytest.param((21, 100), 40, True, False, None, id="bias"),
    pytest.param((19, 72), 33, False, True, None, id="residual-K72"),
    pytest.param((17, 40), 70, True, False, "gelu", id="bias-gelu-K40"),
    pytest.param((2, 9, 72), 50, True, True, "gelu", id="3d-all"),
]


@needs_kernels
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("dtype,atol", DTYPES)
@pytest.mark.parametrize("xshape,N,has_bias,has_res,act", CASES)
def test_split_k_epilogues(xshape, N, has_bias, has_res, act, dtype, atol, split, workspaces):
    K = xshape[-1]
    x = randn(*xshape, dtype=dtype, seed=1)
    w = randn(N, K, dtype=dtype, scale=K ** -0.5, seed=2)
    b = randn(N, dtype=dtype, seed=3) if has_bias else None
    r = randn(*xshape[:-1], N, dtype=dtype, seed=4) if has_res else None
    y = linear(x, w, b, r, act, out=poisoned(tuple(xshape[:-1]) + (N,), dtype), _split_k=split)
    assert workspaces == ([] if split == 1 else [split])
    assert_close_to_ref(y, linear_ref(x, w, b, r, act), linear_ref(x, w, b, r, act, upcast=True), atol,
                        f"split {split}")


@needs_kernels
@pytest.mark.parametrize("split", [2, 3])
@pytest.mark.parametrize("in_dtype,out_dtype,atol", [(torch.float16, torch.float32, 2e-3),
                                                     (torch.float32, torch.float16, 2e-3)], ids=["fp16->fp32",
                                                                                                "fp32->fp16"])
def test_split_k_out_dtype(in_dtype, out_dtype, atol, split, workspaces):
    x, w = randn(13, 100, dtype=in_dtype, seed=5), randn(36, 100, dtype=in_dtype, scale=0.1, seed=6)
    b, r = randn(36, seed=7), randn(13, 36, dtype=out_dtype, seed=8)   # bias and residual in other dtypes
    y = linear(x, w, b, r, "gelu", out_dtype=out_dtype, out=poisoned((13, 36), out_dtype), _split_k=split)
    assert y.dtype == out_dtype and workspaces == [split]
    assert_close_to_ref(y, linear_ref(x, w, b, r, "gelu", out_dtype=out_dtype),
                        linear_ref(x, w, b, r, "gelu", upcast=True), atol, "out_dtype")


@needs_kernels
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("dtype,atol", DTYPES)
def test_split_k_normalising_epilogue(dtype, atol, split, workspaces):
    """norm=row_stats(x): the LayerNorm correction rstd·(acc − μ·colsum) on the summed partials."""
    M, K, N = 19, 100, 40
    x = residual_stream(M, K, dtype, seed=9)
    w = randn(N, K, dtype=dtype, scale=K ** -0.5, seed=10)
    b, r = randn(N, dtype=dtype, seed=11), randn(M, N, dtype=dtype, seed=12)
    y = linear(x, w, b, r, "gelu", norm=row_stats(x), colsum=column_sums(w), eps=1e-6, out=poisoned((M, N), dtype),
               _split_k=split)
    assert workspaces == ([] if split == 1 else [split])
    assert_close_to_ref(y, linear_ref(x, w, b, r, "gelu", normalize_input=True, eps=1e-6),
                        linear_ref(x, w, b, r, "gelu", upcast=True, normalize_input=True, eps=1e-6), atol,
                        f"normalising, split {split}")


@needs_kernels
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("dtype,atol", DTYPES)
@pytest.mark.parametrize("N", [40, 100])   # 2 and 4 statistics slots, the last one partial; reduction tiles of 64
def test_split_k_output_statistics(N, dtype, atol, split, workspaces):
    """return_stats: statistics of the stored values per 32-column slot, then a normalising GEMM that consumes
    them (both split)."""
    M, K = 21, 72
    a, r = randn(M, K, dtype=dtype, seed=13), residual_stream(M, N, dtype, seed=14)
    w = randn(N, K, dtype=dtype, scale=K ** -0.5, seed=15)
    b = randn(N, dtype=dtype, seed=16)
    y, st = launch(a, w, b, r, stats=True, split=split)
    assert_close_to_ref(y, linear_ref(a, w, b, r), linear_ref(a, w, b, r, upcast=True), atol, f"y, split {split}")
    assert_stats_close(st, row_stats_ref(y, STAT_W), f"statistics, split {split}")
    w2 = randn(24, N, dtype=dtype, scale=N ** -0.5, seed=17)
    z = launch(y, w2, None, None, "gelu", norm=st, colsum=column_sums(w2), split=split)
    assert_close_to_ref(z, linear_ref(y, w2, None, None, "gelu", normalize_input=True),
                        linear_ref(y, w2, None, None, "gelu", upcast=True, normalize_input=True), atol,
                        f"consumer, split {split}")
    assert workspaces == ([] if split == 1 else [split, split])
    # The registered op (return_stats goes through ttf::linear_stats) gives the same bits.
    y_op, st_op = linear(a, w, b, r, return_stats=True, _split_k=split)
    assert torch.equal(y_op, y) and torch.equal(st_op.partials, st.partials)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_split_k_is_deterministic(dtype, workspaces):
    """Two calls give the same bits (fixed summation order, no atomics), outputs and statistics."""
    M, K, N = 23, 200, 70
    a, r = randn(M, K, dtype=dtype, seed=18), residual_stream(M, N, dtype, seed=19)
    w = randn(N, K, dtype=dtype, scale=K ** -0.5, seed=20)
    first = launch(a, w, None, r, stats=True, split=3)
    second = launch(a, w, None, r, stats=True, split=3)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1].partials, second[1].partials)
    y1 = linear(a, w, None, r, "gelu", _split_k=4)
    assert torch.equal(y1, linear(a, w, None, r, "gelu", _split_k=4))
    assert workspaces == [3, 3, 4, 4]


@needs_kernels
def test_registered_op_takes_the_split_count(workspaces):
    x, w = randn(9, 72, seed=21), randn(20, 72, scale=0.1, seed=22)
    y_op = torch.ops.ttf.linear(x, w, None, None, None, None, False, None, 0, None, 0.0, 3)
    assert workspaces == [3]
    assert torch.equal(y_op, linear(x, w, _split_k=3))


@needs_kernels
def test_opcheck_with_a_forced_split():
    """The trailing split_k argument of ttf::linear / ttf::linear_stats: schema, fake implementation (the workspace
    is allocated inside the op), autograd registration."""
    if HAS_CUDA:
        pytest.skip("the GPU suite's opcheck covers the registered ops")
    x, w, b = randn(5, 72), randn(24, 72, scale=0.12), randn(24)
    for name, args in [("linear", (x, w, b, None, "gelu", None, False, None, 0, None, 0.0, 3)),
                       ("linear", (x, w, None, None, None, None, False, row_stats(x).partials, 72, column_sums(w),
                                   1e-6, 2)),
                       ("linear_stats", (x, w, b, randn(5, 24), None, None, False, None, 0, None, 0.0, 4))]:
        torch.library.opcheck(getattr(torch.ops.ttf, name).default, args,
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@needs_kernels
def test_split_k_env_override_and_bad_values(monkeypatch, workspaces):
    x, w = randn(9, 72, seed=23), randn(20, 72, scale=0.1, seed=24)
    monkeypatch.setenv(lin.SPLIT_K_ENV, "3")
    y_env = linear(x, w, out=poisoned((9, 20), torch.float32))
    assert workspaces == [3]
    assert torch.equal(y_env, linear(x, w, _split_k=3))
    linear(x, w, _split_k=1)
    assert workspaces == [3, 3]                        # the argument wins over the environment: single pass
    monkeypatch.setenv(lin.SPLIT_K_ENV, "0")           # 0: automatic (a tiny grid with 3 K steps: no split)
    linear(x, w)
    assert workspaces == [3, 3]
    for bad in ("two", "-1", "1.5"):
        monkeypatch.setenv(lin.SPLIT_K_ENV, bad)
        with pytest.raises(ValueError, match=lin.SPLIT_K_ENV):
            linear(x, w)
    monkeypatch.delenv(lin.SPLIT_K_ENV)
    for bad in (0, -2, 1.0, True, "2"):
        with pytest.raises(ValueError, match="_split_k"):
            linear(x, w, _split_k=bad)
    # Empty batch: no launch, no workspace, whatever the split.
    assert linear(randn(0, 72), w, _split_k=3).shape == (0, 20) and workspaces == [3, 3]


@needs_kernels
def test_automatic_choice_under_the_interpreter(monkeypatch, workspaces):
    """The launcher applies linear_plan with INTERPRETER_SMS: tiny 16-bit shapes stay single pass (their reference
    tile has < 4 K steps per range), while an fp32 GEMM whose reference tile (64x64x32) is one tile with 8 K steps
    splits in 2, as it would on an H100."""
    assert lin._num_sms(randn(1)) == lin.INTERPRETER_SMS
    monkeypatch.setenv("TTF_TRITON_PDL", "1")          # never used under the interpreter
    x16, w16 = randn(20, 256, dtype=torch.float16, seed=25), randn(40, 256, dtype=torch.float16, scale=0.06, seed=26)
    linear(x16, w16)
    assert workspaces == [] and lin.linear_plan(20, 40, 256, torch.float16, 132)[1] == 1
    x, w = randn(20, 256, seed=27), randn(40, 256, scale=0.06, seed=28)
    assert lin.linear_plan(20, 40, 256, torch.float32, 132) == ((64, 64, 32), 2)
    y = linear(x, w, out=poisoned((20, 40), torch.float32))
    assert workspaces == [2]
    assert_close_to_ref(y, linear_ref(x, w), linear_ref(x, w, upcast=True), 1e-5, "automatic split")


def test_pdl_prefetch_only_with_pdl_and_eager_launches():
    assert not lin._prefetch_allowed(False, lin._linear_kernel)
    if interpreter_active():   # wrap_triton hands interpreted kernels back unchanged: an eager launch
        assert lin._prefetch_allowed(True, lin._linear_kernel)


# ---------------------------------------------------------------------------------------------------------------
# Choice rules (pure functions, no kernel)
# ---------------------------------------------------------------------------------------------------------------
# S18x2: D = 384, 2 branches, F = 1536. (name, N, K) of the block's four GEMMs.
S18X2 = [("qkv", 2304, 384), ("proj", 384, 768), ("fc1", 3072, 384), ("fc2", 384, 3072)]
#: Expected automatic split counts on 132 SMs (bf16/fp16), by batch (M = 197·B).
S18X2_SPLITS = {
    1: {"qkv": 1, "proj": 3, "fc1": 1, "fc2": 10},
    2: {"qkv": 1, "proj": 3, "fc1": 1, "fc2": 6},
    4: {"qkv": 1, "proj": 3, "fc1": 1, "fc2": 6},
    8: {"qkv": 1, "proj": 3, "fc1": 1, "fc2": 3},
    64: {"qkv": 1, "proj": 1, "fc1": 1, "fc2": 1},
}


@pytest.mark.parametrize("batch", sorted(S18X2_SPLITS))
def test_split_choice_on_s18x2(batch):
    M = 197 * batch
    for name, N, K in S18X2:
        (bm, bn, bk), split = lin.linear_plan(M, N, K, torch.bfloat16, 132)
        assert split == S18X2_SPLITS[batch][name], (batch, name, (bm, bn, bk), split)
        assert lin.linear_plan(M, N, K, torch.float16, 132) == ((bm, bn, bk), split)
        tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
        steps = triton.cdiv(K, bk)
        if split > 1:
            assert tiles * split <= 132                                   # one wave
            per = triton.cdiv(steps, split)
            assert per >= lin.MIN_K_STEPS_PER_SPLIT and (split - 1) * per < steps   # no empty range
        if tiles > 66:
            assert split == 1                                              # the grid already fills the GPU


def test_split_rule_properties():
    assert lin.split_k_for(197, 384, 3072, 64, 128, 64, 132) == 10      # 12 tiles, 48 steps: 5 per range
    assert lin.split_k_for(197, 384, 3072, 64, 128, 64, 1000) == 12     # 48 steps, at least 4 per range
    assert lin.split_k_for(197, 384, 8192, 64, 128, 64, 1000) == lin.MAX_SPLIT_K
    for M in (1, 16, 197, 394, 788, 1576, 3152, 12608):
        for N in (40, 384, 768, 2304):
            for K in (32, 100, 384, 768, 3072, 8192):
                for sms in (1, 16, 78, 132, 144):
                    s = lin.split_k_for(M, N, K, 64, 128, 64, sms)
                    tiles, steps = triton.cdiv(M, 64) * triton.cdiv(N, 128), triton.cdiv(K, 64)
                    assert 1 <= s <= lin.MAX_SPLIT_K
                    if s > 1:
                        assert 2 * tiles <= sms and s * tiles <= sms
                        per = triton.cdiv(steps, s)
                        assert per >= lin.MIN_K_STEPS_PER_SPLIT and triton.cdiv(steps, per) == s
                    if 2 * tiles > sms or steps < 2 * lin.MIN_K_STEPS_PER_SPLIT:
                        assert s == 1
    # The device count matters: a smaller GPU splits less.
    assert lin.split_k_for(394, 384, 3072, 64, 128, 64, 78) < lin.split_k_for(394, 384, 3072, 64, 128, 64, 132)


def _padded(config, N):
    bn = config.kwargs["BLOCK_N"]
    return triton.cdiv(N, bn) * bn


def test_tile_choice_by_shape():
    """N = 384 never runs a tile that computes columns past N; wide outputs keep the 128x256 tile at large M; a list
    with no fitting tile (tiny N) keeps every config, least padded first."""
    for M in (197, 394, 788, 1576, 12608, 50432):
        kind, order = lin.config_order(M, 384)
        configs = [lin._CONFIG_LISTS[kind][i] for i in order]
        assert kind == ("small" if M <= lin.SMALL_M else "large") and configs
        assert all(_padded(c, 384) == 384 for c in configs), (M, [c.kwargs for c in configs])
        assert all(c.kwargs["BLOCK_N"] <= 128 for c in configs)
        for N in (384, 768):   # proj / fc2 of S18x2 and of ViT-B: the first (TTF_TRITON_AUTOTUNE=0) tile divides N
            first = lin._CONFIG_LISTS[kind][lin.config_order(M, N)[1][0]]
            assert N % first.kwargs["BLOCK_N"] == 0
    for N in (2304, 3072, 1536):
        kind, order = lin.config_order(12608, N)
        assert order == tuple(range(len(lin._CONFIGS_LARGE_M)))           # every tile fits: the full list, in order
        assert lin._tuner(False, kind, order) is lin._linear_kernel_large
    kind, order = lin.config_order(12608, 1000)                            # head: 1024 columns, 2.4 % padding
    assert lin._CONFIG_LISTS[kind][order[0]].kwargs["BLOCK_N"] == 256
    kind, order = lin.config_order(197, 40)                                # nothing fits 40 within 10 %
    assert sorted(order) == list(range(len(lin._CONFIGS_SMALL_M)))
    padded = [_padded(lin._CONFIGS_SMALL_M[i], 40) for i in order]
    assert padded == sorted(padded)
    for M, N in ((197, 100), (12608, 320), (12608, 1100)):                # any N: some tile within 10 % when one exists
        kind, order = lin.config_order(M, N)
        best = min(_padded(c, N) for c in lin._CONFIG_LISTS[kind])
        if best <= 1.1 * N:
            assert all(_padded(lin._CONFIG_LISTS[kind][i], N) <= 1.1 * N for i in order)


def test_autotune_keys_carry_the_batch_bucket_and_the_split():
    for tuned in (lin._linear_kernel_small, lin._linear_kernel_large):
        assert "MBUCKET" in tuned.keys and "EPILOGUE" in tuned.keys and "M" not in tuned.keys
    kind, order = lin.config_order(788, 384)
    single = lin._tuner(False, kind, order)
    split = lin._tuner(True, kind, order)
    assert single.keys == ["MBUCKET", "N", "K", "EPILOGUE"] and split.keys == ["MBUCKET", "N", "K", "SPLIT_K"]
    assert lin._tuner(True, kind, order) is split                          # created once per list
    assert [lin._m_bucket(197 * b) for b in (1, 2, 4, 8, 64, 256)] == [2, 4, 8, 16, 128, 512]
    assert lin._m_bucket(1) == 1 and lin._m_bucket(128) == 1 and lin._m_bucket(129) == 2
