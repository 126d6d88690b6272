"""Tests of the Triton ops (normalize, linear, attention) against their plain-torch references.

Without CUDA the kernels run under the Triton interpreter on the CPU. Triton decides whether a ``@triton.jit``
function is interpreted when the function is *defined*, so this module sets ``TRITON_INTERPRET=1`` before it
imports the kernels. If another module imported ``threethings_fast.triton_kernels`` earlier in the same pytest
process without the variable, the interpreted tests here skip with a message (run pytest with
``TRITON_INTERPRET=1`` in the environment, or set it in tests/conftest.py, to avoid that).

Tolerances are relative to PyTorch's own error: with the fused output f, the reference in the same low precision r and the float64
reference r64, ``max|f − r64| <= 2·max|r − r64| + atol(dtype)``. Outputs are NaN-poisoned (``out=``) so an
element the kernel forgets to write fails. bf16 only on GPU: ``tl.dot`` on bf16 is wrong under the interpreter.
Shapes are tiny on the CPU (interpreted kernels cost ~ms per program and per op).
"""
import importlib
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the import of the kernels

triton = pytest.importorskip("triton", reason="triton is not installed")

from threethings_fast.triton_kernels import (SUPPORTED_HEAD_DIMS, STAT_W, RowStats, attention,  # noqa: E402
                                             attention_ref, column_sums, linear, linear_ref, normalize,
                                             normalize_ref, row_stats, row_stats_ref)
from helpers import NOT_INTERPRETED, assert_close_to_ref, kernels_runnable  # noqa: E402

# The package re-exports the function `normalize`, which shadows the submodule attribute: go through sys.modules.
normalize_module = importlib.import_module("threethings_fast.triton_kernels.normalize")

DEVICE = "cuda" if HAS_CUDA else "cpu"
needs_kernels = pytest.mark.skipif(not kernels_runnable(normalize_module._normalize_kernel), reason=NOT_INTERPRETED)
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
pytestmark = [needs_kernels] + ([] if HAS_CUDA else [pytest.mark.interpreter])

# (dtype, atol): atol covers values whose reference error happens to be ~0.
DTYPES = [
    pytest.param(torch.float32, 1e-5, id="fp32"),
    pytest.param(torch.float16, 2e-3, id="fp16"),
]
DTYPES_GPU = [
    pytest.param(torch.bfloat16, 1.6e-2, id="bf16", marks=gpu),
]


