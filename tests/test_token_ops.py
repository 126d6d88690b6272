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
