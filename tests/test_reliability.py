"""Reliability promises that no single equivalence test covers (RELIABILITY.md): determinism, memory stability under
long runs, every backend checking its own inputs, and the spots where a plausible kernel bug was caught by one test
only (fp16 long reductions, overflowing logits, per-branch deit names, one visible patch)."""
import gc
import os

import pytest
import torch

import threethings_fast as ttf
from helpers import assert_within_bound, images_for, make_model, rel_err

BACKENDS = ["torch", "cuda"]   # "cuda" on the CPU = the C++ engine's ATen implementation


def triton_ready():
    tk = pytest.importorskip("threethings_fast.triton_kernels")
    if not torch.cuda.is_available() and not tk.interpreter_active():
        pytest.skip("Triton kernels not under the interpreter")
    return tk


# ---------------------------------------------------------------------------------------------------------------
# determinism
@pytest.mark.parametrize("backend", BACKENDS + ["triton"])
def test_same_input_twice_and_two_converts_are_bitwise_equal(backend):
    dtype = torch.float64
    if backend == "triton":
        triton_ready()
        dtype = torch.float32
    model = make_model("tiny_2x2", dtype=dtype, stem="hmlp_ln", img_size=48)
    x = images_for(model, 3, dtype=dtype)
    first = ttf.convert(model, backend=backend)
    a, b = first(x).clone(), first(x).clone()
    assert torch.equal(a, b)
    assert torch.equal(ttf.convert(model, backend=backend)(x), a)


# ---------------------------------------------------------------------------------------------------------------
# memory stability
RSS_GROWTH_BOUND = 16 * 2 ** 20     # bytes after 10,000 calls (allocator noise is a few MB; a leak of one small
                                    # tensor per call would be >= 10,000 x its size)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
@pytest.mark.parametrize("backend", BACKENDS)
def test_ten_thousand_calls_do_not_grow_memory(backend):
    model = make_model("tiny_2x1", dtype=torch.float32, depth=1, embed_dim=32, num_heads=1)
    fused = ttf.convert(model, backend=backend)
    x = images_for(model, 1, dtype=torch.float32)
    for _ in range(500):          # warm-up: allocator pools, workspaces, lazy init
        fused(x)
    gc.collect()
    before = rss_bytes()
    for _ in range(10_000):
        fused(x)
    gc.collect()
    grown = rss_bytes() - before
    assert grown <= RSS_GROWTH_BOUND, f"RSS grew by {grown / 2 ** 20:.1f} MiB over 10,000 calls"


# ---------------------------------------------------------------------------------------------------------------
# every backend checks its own inputs
@pytest.mark.parametrize("backend", BACKENDS + ["triton"])
def test_each_backend_refuses_images_of_another_dtype_itself(backend):
    dtype = torch.float16 if backend == "triton" else torch.float32
    if backend == "triton":
        triton_ready()
    model = make_model("tiny_2x2", dtype=torch.float32, stem="hmlp_bn", img_size=48)
    fused = ttf.convert(model, backend=backend, dtype=dtype)
    wrong = images_for(model, 1, dtype=torch.float64)
    message = f"FusedViT holds {dtype} weights but got torch.float64 images"
    with pytest.raises(TypeError, match=message):       # the model's own check
        fused(wrong)
    with pytest.raises(TypeError, match=message):       # the backend's, bypassing the model
        if getattr(fused.ops, "runs_whole_forward", False):
            fused.ops.run(fused.weights, wrong)
        else:
            fused.ops.embed(wrong, fused.weights)


# ---------------------------------------------------------------------------------------------------------------
# spots a hand-made mutation run caught once only
@pytest.mark.interpreter
def test_linear_fp16_long_reduction_accumulates_in_fp32():
    """K = 1024 with a large common offset: fp16 accumulation errs by ~1 at these magnitudes; fp32 accumulation
    leaves only the output's rounding (<= 1 ulp of fp16)."""
    tk = triton_ready()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    x = (100 + torch.randn(4, 1024, generator=g)).half().to(device)
    w = (torch.randn(32, 1024, generator=g) / 32).half().to(device)
    out = tk.linear(x, w, out=torch.full((4, 32), float("nan"), dtype=torch.float16, device=device))
    ref = x.double() @ w.double().t()
    ulp = 2.0 ** (torch.floor(torch.log2(ref.abs())) - 10)
    assert torch.isfinite(out).all()
    assert ((out.double() - ref).abs() <= 1.0 * ulp + 1e-3).all(), (out.double() - ref).abs().max()


