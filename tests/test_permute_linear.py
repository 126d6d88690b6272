"""permute_projections: the Vision Permutator's height / width / channel projections in one grouped launch, against
float64, within twice PyTorch's own error in the dtype; odd grids (H != W), segment widths S = 1 and odd, batch 1
and 3, with and without biases, poisoned outputs, bad input, the registered op. CPU: the interpreter (fp32, fp16;
bf16 tl.dot is wrong under it)."""
import pytest
import torch

from helpers import ATOL, NOT_INTERPRETED, assert_close_to_ref, kernels_runnable

pytest.importorskip("triton")
tk = pytest.importorskip("threethings_fast.triton_kernels")
from threethings_fast.triton_kernels.permute_linear import _permute_projections_kernel  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
pytestmark = [pytest.mark.interpreter,
              pytest.mark.skipif(not kernels_runnable(_permute_projections_kernel), reason=NOT_INTERPRETED)]
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if HAS_CUDA else [])

# (B, H, W, C, K): S = C / K. H·S != C in most; (1, 7, 6, 30, 3): H·S = 70 > 64, two column tiles and a masked
# K step; the last one is ViP-S/7's segment width S = 6 on a small grid.
SHAPES = [(1, 1, 1, 1, 1), (3, 2, 5, 12, 4), (1, 5, 3, 7, 7), (3, 3, 4, 15, 3), (1, 7, 6, 30, 3), (2, 4, 4, 24, 4)]


def _problem(B, H, W, C, K, bias=True, seed=0):
    """x (B, H, W, C) and the six weights / biases, float32 on the CPU (weights scaled to unit-variance outputs)."""
    g = torch.Generator().manual_seed(seed)
    S = C // K
    x = torch.randn(B, H, W, C, generator=g)
    args = []
    for n in (H * S, W * S, C):
        args += [torch.randn(n, n, generator=g) / n ** 0.5, torch.randn(n, generator=g) if bias else None]
    return x, args


def _cast(x, args, dtype):
    # weights in x's dtype; biases stay fp32, as a caller keeping them exact would pass them (any float dtype works)
    return x.to(DEVICE, dtype), [None if a is None else a.to(DEVICE, dtype if a.dim() == 2 else torch.float32)
                                 for a in args]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("B, H, W, C, K", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_permute_projections_matches_float64(B, H, W, C, K, bias, dtype):
    x, args = _problem(B, H, W, C, K, bias, seed=B * 100 + H * 10 + C)
    ref64 = tk.permute_projections_ref(x, *args, K, upcast=True)
    xl, argsl = _cast(x, args, dtype)
    out = tk.permute_projections(xl, *argsl, K)
    assert out.shape == (3, B, H, W, C) and out.dtype == dtype
    ref_lowp = tk.permute_projections_ref(xl.cpu(), *[None if a is None else a.cpu() for a in argsl], K)
    assert_close_to_ref(out.cpu(), ref_lowp, ref64, ATOL[dtype], f"{(B, H, W, C, K)}")


def test_every_output_element_is_written(monkeypatch):
    """The kernel allocates y with torch.empty: poison that allocation so an unwritten element shows as NaN."""
    real_empty = torch.empty

    def poisoned_empty(*shape, **kw):
        t = real_empty(*shape, **kw)
        return t.fill_(float("nan")) if t.is_floating_point() else t
    x, args = _problem(3, 3, 5, 15, 5)
    xl, argsl = _cast(x, args, torch.float32)
    monkeypatch.setattr(torch, "empty", poisoned_empty)
    out = tk.permute_projections(xl, *argsl, 5)
    monkeypatch.undo()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.cpu().double(), tk.permute_projections_ref(x, *args, 5, upcast=True),
                               rtol=1e-5, atol=1e-5)


def test_permute_projections_bad_input():
    x, args = _cast(*_problem(2, 3, 4, 12, 4), torch.float32)     # S = 3: height_w (9, 9), width_w (12, 12)
    hw, hb, ww, wb, cw, cb = args
    with pytest.raises(ValueError, match="rank 4"):
        tk.permute_projections(x.view(2, 12, 12), *args, 4)
    with pytest.raises(ValueError, match="segments = 5"):
        tk.permute_projections(x, *args, 5)
    with pytest.raises(ValueError, match="segments must be"):
        tk.permute_projections(x, *args, 0)
    with pytest.raises(ValueError, match=r"height_w must have shape \(H·S, H·S\).*\(9, 9\)"):
        tk.permute_projections(x, ww, hb, ww, wb, cw, cb, 4)
    with pytest.raises(ValueError, match=r"width_w must have shape \(W·S, W·S\)"):
        tk.permute_projections(x, hw, hb, hw, wb, cw, cb, 4)
    with pytest.raises(ValueError, match=r"channel_w"):
        tk.permute_projections(x, hw, hb, ww, wb, cw[:, :6], cb, 4)
    with pytest.raises(TypeError, match="channel_w"):
        tk.permute_projections(x, hw, hb, ww, wb, cw.half(), cb, 4)
    with pytest.raises(TypeError):
        tk.permute_projections(x.to(torch.int32), hw, hb, ww, wb, cw, cb, 4)
    with pytest.raises(ValueError, match="three biases"):
        tk.permute_projections(x, hw, hb, ww, None, cw, cb, 4)
    with pytest.raises(ValueError, match="width_b"):
        tk.permute_projections(x, hw, hb, ww, hb, cw, cb, 4)
    with pytest.raises(TypeError, match="share a dtype"):
        tk.permute_projections(x, hw, hb, ww, wb.half(), cw, cb, 4)
    with pytest.raises(ValueError, match="contiguous"):
        tk.permute_projections(x.transpose(1, 2).contiguous().transpose(1, 2), *args, 4)
    empty = tk.permute_projections(x[:0], *args, 4)
    assert empty.shape == (3, 0, 3, 4, 12)


def test_registered_op_and_opcheck():
    dt = torch.bfloat16 if HAS_CUDA else torch.float32
    x, args = _problem(2, 3, 2, 8, 2)
    x, args = x.to(DEVICE, dt), [a.to(DEVICE, dt) for a in args]
    assert torch.equal(torch.ops.ttf.permute_projections(x, *args, 2), tk.permute_projections(x, *args, 2))
    # the AOT-dispatch checks need real kernels (the interpreter runs outside tracing): GPU only
    utils = None if HAS_CUDA else ("test_schema", "test_autograd_registration", "test_faketensor")
    kw = {} if utils is None else {"test_utils": utils}
    torch.library.opcheck(torch.ops.ttf.permute_projections.default, (x, *args, 2), **kw)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("B, H, C, K", [(1, 32, 192, 32), (8, 16, 384, 16)])   # ViP-S/7 stages 1 and 2
def test_permute_projections_gpu_vip_sizes(B, H, C, K, dtype):
    x, args = _problem(B, H, H, C, K)
    ref64 = tk.permute_projections_ref(x, *args, K, upcast=True)
    xl, argsl = _cast(x, args, dtype)
    out = tk.permute_projections(xl, *argsl, K)
    ref_lowp = tk.permute_projections_ref(xl, *argsl, K)
    assert_close_to_ref(out.cpu(), ref_lowp.cpu(), ref64, ATOL[dtype], f"{(B, H, C, K)}")
