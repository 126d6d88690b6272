"""The MLP families' token-axis kernels: token_linear (token GEMM + epilogue) and normalize_tokens (LayerNorm over
the token axis), against float64, within twice PyTorch's own error in the dtype; odd shapes, strided inputs, bad
input. CPU: the interpreter (fp32, fp16; bf16 tl.dot is wrong under it)."""
import pytest
import torch

from helpers import ATOL, NOT_INTERPRETED, assert_close_to_ref, kernels_runnable

pytest.importorskip("triton")
tk = pytest.importorskip("threethings_fast.triton_kernels")
from threethings_fast.triton_kernels.normalize import MAX_TOKENS, _normalize_tokens_kernel  # noqa: E402
from threethings_fast.triton_kernels.token_linear import _token_linear_kernel  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [pytest.mark.interpreter,
              pytest.mark.skipif(not kernels_runnable(_token_linear_kernel), reason=NOT_INTERPRETED)]
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if torch.cuda.is_available() else [])

EPILOGUES = {
    "plain": lambda B, M, D: {},
    "bias+gelu": lambda B, M, D: dict(bias=torch.randn(M), activation="gelu"),
    "scale+shift+gelu": lambda B, M, D: dict(scale=1 + 0.3 * torch.randn(D), shift=torch.randn(M, D),
                                             activation="gelu"),
    "matrix-scale+residual": lambda B, M, D: dict(scale=torch.randn(M, D), residual=torch.randn(B, M, D)),
    "gate": lambda B, M, D: dict(scale=torch.randn(D), shift=torch.randn(M, D), gate=torch.randn(B, M, D)),
}


def _to(kw, dtype):
    out = {}
    for k, v in kw.items():
        if isinstance(v, torch.Tensor):
            # gate / residual share x's dtype; the epilogue vectors stay fp32, as the fused models keep them
            v = v.to(DEVICE, dtype if k in ("gate", "residual") else torch.float32)
        out[k] = v
    return out


