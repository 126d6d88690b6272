"""The C++ engine on an sm_90 GPU (bf16), ordered so that the first failure points at its cause: each kernel alone
on odd shapes against a float64 reference (NaN-poisoned outputs), then the stems, then whole models against the
reference within twice its own bf16 error, then CUDA-graph replay and determinism. Run by bench/engine_gpu.sh."""
import functools
import os

import pytest
import torch

import threethings_fast as ttf
from helpers import ATOL, images_for, make_model, randomize

pytestmark = [pytest.mark.gpu, pytest.mark.engine]
BF16 = torch.bfloat16


def _sm90() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.fixture(scope="module", autouse=True)
def _engine():
    if not _sm90():
        pytest.skip("the engine's CUDA kernels need an sm_90 GPU")
    from threethings_fast.extension import engine_capabilities
    assert engine_capabilities()["cuda"], "the engine was built without its CUDA part"


def within(out, low, ref64, dtype=BF16, what=""):
    """|out - ref64| <= 2 |low - ref64| + atol: the fused error against the reference's own low-precision error."""
    out, low, ref64 = out.double(), low.double(), ref64.double()
    assert torch.isfinite(out).all(), f"{what}: NaN/inf in the output (an unwritten element?)"
    err, ref_err = (out - ref64).abs().max().item(), (low - ref64).abs().max().item()
    assert err <= 2 * ref_err + ATOL[dtype], f"{what}: error {err:.3e} > 2 x {ref_err:.3e} + {ATOL[dtype]}"