def poisoned(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def randn(*shape, dtype=torch.float32, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
# normalize
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,atol", DTYPES + DTYPES_GPU)
@pytest.mark.parametrize("shape", [(1, 48), (50, 80), (3, 37, 384), (2, 1, 1)], ids=str)
def test_normalize(shape, dtype, atol):
    x = randn(*shape, dtype=dtype, scale=2.0) + 0.5
    y = normalize(x, 1e-6, out=poisoned(shape, dtype))
    assert y.dtype == dtype
    assert_close_to_ref(y, normalize_ref(x, 1e-6), normalize_ref(x, 1e-6, upcast=True), atol, "normalize")


@pytest.mark.parametrize("dtype,atol", DTYPES)
def test_normalize_large_channels(dtype, atol):
    """ViT residual streams carry a few huge channels and a large common offset: E[x²]−E[x]² would cancel."""
    x = randn(9, 384, scale=1.0) + 300.0
    x[:, 7] = 4000.0
    x[:, 100] = -2500.0
    x = x.to(dtype)
    y = normalize(x, 1e-6, out=poisoned(x.shape, dtype))
    assert_close_to_ref(y, normalize_ref(x, 1e-6), normalize_ref(x, 1e-6, upcast=True), atol, "normalize big")


def test_normalize_out_dtype_and_registered_op():
    x = randn(5, 80, scale=3.0)
    y = normalize(x, 1e-5, out_dtype=torch.float16)
    assert y.dtype == torch.float16 and y.shape == x.shape
    y2 = normalize(x, 1e-5, out_dtype=torch.float16, out=poisoned(x.shape, torch.float16))
    assert torch.equal(y, y2)
    assert torch.equal(torch.ops.ttf.normalize(x, 1e-5, torch.float16), y)
    assert_close_to_ref(y, normalize_ref(x, 1e-5, torch.float16), normalize_ref(x, 1e-5, upcast=True), 2e-3)


def test_normalize_bad_inputs(monkeypatch):
    x = randn(4, 48)
    with pytest.raises((TypeError, RuntimeError)):
        normalize([1.0, 2.0])
    with pytest.raises(TypeError, match="x must have dtype"):
        normalize(x.to(torch.float64))
    with pytest.raises(ValueError, match="x must be contiguous"):
        normalize(randn(48, 4).t())
    with pytest.raises(ValueError, match="rank >= 1"):
        normalize(torch.tensor(1.0, device=DEVICE))
    with pytest.raises(ValueError, match="last dim"):
        normalize(randn(4, 0))
    with pytest.raises(ValueError, match="eps"):
        normalize(x, -1.0)
    with pytest.raises(TypeError, match="out_dtype"):
        normalize(x, out_dtype=torch.int32)
    with pytest.raises(ValueError, match="out must have shape"):
        normalize(x, out=poisoned((4, 47), x.dtype))
    with pytest.raises(TypeError, match="out must have dtype"):
        normalize(x, out=poisoned((4, 48), torch.float16))
    with pytest.raises(ValueError, match="share memory"):
        normalize(x, out=x)
    # Empty batch: documented empty result, no launch.
    assert normalize(randn(0, 48)).shape == (0, 48)
    if not HAS_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="CPU tensor"):
            normalize(x)


# ---------------------------------------------------------------------------------------------------------------
# linear
# ---------------------------------------------------------------------------------------------------------------
LINEAR_CASES = [
    # x shape, N, bias, residual, activation
    pytest.param((1, 48), 80, False, False, None, id="M1-plain"),
    pytest.param((50, 80), 48, True, False, "gelu", id="M50-bias-gelu"),
    pytest.param((37, 96), 72, True, True, None, id="M37-bias-res"),
    pytest.param((2, 19, 48), 40, True, True, "gelu", id="3d-all"),
    pytest.param((17, 384), 33, False, True, None, id="K384-res"),
    pytest.param((197, 384), 96, True, True, "gelu", id="M197-K384-all"),
]


@pytest.mark.parametrize("dtype,atol", DTYPES + DTYPES_GPU)
@pytest.mark.parametrize("xshape,N,has_bias,has_res,act", LINEAR_CASES)
def test_linear(xshape, N, has_bias, has_res, act, dtype, atol):
    K = xshape[-1]
    x = randn(*xshape, dtype=dtype, seed=1)
    w = randn(N, K, dtype=dtype, scale=K ** -0.5, seed=2)
    b = randn(N, dtype=dtype, seed=3) if has_bias else None
    r = randn(*xshape[:-1], N, dtype=dtype, scale=4.0, seed=4) if has_res else None
    out_shape = (*xshape[:-1], N)
    y = linear(x, w, b, r, act, out=poisoned(out_shape, dtype))
    assert_close_to_ref(y, linear_ref(x, w, b, r, act), linear_ref(x, w, b, r, act, upcast=True), atol, "linear")


def test_linear_mixed_dtypes_and_registered_op():
    """fp16 GEMM with an fp32 residual stream and fp32 output (the residual add happens in fp32)."""
    x = randn(21, 48, dtype=torch.float16, seed=1)
    w = randn(40, 48, dtype=torch.float16, scale=0.15, seed=2)
    b = randn(40, dtype=torch.float32, seed=3)
    r = randn(21, 40, dtype=torch.float32, scale=100.0, seed=4)
    y = linear(x, w, b, r, "gelu", out_dtype=torch.float32, out=poisoned((21, 40), torch.float32))
    ref64 = linear_ref(x, w, b, r, "gelu", upcast=True)
    # The product is exact in fp32 up to accumulation order; only the fp32 epilogue rounds.
    assert (y.double() - ref64).abs().max().item() < 1e-4
    y_op = torch.ops.ttf.linear(x, w, b, r, "gelu", torch.float32, False)
    assert torch.equal(y, y_op)
    assert torch.equal(linear(x, w, b, r, "gelu", out_dtype=torch.float32), y)


def test_linear_allow_tf32_runs():
    x, w = randn(9, 48), randn(24, 48, scale=0.15)
    y = linear(x, w, allow_tf32=True, out=poisoned((9, 24), torch.float32))
    # TF32 keeps 10 mantissa bits (the interpreter may compute exactly): loose bound.
    assert (y.double() - linear_ref(x, w, upcast=True)).abs().max().item() < 5e-3


def test_linear_bad_inputs(monkeypatch):
    x, w, b = randn(4, 48), randn(8, 48), randn(8)
    with pytest.raises((TypeError, RuntimeError)):
        linear(x.tolist(), w)
    with pytest.raises(ValueError, match="weight must have rank 2"):
        linear(x, w[None])
    with pytest.raises(ValueError, match="must equal weight's in_features"):
        linear(x, randn(8, 47))
    with pytest.raises(TypeError, match="weight must have dtype"):
        linear(x, w.half())
    with pytest.raises(ValueError, match="bias must have shape"):
        linear(x, w, randn(9))
    with pytest.raises(ValueError, match="residual must have shape"):
        linear(x, w, b, randn(4, 9))
    with pytest.raises(ValueError, match="weight must be contiguous"):
        linear(x, randn(48, 8).t())
    with pytest.raises(ValueError, match="x must be contiguous"):
        linear(randn(48, 4).t(), randn(8, 4))
    with pytest.raises(ValueError, match="activation"):
        linear(x, w, activation="relu")
    with pytest.raises(TypeError, match="out_dtype"):
        linear(x, w, out_dtype=torch.float64)
    with pytest.raises(ValueError, match="non-zero"):
        linear(randn(4, 0), randn(8, 0))
    with pytest.raises(RuntimeError, match="same device"):
        linear(x, w, torch.empty(8, device="meta"))
    with pytest.raises(ValueError, match="share memory"):
        r = randn(4, 8)
        linear(x, w, b, r, out=r)
    assert linear(randn(0, 48), w, b).shape == (0, 8)
    assert linear(randn(2, 0, 48), w, b, randn(2, 0, 8)).shape == (2, 0, 8)
    if not HAS_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="CPU tensor"):
            linear(x, w)


