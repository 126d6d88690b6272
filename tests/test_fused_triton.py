"""The fused model on the Triton backend, end to end, against the reference (float64 oracle).
CPU: the interpreter at tiny shapes (fp32, fp16; bf16 tl.dot is wrong under the interpreter). GPU: real models."""
import copy

import pytest
import torch

import threethings_fast as ttf
from helpers import assert_within_bound, images_for, make_model

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CPU_DTYPES = [torch.float32, torch.float16]


def _check(model64, dtype, batch=2, device=DEVICE, **convert_kw):
    model_lowp = ttf.create_model(model64.config).to(dtype=dtype, device=device).eval()
    model_lowp.load_state_dict(model64.state_dict())
    x64 = images_for(model64, batch)
    fused = ttf.convert(model_lowp, backend="triton", **convert_kw)
    assert fused.backend == "triton"
    out = fused(x64.to(device=device, dtype=dtype))
    assert out.dtype == dtype and out.shape == (batch, model64.config.num_classes or model64.config.embed_dim)
    ref_lowp = model_lowp(x64.to(device=device, dtype=dtype))
    assert_within_bound(out, ref_lowp, model64(x64), dtype)


@pytest.mark.parametrize("norm", ["separate", "fused"])
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("name, kw", [
    ("tiny_2x2", {}),                                              # K = 2, linear stem
    ("tiny_2x1", {"stem": "hmlp_bn"}),                             # sequential, BN-folded hMLP
    ("tiny_1x3", {"stem": "hmlp_ln", "init_values": None}),        # K = 3, LN hMLP, no LayerScale
])
def test_tiny_model_triton_matches_reference(name, kw, dtype, norm):
    _check(make_model(name, **kw), dtype, batch=3 if "hmlp_ln" in kw.get("stem", "") else 2, norm=norm)


class _CountingKernels:
    """Stands in for `ops.tk` (the triton_kernels package) and records which ops a forward launches."""

    OPS = ("normalize", "row_stats", "linear", "attention", "patch_embed", "hmlp_stem")

    def __init__(self, module):
        self._module = module
        self.calls: list[str] = []

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if name not in self.OPS:
            return attr

        def counted(*args, **kwargs):
            self.calls.append(name)
            return attr(*args, **kwargs)
        return counted


def test_fused_norm_launches_and_refold():
    """norm="fused": no normalize launch (5 kernels per block), and refold keeps the column sums in step with the
    re-folded weights."""
    model = make_model("tiny_2x2", dtype=torch.float32)
    x = images_for(model, 2).float()
    fused = ttf.convert(model, backend="triton", norm="fused")
    spy = _CountingKernels(fused.ops.tk)
    fused.ops.tk = spy
    fused(x)
    depth = model.config.depth
    assert spy.calls.count("normalize") == 0 and spy.calls.count("row_stats") == 2   # after the stem; the head
    assert spy.calls.count("linear") == 4 * depth + 1 and spy.calls.count("attention") == depth
    assert len(spy.calls) == 5 * depth + 4                                           # + stem, head
    # refold: change the attention weights of the source model, re-fold them, compare with a fresh conversion
    fused = ttf.convert(copy.deepcopy(model), backend="triton", norm="fused")
    with torch.no_grad():
        for blk in model.blocks:
            for attn in blk.attns:
                attn.attn.qkv.weight.mul_(1.5)
                attn.norm.weight.add_(0.25)
    fused.refold(model, parts=("attn", "head", "pos"))
    fresh = ttf.convert(model, backend="triton", norm="fused")
    torch.testing.assert_close(fused(x), fresh(x), rtol=1e-5, atol=1e-5)


def test_fused_norm_follows_weights_edited_in_place():
    """Column sums are derived from the packed weights: an in-place edit without refold must not leave them stale."""
    model = make_model("tiny_2x2", dtype=torch.float32)
    x = images_for(model, 2).float()
    outs = {}
    for norm in ("separate", "fused"):
        fused = ttf.convert(model, backend="triton", norm=norm)
        fused(x)
        with torch.no_grad():
            fused.weights.blocks[0].w_qkv.mul_(1.25)
            fused.weights.head_w.add_(0.1)
        outs[norm] = fused(x)
    torch.testing.assert_close(outs["fused"], outs["separate"], rtol=1e-5, atol=1e-5)


def test_fused_norm_needs_triton_backend():
    with pytest.raises(ValueError, match="norm='fused' needs the Triton backend"):
        ttf.convert(make_model("tiny_2x2"), backend="torch", norm="fused")
    with pytest.raises(ValueError, match="norm must be"):
        ttf.convert(make_model("tiny_2x2", dtype=torch.float32), backend="triton", norm="layer")