@pytest.mark.interpreter
def test_attention_fp32_with_logits_beyond_exp_overflow():
    """Logits of several hundred: exp(s) overflows float32 above 88 unless the running max is subtracted."""
    tk = triton_ready()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(1)
    B, N, H, d = 1, 19, 2, 32
    qkv = torch.randn(B, N, 3 * H * d, generator=g)
    qkv[..., : H * d] *= 40            # q: logits |s| up to several hundred
    qkv = qkv.to(device)
    out = tk.attention(qkv, H, d, 1.0)
    q, k, v = qkv.double().cpu().view(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
    ref = (torch.softmax(q @ k.transpose(-1, -2), -1) @ v).transpose(1, 2).reshape(B, N, H * d)
    assert (q @ k.transpose(-1, -2)).abs().max() > 200
    assert torch.isfinite(out).all()
    assert (out.double().cpu() - ref).abs().max() < 1e-4


def test_deit_names_carry_each_branchs_own_values():
    model = make_model("tiny_1x3", init_values=1e-5)
    sd = ttf.export_state_dict(model, "deit")
    blk = model.blocks[0]
    for j in range(3):
        sfx = str(j) if j else ""
        assert torch.equal(sd[f"blocks.0.gamma_1{'_' + sfx if sfx else ''}"], blk.attns[j].ls.gamma.detach())
        assert torch.equal(sd[f"blocks.0.gamma_2{'_' + sfx if sfx else ''}"], blk.ffns[j].ls.gamma.detach())
        assert torch.equal(sd[f"blocks.0.norm1{sfx}.weight"], blk.attns[j].norm.weight.detach())
        assert torch.equal(sd[f"blocks.0.norm2{sfx}.bias"], blk.ffns[j].norm.bias.detach())
        assert torch.equal(sd[f"blocks.0.attn{sfx}.qkv.weight"], blk.attns[j].attn.qkv.weight.detach())
        assert torch.equal(sd[f"blocks.0.mlp{sfx}.fc2.weight"], blk.ffns[j].mlp.fc2.weight.detach())
    assert len({float(blk.attns[j].ls.gamma[0].detach()) for j in range(3)}) == 3   # the branches really differ


@pytest.mark.interpreter
@pytest.mark.parametrize("norm", ["bn", "ln"])
def test_hmlp_mae_with_exactly_one_visible_patch_writes_it(norm):
    tk = triton_ready()
    from threethings_fast.stem_fold import fold_stem
    from threethings_fast.reference.stems import HMLPStem
    from helpers import randomize
    device = "cuda" if torch.cuda.is_available() else "cpu"
    stem = randomize(HMLPStem(3, 32, norm=norm)).eval()
    folded = fold_stem(stem)
    x = torch.randn(2, 3, 48, 32, generator=torch.Generator().manual_seed(2))
    idx = torch.tensor([[4], [1]])
    prepared = tk.prepare_hmlp_stem(folded, torch.float32, device)
    out = torch.full((2, 1, 32), float("nan"), device=device)
    tk.hmlp_stem(x.to(device), prepared, visible_idx=idx.to(device), out=out)
    with torch.no_grad():
        ref = stem.double().forward_masked(x.double(), visible_idx=idx)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double().cpu(), ref, rtol=0, atol=1e-4)


def test_torch_and_engine_agree_on_a_model_no_test_names():
    """A model with every variant at once, through both CPU backends."""
    model = make_model("tiny_2x3", reg_tokens=2, no_embed_class=True, pre_norm=True, global_pool="avg",
                       fc_norm=False, stem="hmlp_ln", img_size=48, num_classes=3)
    x = images_for(model, 2)
    for backend in BACKENDS:
        assert rel_err(ttf.convert(model, backend=backend)(x), model(x)) <= 1e-10
    m32 = make_model("tiny_2x3", dtype=torch.float32, reg_tokens=2, no_embed_class=True, pre_norm=True,
                     global_pool="avg", fc_norm=False, stem="hmlp_ln", img_size=48, num_classes=3)
    m32.load_state_dict(model.state_dict())
    assert_within_bound(ttf.convert(m32, backend="cuda")(x.float()), m32(x.float()), model(x), torch.float32)