@pytest.mark.parametrize("epilogue", list(EPILOGUES))
@pytest.mark.parametrize("B, N, M, D", [(1, 1, 1, 1), (2, 5, 7, 24), (3, 49, 33, 40), (1, 197, 96, 70)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_token_linear_matches_float64(B, N, M, D, epilogue, dtype):
    g = torch.Generator().manual_seed(B * 1000 + N + D)
    x = torch.randn(B, N, D, generator=g)
    w = torch.randn(M, N, generator=g) / N ** 0.5
    kw = EPILOGUES[epilogue](B, M, D)
    ref64 = tk.token_linear_ref(x, w, **kw, upcast=True)
    xl, wl, kwl = x.to(DEVICE, dtype), w.to(DEVICE, dtype), _to(kw, dtype)
    out = tk.token_linear(xl, wl, **kwl)
    assert out.shape == (B, M, D) and out.dtype == dtype
    assert_close_to_ref(out.cpu(), tk.token_linear_ref(xl, wl, **kwl).cpu(), ref64, ATOL[dtype], epilogue)


def test_token_linear_reads_strided_views():
    x = torch.randn(2, 9, 48)[:, :, 8:40]              # unit stride along D, row stride 48: no copy needed
    w = torch.randn(5, 9)
    out = tk.token_linear(x.to(DEVICE), w.to(DEVICE))
    torch.testing.assert_close(out.cpu().double(), tk.token_linear_ref(x, w, upcast=True), rtol=1e-5, atol=1e-5)


def test_token_linear_bad_input():
    x, w = torch.randn(2, 5, 8, device=DEVICE), torch.randn(3, 5, device=DEVICE)
    with pytest.raises(ValueError, match="unit stride"):
        tk.token_linear(x.transpose(1, 2), torch.randn(3, 8, device=DEVICE))
    with pytest.raises(ValueError, match="N = 5"):
        tk.token_linear(x, torch.randn(3, 4, device=DEVICE))
    with pytest.raises(ValueError, match="ndim|rank|dim"):
        tk.token_linear(x[0], w)
    with pytest.raises(TypeError):
        tk.token_linear(x, w.half())
    with pytest.raises(ValueError, match="scale"):
        tk.token_linear(x, w, scale=torch.randn(5, device=DEVICE))
    with pytest.raises(ValueError, match="residual|shape"):
        tk.token_linear(x, w, residual=torch.randn(2, 5, 8, device=DEVICE))
    with pytest.raises(ValueError, match="activation"):
        tk.token_linear(x, w, activation="relu")
    assert tk.token_linear(x[:0], w).shape == (0, 3, 8)


def _stats_of(x2d, source):
    """RowStats of the (M, D) matrix x2d: one slot per row (row_stats) or the 32-column slots of the GEMM that
    produced it (linear(..., return_stats=True), here an identity GEMM so its output is x2d itself)."""
    if source == "row_stats":
        return tk.row_stats(x2d)
    eye = torch.eye(x2d.shape[1], dtype=x2d.dtype, device=x2d.device)
    y, stats = tk.linear(x2d, eye, return_stats=True)
    assert torch.equal(y, x2d)
    return stats


@pytest.mark.parametrize("source", ["row_stats", "linear"])
@pytest.mark.parametrize("epilogue", ["plain", "gate"])
@pytest.mark.parametrize("B, N, M, D", [(1, 1, 1, 1), (2, 5, 7, 24), (3, 49, 33, 70), (1, 40, 40, 96)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_token_linear_normalises_its_input_rows(B, N, M, D, epilogue, source, dtype):
    """norm=RowStats: y[b] = W @ LN(x[b]) with LN over each token's channels (gMLP's gate, Mixer's token mixing),
    the statistics merged from slots in the main loop. Rows of large mean and spread, so an unnormalised product
    or a wrong slot merge is far off."""
    g = torch.Generator().manual_seed(7 * B + N + D)
    spread = 0.5 + torch.rand(B, N, 1, generator=g)   # mean/std up to ~30: fp32 slot merging stays accurate
    x = 3 + 5 * torch.randn(B, N, 1, generator=g) + torch.randn(B, N, D, generator=g) * spread
    w = torch.randn(M, N, generator=g) / N ** 0.5
    kw = EPILOGUES[epilogue](B, M, D)
    # eps = 0 (rows of one channel excepted: 0/0): the padded tokens of a partial K step must stay finite
    eps = 0.0 if epilogue == "gate" and D > 1 else 1e-5
    ref64 = tk.token_linear_ref(x, w, **kw, upcast=True, normalize_input=True, eps=eps)
    xl, wl, kwl = x.to(DEVICE, dtype), w.to(DEVICE, dtype), _to(kw, dtype)
    stats = _stats_of(xl.view(B * N, D), source)
    stats = tk.RowStats(stats.partials.view(B, N, *stats.partials.shape[1:]), stats.width)
    out = tk.token_linear(xl, wl, **kwl, norm=stats, eps=eps)
    assert out.shape == (B, M, D) and out.dtype == dtype
    unfused = tk.token_linear_ref(xl, wl, **kwl, normalize_input=True, eps=eps)
    assert_close_to_ref(out.cpu(), unfused.cpu(), ref64, ATOL[dtype], f"norm from {source}, {epilogue}")


def test_token_linear_norm_reads_a_strided_view():
    x = (4 + torch.randn(2, 9, 48))[:, :, 8:40]
    w = torch.randn(5, 9)
    stats = tk.row_stats(x.contiguous().view(18, 32))
    stats = tk.RowStats(stats.partials.view(2, 9, 1, 2), stats.width)
    out = tk.token_linear(x.to(DEVICE), w.to(DEVICE), norm=stats, eps=1e-6)
    ref = tk.token_linear_ref(x, w, upcast=True, normalize_input=True, eps=1e-6)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-5, atol=1e-5)


def test_token_linear_norm_bad_input():
    x, w = torch.randn(2, 5, 40, device=DEVICE), torch.randn(3, 5, device=DEVICE)
    good = tk.row_stats(x.view(10, 40))
    with pytest.raises(ValueError, match="norm.partials"):
        tk.token_linear(x, w, norm=good)                                          # (10, 1, 2), not (2, 5, 1, 2)
    stats = tk.RowStats(good.partials.view(2, 5, 1, 2), good.width)
    with pytest.raises(ValueError, match="norm.partials"):
        tk.token_linear(x, w, norm=tk.RowStats(stats.partials, 32))                # 40 columns: 2 slots of 32
    with pytest.raises(TypeError, match="float32"):
        tk.token_linear(x, w, norm=tk.RowStats(stats.partials.double(), 40))
    with pytest.raises(ValueError, match="width"):
        tk.token_linear(x, w, norm=tk.RowStats(stats.partials, 0))
    with pytest.raises(ValueError, match="eps"):
        tk.token_linear(x, w, norm=stats, eps=-1.0)
    with pytest.raises(TypeError, match="RowStats"):
        tk.token_linear(x, w, norm=stats.partials)
    with pytest.raises(ValueError, match="contiguous"):
        strided = torch.zeros(2, 5, 2, 2, device=DEVICE)[:, :, :1]
        tk.token_linear(x, w, norm=tk.RowStats(strided, 40))


def test_token_ops_pass_opcheck():
    """The registered ops' schemas (inferred from the annotations, the norm arguments included), fake-tensor
    kernels and autograd registration."""
    dt = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    x = torch.randn(2, 9, 40, device=DEVICE, dtype=dt)
    w = torch.randn(7, 9, device=DEVICE, dtype=dt)
    stats = tk.row_stats(x.view(18, 40)).partials.view(2, 9, 1, 2)
    scale, shift = torch.randn(40, device=DEVICE), torch.randn(7, 40, device=DEVICE)
    gate = torch.randn(2, 7, 40, device=DEVICE, dtype=dt)
    cases = [("token_linear", (x, w, None, None, None, None, None, None)),
             ("token_linear", (x, w, torch.randn(7, device=DEVICE), scale, shift, gate, None, "gelu", stats, 40,
                               1e-6)),
             ("normalize_tokens", (x, 1e-6))]
    utils = None if torch.cuda.is_available() else ("test_schema", "test_autograd_registration", "test_faketensor")
    for name, args in cases:
        kw = {} if utils is None else {"test_utils": utils}
        torch.library.opcheck(getattr(torch.ops.ttf, name).default, args, **kw)


@pytest.mark.parametrize("B, N, D", [(1, 1, 1), (2, 5, 24), (1, 197, 40), (3, 50, 70)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_normalize_tokens_matches_float64(B, N, D, dtype):
    x = (3 * torch.randn(B, N, D, generator=torch.Generator().manual_seed(N)) + 1)
    out = tk.normalize_tokens(x.to(DEVICE, dtype), 1e-6)
    ref_lowp = tk.normalize_tokens_ref(x.to(dtype), 1e-6) if dtype != torch.float16 else \
        tk.normalize_tokens_ref(x.to(dtype).float(), 1e-6).to(dtype)   # CPU layer_norm has no fp16 kernel
    assert_close_to_ref(out.cpu(), ref_lowp, tk.normalize_tokens_ref(x, 1e-6, upcast=True), ATOL[dtype])


def test_normalize_tokens_strided_and_bad_input():
    x = torch.randn(2, 7, 64)[:, :, :24]
    out = tk.normalize_tokens(x.to(DEVICE))
    torch.testing.assert_close(out.cpu().double(), tk.normalize_tokens_ref(x, upcast=True), rtol=1e-5, atol=1e-5)
    assert kernels_runnable(_normalize_tokens_kernel)
    with pytest.raises(ValueError, match="unit stride"):
        tk.normalize_tokens(torch.randn(2, 7, 5, device=DEVICE).transpose(1, 2))
    with pytest.raises(ValueError, match="tokens"):
        tk.normalize_tokens(torch.randn(1, MAX_TOKENS + 1, 1, device=DEVICE))
    with pytest.raises(ValueError, match="eps"):
        tk.normalize_tokens(torch.randn(1, 3, 2, device=DEVICE), -1.0)