# ---------------------------------------------------------------------------------------------------------------
# 1. GEMM: every epilogue and split count, residue M / N
@pytest.mark.parametrize("M", [1, 197, 394, 1576])
@pytest.mark.parametrize("N, K", [(384, 384), (1152, 384), (384, 3072), (1000, 768)])
@pytest.mark.parametrize("epilogue, splits", [(0, 1), (1, 1), (2, 1), (2, 4), (2, 12)])
def test_gemm_kernel(M, N, K, epilogue, splits):
    if epilogue == 2 and (K % splits or (K // splits) % 8):
        pytest.skip("split does not divide K into 8-element multiples")
    g = torch.Generator(device="cuda").manual_seed(M * 7 + N + K)
    a = torch.randn(M, K, device="cuda", generator=g).to(BF16)
    w = (torch.randn(N, K, device="cuda", generator=g) / K ** 0.5).to(BF16)
    b = torch.randn(N, device="cuda", generator=g).to(BF16)
    out = torch.ops.ttf.engine_gemm(a, w, None if epilogue == 2 else b, epilogue, splits)
    ref64 = a.double() @ w.double().t()
    low = (a.float() @ w.float().t())
    if epilogue == 2:
        assert out.shape == (splits, M, N) and out.dtype == torch.float32
        within(out.sum(0), low, ref64, torch.float32, "split-K partials")
        return
    ref64 = ref64 + b.double()
    low = torch.nn.functional.linear(a, w, b)
    if epilogue == 1:
        ref64, low = torch.nn.functional.gelu(ref64), torch.nn.functional.gelu(low)
    within(out, low, ref64, BF16, f"gemm epilogue {epilogue}")


# ---------------------------------------------------------------------------------------------------------------
# 2. attention over K·H heads from the packed QKV
@pytest.mark.parametrize("N", [1, 2, 50, 197, 577])
@pytest.mark.parametrize("head_dim", [32, 64, 80, 96, 128])
@pytest.mark.parametrize("B, heads", [(1, 12), (3, 24)])
def test_attention_kernel(N, head_dim, B, heads):
    g = torch.Generator(device="cuda").manual_seed(N + head_dim + heads)
    qkv = torch.randn(B, N, 3 * heads * head_dim, device="cuda", generator=g).to(BF16)
    out = torch.ops.ttf.engine_attention(qkv, heads, head_dim)
    q, k, v = qkv.view(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    ref64 = torch.softmax(q.double() @ k.double().transpose(-1, -2), -1) @ v.double()
    low = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=1.0)
    reshape = lambda t: t.transpose(1, 2).reshape(B, N, heads * head_dim)  # noqa: E731
    within(out, reshape(low), reshape(ref64), BF16, f"attention N={N} d={head_dim}")


def test_attention_large_logits_do_not_overflow():
    qkv = torch.randn(1, 197, 3 * 12 * 64, device="cuda").to(BF16)
    qkv[..., : 12 * 64] *= 30          # logits of several hundred: exp without the running max would overflow
    out = torch.ops.ttf.engine_attention(qkv, 12, 64)
    q, k, v = qkv.view(1, 197, 3, 12, 64).permute(2, 0, 3, 1, 4)
    ref = torch.softmax(q.double() @ k.double().transpose(-1, -2), -1) @ v.double()
    assert torch.isfinite(out).all()
    assert (out.double() - ref.transpose(1, 2).reshape(1, 197, -1)).abs().max() < 0.1


# ---------------------------------------------------------------------------------------------------------------
# 3. stems, 4. whole models
STEMS = [("linear", {}), ("hmlp_bn", {}), ("hmlp_ln", {}), ("linear", {"patch_size": 14, "img_size": 224}),
         ("linear", {"reg_tokens": 4, "pre_norm": True, "patch_bias": False})]


def pair(name, **kw):
    """The reference in float64 and in bf16 with the same (perturbed) weights, built on the GPU."""
    with torch.device("cuda"):
        model64 = randomize(ttf.create_model(name, **kw)).double().eval()
        model16 = ttf.create_model(name, **kw).to(BF16).eval()
    model16.load_state_dict(model64.state_dict())
    return model64, model16


@functools.lru_cache(maxsize=4)
def paper_model(name):
    model64, model16 = pair(name)
    return model64, model16, ttf.convert(model16, backend="cuda")


@pytest.mark.parametrize("stem, kw", STEMS, ids=[f"{s}-{k}" for s, k in STEMS])
def test_engine_stem(stem, kw):
    model64, model16 = pair("S12x1", depth=1, stem=stem, **kw)
    x = images_for(model64, 3, device="cuda")
    engine = ttf.convert(model16, backend="cuda")
    ours = engine.ops.embed(x.to(BF16), engine.weights)
    assert ours.shape == (3, model64.config.num_tokens, model64.config.embed_dim)
    within(ours, model16.embed(x.to(BF16)), model64.embed(x), BF16, f"stem {stem}")


MODELS = ["S18x2", "S36x1", "B12x1", "B18x2"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", [1, 2, 4, 8])
def test_engine_whole_model(name, batch):
    model64, model16, engine = paper_model(name)
    x = images_for(model64, batch, device="cuda")
    assert engine.backend == "cuda"
    within(engine(x.to(BF16)), model16(x.to(BF16)), model64(x), BF16, f"{name} batch {batch}")


VARIANTS = [dict(distilled=True), dict(reg_tokens=4, class_token=False, global_pool="avg", no_embed_class=True),
            dict(global_pool="avg", fc_norm=False), dict(final_norm=False, num_classes=10), dict(num_parallel=3)]


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_engine_variants(kw):
    model64, model16 = pair("S12x1", depth=2, **kw)
    x = images_for(model64, 2, device="cuda")
    within(ttf.convert(model16, backend="cuda")(x.to(BF16)), model16(x.to(BF16)), model64(x), BF16, str(kw))


# ---------------------------------------------------------------------------------------------------------------
# 5. CUDA graphs and determinism
def test_graph_replay_equals_eager_and_runs_are_deterministic():
    _, model, engine = paper_model("S18x2")
    x = torch.randn(2, 3, 224, 224, device="cuda", dtype=BF16)
    eager1, eager2 = engine(x).clone(), engine(x).clone()
    assert torch.equal(eager1, eager2), "two eager runs differ: a race or an unwritten buffer"
    graphed = ttf.fused.graphs.capture(engine, batch_sizes=[2])
    assert torch.equal(graphed(x).clone(), eager1)
    other = ttf.convert(model, backend="cuda")
    assert torch.equal(other(x), eager1), "two converts of one model differ"


def test_engine_refuses_what_its_kernels_cannot_run():
    model = make_model("tiny_2x2", dtype=torch.float32).cuda()
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        ttf.convert(model, backend="cuda")
    odd = make_model("tiny_2x2", dtype=BF16, embed_dim=72, num_heads=3).cuda()   # head_dim 24
    with pytest.raises(ValueError, match="head_dim 24"):
        ttf.convert(odd, backend="cuda")


@pytest.mark.skipif(os.environ.get("TTF_ATTENTION_ROWS") is None, reason="tile override not set")
def test_attention_tile_override_still_exact():
    test_attention_kernel(197, 64, 1, 12)


# ---------------------------------------------------------------------------------------------------------------
# 6. memory stability on the GPU
def test_device_memory_is_flat_across_calls_replays_and_converts():
    _, model, engine = paper_model("S18x2")
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=BF16)
    for _ in range(10):
        engine(x)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(1000):
        engine(x)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before, "eager calls allocate more and more"
    graphed = engine.capture([1])
    graphed(x)
    torch.cuda.synchronize()
    after_capture = torch.cuda.memory_allocated()
    for _ in range(1000):
        graphed(x)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == after_capture, "graph replays allocate"
    del graphed
    small = make_model("tiny_2x2", dtype=BF16).cuda()
    import gc
    gc.collect()
    baseline = torch.cuda.memory_allocated()
    for _ in range(100):
        fused = ttf.convert(small, backend="cuda")
        fused(images_for(small, 1, BF16, "cuda"))
        del fused
    gc.collect()
    assert torch.cuda.memory_allocated() - baseline < 2 ** 20, "converted models are not freed"