def test_triton_backend_rejects_float64():
    with pytest.raises(TypeError, match="float64"):
        ttf.convert(make_model("tiny_2x2"), backend="triton")


# --- GPU: real shapes -------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name, kw", [
    ("S18x2", {}), ("S36x1", {"depth": 12}), ("B18x2", {"depth": 6}),
    ("S18x2", {"depth": 4, "num_parallel": 3}), ("S18x2", {"depth": 4, "num_parallel": 4}),
    ("S18x2", {"depth": 4, "stem": "hmlp_bn"}), ("S18x2", {"depth": 2, "img_size": 384}),
    ("S18x2", {"depth": 2, "embed_dim": 320, "num_heads": 4}),   # head_dim 80
    ("B12x1", {"depth": 2, "embed_dim": 768, "num_heads": 6}),   # head_dim 128
])
def test_real_models_on_gpu(name, kw, dtype):
    _check(make_model(name, **kw), dtype, batch=3, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name, kw", [
    ("S18x2", {}), ("S36x1", {"depth": 12, "stem": "hmlp_bn"}), ("B18x2", {"depth": 6}),
    ("S18x2", {"depth": 2, "img_size": 384}), ("S18x2", {"depth": 4, "num_parallel": 3}),
])
def test_real_models_fused_norm_on_gpu(name, kw, dtype):
    _check(make_model(name, **kw), dtype, batch=3, device="cuda", norm="fused")


@pytest.mark.gpu
def test_cuda_graph_replay_fused_norm():
    from threethings_fast.fused.graphs import capture
    model = make_model("S18x2", dtype=torch.bfloat16, depth=4).cuda()
    fused = ttf.convert(model, backend="triton", norm="fused")
    graphed = capture(fused, [2])
    x = torch.randn(2, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(graphed(x), fused(x))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_convert_to_bare_cuda_device(backend):
    # torch.device("cuda") != torch.device("cuda:0"), while tensors always carry the index: the model must not keep
    # the bare name and then refuse every input.
    model = make_model("tiny_2x2", dtype=torch.float32)
    fused = ttf.convert(model, backend=backend, device="cuda", dtype=torch.float16)
    assert fused.device == torch.device("cuda", torch.cuda.current_device())
    x = torch.randn(2, 3, model.config.img_size, model.config.img_size)
    out = fused(x.to("cuda", torch.float16))
    assert out.device == fused.device and torch.isfinite(out).all()


@pytest.mark.gpu
def test_cuda_graph_replay_equals_eager():
    from threethings_fast.fused.graphs import capture
    model = make_model("S18x2", dtype=torch.bfloat16, depth=4).cuda()
    fused = ttf.convert(model, backend="triton")
    graphed = capture(fused, [1, 3])
    xs = {b: torch.randn(b, 3, 224, 224, device="cuda", dtype=torch.bfloat16) for b in (1, 3)}
    outs = {b: graphed(xs[b]) for b in (3, 1)}          # replay out of capture order
    for b in (1, 3):
        assert torch.equal(outs[b], fused(xs[b])), f"batch {b}: graph replay differs from eager"
    with pytest.raises(ValueError, match="no graph captured"):
        graphed(torch.randn(2, 3, 224, 224, device="cuda", dtype=torch.bfloat16))


@pytest.mark.gpu
def test_cuda_graph_of_torch_backend_survives_other_batch_sizes():
    # The torch backend reuses its widest buffers across calls; captured graphs must not point at them (an eager call
    # at another batch size would free them under the graph).
    from threethings_fast.fused.graphs import capture
    model = make_model("S18x2", dtype=torch.float16, depth=2).cuda()
    fused = ttf.convert(model, backend="torch")
    graphed = capture(fused, [1, 3])
    xs = {b: torch.randn(b, 3, 224, 224, device="cuda", dtype=torch.float16) for b in (1, 2, 3)}
    fused(xs[2])                                        # replaces the eager workspace buffers
    for b in (3, 1):
        out = graphed(xs[b]).clone()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, fused(xs[b]), rtol=1e-3, atol=1e-3)  # same kernels; garbage would be far off


@pytest.mark.gpu
def test_torch_compile_over_the_ops():
    model = make_model("S18x2", dtype=torch.bfloat16, depth=2).cuda()
    fused = ttf.convert(model, backend="triton")
    x = torch.randn(2, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    from threethings_fast.models.vit.forward import vit_forward
    compiled = torch.compile(lambda im: vit_forward(fused.ops, fused.weights, im), fullgraph=False)
    # Inductor re-autotunes user kernels and may pick another tile (another summation order): not bit-equal.
    torch.testing.assert_close(compiled(x), fused(x), rtol=2e-2, atol=2e-2)