# ---------------------------------------------------------------------------------------------------------------
# LayerNorm fused into the GEMMs: row statistics, normalising epilogue, statistics of the output
# ---------------------------------------------------------------------------------------------------------------
def _residual_stream(M, D, dtype, seed):
    """Rows like a ViT residual stream: a common offset and a few channels far larger than the rest (the case
    where E[x²] − E[x]² or a naive mean·colsum correction would lose digits)."""
    x = randn(M, D, dtype=torch.float32, seed=seed)
    x[:, min(3, D - 1)] += 60.0
    x[:, D // 2] -= 35.0
    return (x + 8.0).to(dtype)


def _assert_stats_close(got: RowStats, want: RowStats, what: str):
    assert got.width == want.width and got.partials.shape == want.partials.shape, (got.width, want.width)
    assert got.partials.dtype == torch.float32 and torch.isfinite(got.partials).all(), what
    g, w = got.partials.double().cpu(), want.partials.cpu()
    # fp32 statistics: relative to the magnitude of each quantity (means ~ |x|, M2 ~ n·var)
    tol = 2e-5 * (w.abs() + w[..., 1:].abs().amax() ** 0.5) + 1e-6
    assert ((g - w).abs() <= tol).all(), f"{what}: max err {(g - w).abs().max().item():.3g}"


@pytest.mark.parametrize("dtype,atol", DTYPES + DTYPES_GPU)
@pytest.mark.parametrize("shape", [(1, 48), (37, 72), (2, 5, 384), (3, 1)], ids=str)
def test_row_stats(shape, dtype, atol):
    x = _residual_stream(int(torch.tensor(shape[:-1]).prod()), shape[-1], dtype, seed=40).view(shape)
    _assert_stats_close(row_stats(x), row_stats_ref(x), "row_stats")


@pytest.mark.parametrize("dtype,atol", DTYPES + DTYPES_GPU)
@pytest.mark.parametrize("M,K,N,act,res", [(1, 48, 40, None, False), (37, 72, 100, "gelu", False),
                                           (20, 384, 96, None, True), (5, 40, 33, "gelu", True)])
def test_linear_normalising_epilogue(M, K, N, act, res, dtype, atol):
    """linear(norm=row_stats(x)) = act(LN(x) @ Wᵀ + b) + r, bounded like the unfused LN-then-GEMM chain."""
    x = _residual_stream(M, K, dtype, seed=41)
    w = randn(N, K, dtype=dtype, scale=K ** -0.5, seed=42)
    b = randn(N, dtype=dtype, seed=43)
    r = randn(M, N, dtype=dtype, seed=44) if res else None
    y = linear(x, w, b, r, act, norm=row_stats(x), colsum=column_sums(w), eps=1e-6, out=poisoned((M, N), dtype))
    ref = linear_ref(x, w, b, r, act, normalize_input=True, eps=1e-6)
    ref64 = linear_ref(x, w, b, r, act, upcast=True, normalize_input=True, eps=1e-6)
    assert_close_to_ref(y, ref, ref64, atol, "normalising linear")


@pytest.mark.parametrize("dtype,atol", DTYPES + DTYPES_GPU)
@pytest.mark.parametrize("M,K,N", [(3, 48, 40), (29, 64, 100), (8, 96, 384)])
def test_linear_return_stats_feeds_the_next_gemm(M, K, N, dtype, atol):
    """A residual GEMM's output statistics (slots of 32 columns, N not a multiple of 32 on purpose, several column
    tiles) equal the statistics of its stored output, and normalise the next GEMM like LayerNorm would."""
    a = randn(M, K, dtype=dtype, seed=45)
    w = randn(N, K, dtype=dtype, scale=K ** -0.5, seed=46)
    r = _residual_stream(M, N, dtype, seed=47)
    y, stats = linear(a, w, randn(N, dtype=dtype, seed=48), r, return_stats=True)
    assert stats.width == STAT_W and stats.partials.shape == (M, -(-N // STAT_W), 2)
    _assert_stats_close(stats, row_stats_ref(y, STAT_W), "return_stats")
    w2 = randn(64, N, dtype=dtype, scale=N ** -0.5, seed=49)
    z = linear(y, w2, None, None, "gelu", norm=stats, colsum=column_sums(w2), eps=1e-6,
               out=poisoned((M, 64), dtype))
    assert_close_to_ref(z, linear_ref(y, w2, None, None, "gelu", normalize_input=True),
                        linear_ref(y, w2, None, None, "gelu", upcast=True, normalize_input=True), atol,
                        "chained normalising linear")


@pytest.mark.skipif(HAS_CUDA, reason="interpreter tile widths; the GPU test walks the autotune lists")
@pytest.mark.parametrize("block_n", [64, 128])
def test_stats_with_several_slots_per_tile(block_n, monkeypatch):
    """GPU tiles hold 2-8 statistics slots (BLOCK_N 64-256): the in-tile reshape and slot numbering, with N that
    leaves partial tiles and a partial last slot."""
    lin = importlib.import_module("threethings_fast.triton_kernels.linear")
    monkeypatch.setitem(lin._INTERPRETER_META, "BLOCK_N", block_n)
    for N in (33, 100, 200):
        a, r = randn(7, 48, seed=50), _residual_stream(7, N, torch.float32, seed=51)
        w = randn(N, 48, scale=48 ** -0.5, seed=52)
        y, st = linear(a, w, None, r, return_stats=True)
        _assert_stats_close(st, row_stats_ref(y, STAT_W), f"N={N} BLOCK_N={block_n}")
        w2 = randn(40, N, scale=N ** -0.5, seed=53)
        z = linear(y, w2, norm=st, colsum=column_sums(w2), out=poisoned((7, 40), torch.float32))
        assert_close_to_ref(z, linear_ref(y, w2, normalize_input=True),
                            linear_ref(y, w2, upcast=True, normalize_input=True), 1e-5, f"N={N}")


def test_normalising_linear_statistics_wider_than_the_row():
    """A producer with N < 32 reports width 32 > K for its single slot: the consumer accepts it."""
    a, w = randn(5, 16), randn(20, 16, scale=0.25)
    y, st = linear(a, w, return_stats=True)
    assert st.width == STAT_W > y.shape[-1] and st.partials.shape == (5, 1, 2)
    w2 = randn(8, 20, scale=0.2)
    z = linear(y, w2, norm=st, colsum=column_sums(w2))
    assert (z.double() - linear_ref(y, w2, upcast=True, normalize_input=True)).abs().max().item() < 1e-5


def test_normalising_linear_bad_inputs():
    x, w = randn(4, 48), randn(8, 48)
    st = row_stats(x)
    with pytest.raises(ValueError, match="needs colsum"):
        linear(x, w, norm=st)
    with pytest.raises(TypeError, match="RowStats"):
        linear(x, w, norm=st.partials, colsum=column_sums(w))
    with pytest.raises(ValueError, match="norm.partials must have shape"):
        linear(x, w, norm=RowStats(st.partials[:3], st.width), colsum=column_sums(w))
    with pytest.raises(ValueError, match="norm.partials must have shape"):
        linear(x, w, norm=RowStats(st.partials, 32), colsum=column_sums(w))     # 48 / 32 -> 2 slots expected
    with pytest.raises(ValueError, match="width"):
        linear(x, w, norm=RowStats(st.partials, 0), colsum=column_sums(w))
    with pytest.raises(ValueError, match="allow_tf32"):
        linear(x, w, norm=st, colsum=column_sums(w), allow_tf32=True)
    with pytest.raises(TypeError, match="colsum must have dtype"):
        linear(x, w, norm=st, colsum=column_sums(w).double())
    with pytest.raises(ValueError, match="colsum must have shape"):
        linear(x, w, norm=st, colsum=column_sums(w)[:5])
    with pytest.raises(ValueError, match="without norm"):
        linear(x, w, colsum=column_sums(w))
    with pytest.raises(ValueError, match="return_stats"):
        linear(x, w, return_stats=True, out=poisoned((4, 8), torch.float32))
    with pytest.raises(ValueError, match="last dim"):
        row_stats(randn(4, 0))


# ---------------------------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------------------------
ATTN_CASES = [
    # B, N, heads (K·H), head_dim
    pytest.param(1, 1, 2, 32, id="N1"),
    pytest.param(3, 50, 3, 80, id="B3-N50-d80"),
    pytest.param(1, 37, 6, 64, id="N37-h6"),
    pytest.param(2, 64, 2, 32, id="N64-no-tail"),
    pytest.param(1, 20, 2, 96, id="d96"),
    pytest.param(1, 33, 2, 128, id="d128"),
    pytest.param(1, 197, 2, 64, id="N197"),
]


@pytest.mark.parametrize("dtype,atol", DTYPES + DTYPES_GPU)
@pytest.mark.parametrize("B,N,H,d", ATTN_CASES)
def test_attention(B, N, H, d, dtype, atol):
    # Scores of O(1..5): large enough that the softmax is far from uniform.
    qkv = randn(B, N, 3 * H * d, dtype=dtype, scale=1.5, seed=5)
    scale = d ** -0.5
    o = attention(qkv, H, d, scale, out=poisoned((B, N, H * d), dtype))
    assert_close_to_ref(o, attention_ref(qkv, H, d, scale), attention_ref(qkv, H, d, scale, upcast=True), atol,
                        "attention")


def test_attention_folded_scale_and_registered_op():
    """scale=1 with d^-0.5 folded into q equals scale=d^-0.5 on the unscaled q (up to rounding)."""
    B, N, H, d = 2, 19, 2, 64
    qkv = randn(B, N, 3 * H * d, scale=2.0, seed=6)
    folded = qkv.clone()
    folded[..., :H * d] *= d ** -0.5
    o1 = attention(folded, H, d)
    o2 = attention(qkv, H, d, d ** -0.5)
    assert (o1 - o2).abs().max().item() < 1e-5
    assert torch.equal(torch.ops.ttf.attention(folded, H, d, 1.0), o1)
    ref = attention_ref(qkv, H, d, d ** -0.5, upcast=True)
    assert (o2.double() - ref).abs().max().item() < 1e-5


def test_attention_bad_inputs(monkeypatch):
    qkv = randn(1, 5, 3 * 2 * 32)
    with pytest.raises(ValueError, match=r"head_dim must be one of \(32, 64, 80, 96, 128\)"):
        attention(randn(1, 5, 3 * 2 * 48), 2, 48)
    with pytest.raises(ValueError, match="qkv must have rank 3"):
        attention(qkv[0], 2, 32)
    with pytest.raises(ValueError, match="qkv must have shape"):
        attention(qkv, 3, 32)
    with pytest.raises(ValueError, match="num_heads"):
        attention(qkv, 0, 32)
    with pytest.raises(TypeError, match="qkv must have dtype"):
        attention(qkv.double(), 2, 32)
    with pytest.raises(ValueError, match="qkv must be contiguous"):
        attention(randn(5, 2, 3 * 2 * 32).transpose(0, 1), 2, 32)
    with pytest.raises(ValueError, match="out must have shape"):
        attention(qkv, 2, 32, out=poisoned((1, 5, 63), torch.float32))
    assert attention(randn(0, 5, 3 * 2 * 32), 2, 32).shape == (0, 5, 64)
    assert attention(randn(2, 0, 3 * 2 * 32), 2, 32).shape == (2, 0, 64)
    if not HAS_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="CPU tensor"):
            attention(qkv, 2, 32)


def test_import_without_triton_is_clear():
    """Importing the kernels without triton must raise an ImportError that says what to install."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['triton'] = None\n"
            "try:\n"
            "    import threethings_fast.triton_kernels\n"
            "except ImportError as e:\n"
            "    print('IMPORTERROR', e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "IMPORTERROR" in res.stdout and "needs the `triton` package" in res.stdout, res.stdout + res.stderr


def test_supported_head_dims():
    assert SUPPORTED_HEAD_DIMS == (32, 64, 80, 96, 128)


# ---------------------------------------------------------------------------------------------------------------
# torch.library: schema, fake (meta) implementation, autograd registration. The AOT-dispatch checks and
# torch.compile need real kernels (the interpreter runs outside tracing), so they are GPU-only.
# ---------------------------------------------------------------------------------------------------------------
def _opcheck_cases():
    # GPU: bf16, the model's dtype (fp32 would compile IEEE-precision kernels nothing else uses); interpreter: fp32.
    dt = torch.bfloat16 if HAS_CUDA else torch.float32
    x, w, b, r = (randn(5, 48, dtype=dt), randn(24, 48, dtype=dt, scale=0.15), randn(24, dtype=dt),
                  randn(5, 24, dtype=dt))
    return [
        ("normalize", (x, 1e-6, None)),
        ("linear", (x, w, b, r, "gelu", None, False)),
        ("linear", (x.half(), w.half(), None, None, None, torch.float32, False)),
        ("attention", (randn(1, 20, 3 * 2 * 32, dtype=dt), 2, 32, 1.0)),
        ("row_stats", (x,)),
        ("linear", (x, w, b, r, "gelu", None, False, row_stats(x).partials, 48, column_sums(w), 1e-6)),
        ("linear_stats", (x, w, b, r, None, None, False, None, 0, None, 0.0)),
    ]


def test_opcheck_interpreter():
    if HAS_CUDA:
        pytest.skip("covered by test_opcheck_gpu")
    for name, args in _opcheck_cases():
        torch.library.opcheck(getattr(torch.ops.ttf, name).default, args,
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_opcheck_gpu():
    for name, args in _opcheck_cases():
        torch.library.opcheck(getattr(torch.ops.ttf, name).default, args)


# ---------------------------------------------------------------------------------------------------------------
# GPU: real shapes (S18x2 at 224/384 px), bf16/fp16, torch.compile and CUDA graphs
# ---------------------------------------------------------------------------------------------------------------
GPU_LOWP = [pytest.param(torch.bfloat16, 1.6e-2, id="bf16"), pytest.param(torch.float16, 2e-3, id="fp16")]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,atol", GPU_LOWP)
def test_gpu_fused_norm_block_shapes(dtype, atol):
    """The norm="fused" exchange at S18x2 batch 64: fc2 (+residual, statistics out) -> QKV (normalising) and
    proj (+residual, statistics out) -> fc1 (normalising, GELU), every autotuned tile width."""
    M, D, KD, KF = 64 * 197, 384, 2 * 384, 2 * 1536
    x = _residual_stream(M, D, dtype, seed=20)
    _assert_stats_close(row_stats(x), row_stats_ref(x), "row_stats")
    for k_in, n_next, act in [(KF, 3 * KD, None), (KD, KF, "gelu")]:
        a = randn(M, k_in, dtype=dtype, seed=21)
        w = randn(D, k_in, dtype=dtype, scale=k_in ** -0.5, seed=22)
        y, st = linear(a, w, randn(D, dtype=dtype, seed=23), x, return_stats=True)
        _assert_stats_close(st, row_stats_ref(y, STAT_W), f"stats of a {D}x{k_in} residual GEMM")
        w2 = randn(n_next, D, dtype=dtype, scale=D ** -0.5, seed=24)
        b2 = randn(n_next, dtype=dtype, seed=25)
        z = linear(y, w2, b2, None, act, norm=st, colsum=column_sums(w2), out=poisoned((M, n_next), dtype))
        assert_close_to_ref(z, linear_ref(y, w2, b2, None, act, normalize_input=True),
                            linear_ref(y, w2, b2, None, act, upcast=True, normalize_input=True), atol,
                            f"normalising {n_next}x{D}")


@pytest.mark.gpu
@pytest.mark.slow   # ~16 cold compiles: in tier 2's slow step of bench/gpu_suite.sh, and `pytest -m gpu`
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_fused_norm_every_config(monkeypatch):
    """Every config of both autotune lists (their BLOCK_N give 2-8 statistics slots per tile), forced one at a time,
    for the statistics epilogue and the normalising one: the autotuner may pick any of them."""
    lin = importlib.import_module("threethings_fast.triton_kernels.linear")
    dt, atol = torch.bfloat16, 1.6e-2
    for M, configs in [(64 * 197, lin._CONFIGS_LARGE_M), (197, lin._CONFIGS_SMALL_M)]:
        a = randn(M, 768, dtype=dt, seed=60)
        r = _residual_stream(M, 384, dt, seed=61)
        w = randn(384, 768, dtype=dt, scale=768 ** -0.5, seed=62)
        w2 = randn(1000, 384, dtype=dt, scale=384 ** -0.5, seed=63)      # 1000: a partial last column tile
        for cfg in configs:
            meta = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
            monkeypatch.setattr(lin, "launch_choice", lambda kernel, tuned, _m=meta, **_: (kernel, dict(_m)))
            y, st = linear(a, w, None, r, return_stats=True)
            _assert_stats_close(st, row_stats_ref(y, STAT_W), f"M={M} {cfg}")
            z = linear(y, w2, None, None, "gelu", norm=st, colsum=column_sums(w2), out=poisoned((M, 1000), dt))
            assert_close_to_ref(z, linear_ref(y, w2, None, None, "gelu", normalize_input=True),
                                linear_ref(y, w2, None, None, "gelu", upcast=True, normalize_input=True), atol,
                                f"normalising M={M} {cfg}")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,atol", GPU_LOWP)
def test_gpu_block_shapes(dtype, atol):
    """The four GEMMs and the normalisation of an S18x2 block at batch 64, 224 px (M = 64·197, D = 384)."""
    M, D, KD, KF = 64 * 197, 384, 2 * 384, 2 * 1536
    x = randn(M, D, dtype=torch.float32, scale=3.0, seed=10)
    xh = normalize(x, 1e-6, out_dtype=dtype)
    assert_close_to_ref(xh, normalize_ref(x, 1e-6, dtype), normalize_ref(x, 1e-6, upcast=True), atol, "norm")
    for (n_out, k_in, act, res) in [(3 * KD, D, None, False), (D, KD, None, True), (KF, D, "gelu", False),
                                    (D, KF, None, True)]:
        a = randn(M, k_in, dtype=dtype, seed=11)
        w = randn(n_out, k_in, dtype=dtype, scale=k_in ** -0.5, seed=12)
        b = randn(n_out, dtype=dtype, seed=13)
        r = randn(M, n_out, dtype=dtype, seed=14) if res else None
        y = linear(a, w, b, r, act, out=poisoned((M, n_out), dtype))
        assert_close_to_ref(y, linear_ref(a, w, b, r, act), linear_ref(a, w, b, r, act, upcast=True), atol,
                            f"linear {n_out}x{k_in}")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,atol", GPU_LOWP)
@pytest.mark.parametrize("N", [197, 577])
@pytest.mark.parametrize("d", SUPPORTED_HEAD_DIMS)
def test_gpu_attention_shapes(N, d, dtype, atol):
    B, H = 8, 12
    qkv = randn(B, N, 3 * H * d, dtype=dtype, scale=1.5, seed=20)
    o = attention(qkv, H, d, d ** -0.5, out=poisoned((B, N, H * d), dtype))
    assert_close_to_ref(o, attention_ref(qkv, H, d, d ** -0.5), attention_ref(qkv, H, d, d ** -0.5, upcast=True),
                        atol, f"attention N={N} d={d}")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_compile_and_cuda_graph():
    """The registered ops trace under torch.compile (fullgraph) and replay inside a CUDA graph."""
    dt = torch.bfloat16
    B, N, H, d, D = 2, 197, 12, 32, 384
    x = randn(B, N, D, dtype=dt, seed=30)
    wqkv = randn(3 * H * d, D, dtype=dt, scale=D ** -0.5, seed=31)
    wproj = randn(D, H * d, dtype=dt, scale=(H * d) ** -0.5, seed=32)

    def block(x):
        xh = torch.ops.ttf.normalize(x, 1e-6, None)
        qkv = torch.ops.ttf.linear(xh, wqkv, None, None, None, None, False)
        o = torch.ops.ttf.attention(qkv, H, d, d ** -0.5)
        return torch.ops.ttf.linear(o, wproj, None, x, None, None, False)

    eager = block(x)  # also warms up the autotuners before capture
    compiled = torch.compile(block, fullgraph=True)(x)
    # Inductor re-autotunes user kernels and may pick another tile (another summation order); |y| reaches ~4, where
    # one bf16 step is 0.03: compare relative to the magnitude, not with a fixed absolute 1e-2.
    torch.testing.assert_close(compiled, eager, rtol=2e-2, atol=2e-2)
    static_x = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        block(static_x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_y = block(static_x)
    static_x.copy_(randn(B, N, D, dtype=dt, seed=33))
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_y, block(static_x))
