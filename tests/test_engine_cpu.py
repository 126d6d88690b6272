"""The C++ engine (backend="cuda") through its CPU implementation: the same op, schedule, packing, workspace plan
and argument checks as on the GPU, against the float64 reference."""
import pytest
import torch

import threethings_fast as ttf
from helpers import assert_within_bound, images_for, make_model, rel_err

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module", autouse=True)
def _engine():
    from threethings_fast.extension import load_engine
    try:
        load_engine()
    except RuntimeError as exc:   # a machine without a C++ compiler: say so, do not pass silently
        pytest.fail(f"the C++ engine could not be built: {exc}")


# (name, overrides): K = 1, 2, 3; odd N; odd widths; every stem; the token / pooling variants; padded head rows
CASES = [
    ("tiny_2x1", {}),
    ("tiny_2x2", {}),
    ("tiny_1x3", {"embed_dim": 72, "num_heads": 3, "mlp_ratio": 3.0}),              # head_dim 24, F = 216
    ("tiny_2x2", {"img_size": 112}),                                                 # N = 50
    ("tiny_2x2", {"img_size": 224, "embed_dim": 40, "num_heads": 2, "num_classes": 7}),   # N = 197, 7 logits
    ("tiny_2x2", {"stem": "hmlp_bn", "img_size": 48}),
    ("tiny_2x3", {"stem": "hmlp_ln", "embed_dim": 48, "num_heads": 3}),
    ("tiny_2x2", {"init_values": None, "num_classes": 0}),
    ("tiny_2x2", {"img_size": 42, "patch_size": 14, "in_chans": 1}),                # 196 inputs -> 200 padded
    ("tiny_2x2", {"reg_tokens": 3, "global_pool": "avg"}),
    ("tiny_2x2", {"class_token": False, "global_pool": "avg", "fc_norm": False}),
    ("tiny_2x2", {"distilled": True, "num_classes": 5}),
    ("tiny_2x2", {"pre_norm": True, "patch_bias": False, "no_embed_class": True}),
    ("tiny_2x1", {"final_norm": False}),
    ("tiny_2x2", {"stem": "hmlp_bn", "reg_tokens": 2, "global_pool": "avg", "img_size": 48}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for n, kw in CASES]


def engine_model(model, **kw):
    return ttf.convert(model, backend="cuda", **kw)


@pytest.mark.parametrize("name, kw", CASES, ids=IDS)
def test_engine_float64_matches_reference(name, kw):
    model = make_model(name, **kw)
    fused = engine_model(model)
    assert fused.backend == "cuda"
    for batch in (1, 3):
        x = images_for(model, batch)
        assert rel_err(fused(x), model(x)) <= 1e-10


@pytest.mark.parametrize("name, kw", [CASES[1], CASES[4], CASES[5], CASES[6], CASES[9], CASES[11]],
                         ids=[IDS[1], IDS[4], IDS[5], IDS[6], IDS[9], IDS[11]])
def test_engine_float32_within_reference_error(name, kw):
    model64 = make_model(name, **kw)
    model32 = make_model(name, dtype=torch.float32, **kw)
    model32.load_state_dict(model64.state_dict())
    x = images_for(model64, 2)
    fused = engine_model(model32)
    assert_within_bound(fused(x.float()), model32(x.float()), model64(x), torch.float32)


def test_engine_every_batch_from_1_to_8_and_channels_last_images():
    model = make_model("tiny_2x2", stem="hmlp_bn", img_size=48)
    fused = engine_model(model)
    for batch in range(1, 9):
        x = images_for(model, batch)
        assert rel_err(fused(x), model(x)) <= 1e-10
    x = images_for(model, 2).to(memory_format=torch.channels_last)
    assert rel_err(fused(x), model(x)) <= 1e-10


@pytest.mark.parametrize("name, kw", [CASES[1], CASES[5], CASES[6], CASES[12]], ids=[IDS[1], IDS[5], IDS[6], IDS[12]])
def test_engine_embedding_matches_the_torch_backend(name, kw):
    model = make_model(name, **kw)
    x = images_for(model, 2)
    engine, torch_backend = engine_model(model), ttf.convert(model, backend="torch")
    ours = engine.ops.embed(x, engine.weights)
    ref = torch_backend.ops.embed(x, torch_backend.weights)
    if torch_backend.weights.norm_pre is not None:
        w = torch_backend.weights.norm_pre
        ref = torch.nn.functional.layer_norm(ref, (ref.shape[-1],), w["weight"], w["bias"], model.config.norm_eps)
    assert ours.shape == ref.shape
    assert rel_err(ours, ref) <= 1e-12


def test_refold_reaches_the_engine():
    base, task = make_model("tiny_2x2", num_classes=5), make_model("tiny_2x2", num_classes=5)
    fused = engine_model(base)
    x = images_for(base)
    fused.refold(task, parts=("attn", "head", "pos"))
    mixed = make_model("tiny_2x2", num_classes=5)
    mixed.load_state_dict(base.state_dict())
    for blk_m, blk_t in zip(mixed.blocks, task.blocks):
        blk_m.attns.load_state_dict(blk_t.attns.state_dict())
    mixed.norm.load_state_dict(task.norm.state_dict())
    mixed.head.load_state_dict(task.head.state_dict())
    mixed.pos_embed.data.copy_(task.pos_embed.data)
    mixed.cls_token.data.copy_(task.cls_token.data)
    assert rel_err(fused(x), mixed(x)) <= 1e-10


def test_bad_inputs_get_the_same_errors_as_the_other_backends():
    model = make_model("tiny_2x2")
    for backend in ("torch", "cuda"):
        fused = ttf.convert(model, backend=backend)
        with pytest.raises(ValueError, match="empty batch"):
            fused(torch.zeros(0, 3, 32, 32, dtype=torch.float64))
        with pytest.raises(ValueError, match="rank 3"):
            fused(torch.zeros(3, 32, 32, dtype=torch.float64))
        with pytest.raises(TypeError, match="holds torch.float64 weights but got torch.float32 images"):
            fused(torch.zeros(1, 3, 32, 32))
        with pytest.raises(ValueError, match="built for 32x32 images, got 48x48"):
            fused(torch.zeros(1, 3, 48, 48, dtype=torch.float64))
        with pytest.raises(ValueError, match="expects 3 input channels"):
            fused(torch.zeros(1, 1, 32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="norm= selects the Triton backend"):
        ttf.convert(model, backend="cuda", norm="fused")


def _op_args(fused, batch=2):
    e = fused.weights.extras["engine"]
    x = images_for(fused, batch)
    return x, list(e["tensors"]), list(e["config"]), list(e["eps"])


def test_op_checks_every_argument():
    fused = engine_model(make_model("tiny_2x2"))
    x, w, cfg, eps = _op_args(fused)
    op = torch.ops.ttf.vit_forward
    with pytest.raises(RuntimeError, match="expected 22 weight tensors"):
        op(x, w[:-1], cfg, eps)
    bad = list(w)
    bad[4] = w[4][:-1]
    with pytest.raises(RuntimeError, match=r"weight 4 \(block 0 w_qkv\) must have shape \(384, 64\), got \(383, 64\)"):
        op(x, bad, cfg, eps)
    bad[4] = w[4].float()
    with pytest.raises(RuntimeError, match=r"weight 4 \(block 0 w_qkv\) is Float, the images are Double"):
        op(x, bad, cfg, eps)
    bad[4] = w[4].t().contiguous().t()
    with pytest.raises(RuntimeError, match="must have shape|must be contiguous"):
        op(x, bad, cfg, eps)
    with pytest.raises(RuntimeError, match="config layout version 7"):
        op(x, w, [7] + cfg[1:], eps)
    with pytest.raises(RuntimeError, match="config must hold 17 ints"):
        op(x, w, cfg[:-1], eps)
    with pytest.raises(RuntimeError, match="empty batch"):
        op(x[:0], w, cfg, eps)
    with pytest.raises(RuntimeError, match="images must be"):
        op(x[:, :, :16], w, cfg, eps)
    with pytest.raises(RuntimeError, match="workspace of 16 bytes is smaller"):
        op(x, w, cfg, eps, torch.empty(16, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="workspace must be a contiguous uint8 vector"):
        op(x, w, cfg, eps, torch.empty(10 ** 6, dtype=torch.float32))
    with pytest.raises(RuntimeError, match="16-byte aligned"):
        op(x, w, cfg, eps, torch.empty(10 ** 6 + 1, dtype=torch.uint8)[1:])


def test_workspace_plan_regions_do_not_overlap_and_splits_fit_the_gpu():
    fused = engine_model(make_model("tiny_2x2", img_size=224, embed_dim=384, num_heads=6))
    for batch in (1, 2, 8):
        for sm in (0, 132):
            p = fused.ops.plan(fused.weights, batch, sm)
            cfg = fused.config
            m, d, es = batch * cfg.num_tokens, cfg.embed_dim, 8
            regions = sorted([(p["x"], m * d * es), (p["xn"], m * d * es), (p["attn"], m * 2 * d * es),
                              (p["wide"], m * max(3 * 2 * d, 2 * cfg.mlp_hidden) * es),
                              (p["partial"], max(p["splits_proj"], p["splits_fc2"]) * m * d * es)])
            for (a, size), (b, _) in zip(regions, regions[1:]):
                assert a + size <= b, p
            assert all(v % 256 == 0 for k, v in p.items() if not k.startswith("splits"))
            if sm == 0:
                assert p["splits_proj"] == p["splits_fc2"] == p["splits_stem"] == 1
            for key, inner in (("splits_proj", 2 * d), ("splits_fc2", 2 * cfg.mlp_hidden)):
                s = p[key]
                assert inner % s == 0 and (inner // s) % 64 == 0
                tiles = -(-m // 128) * -(-d // 128)
                assert s == 1 or tiles * s <= sm
    bs1 = fused.ops.plan(fused.weights, 1, 132)
    assert bs1["splits_proj"] > 1 and bs1["splits_fc2"] > 1      # M = 197 cannot fill 132 SMs unsplit


def test_opcheck_and_export():
    fused = engine_model(make_model("tiny_2x2", dtype=torch.float32))
    x, w, cfg, eps = _op_args(fused)
    x = x.float()
    torch.library.opcheck(torch.ops.ttf.vit_forward.default, (x, w, cfg, eps, None),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.ttf.vit_embed.default, (x, w, cfg, eps), test_utils=("test_schema",
                                                                                          "test_faketensor"))

    class Wrapper(torch.nn.Module):
        def forward(self, images):
            return torch.ops.ttf.vit_forward(images, w, cfg, eps)

    exported = torch.export.export(Wrapper(), (x,))
    assert any(n.target == torch.ops.ttf.vit_forward.default for n in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(x), fused(x))


def test_cuda_envelope_is_known_without_a_gpu():
    def problem(name, dtype=torch.bfloat16, **kw):
        fused = engine_model(make_model(name, **kw))
        e = fused.weights.extras["engine"]
        return torch.ops.ttf.engine_cuda_problem(e["config"], e["eps"], dtype)

    assert problem("tiny_2x2") == ""                                         # head_dim 32, D = 64
    assert problem("tiny_2x2", embed_dim=160, num_heads=2, patch_size=14, img_size=28) == ""   # head_dim 80
    assert "bfloat16 or float16" in problem("tiny_2x2", dtype=torch.float32)
    assert "head_dim 24" in problem("tiny_1x3", embed_dim=72, num_heads=3)
    assert "width 40 is not a multiple of 8" not in problem("tiny_2x2", embed_dim=40, num_heads=2)  # head_dim 20
    assert "head_dim 20" in problem("tiny_2x2", embed_dim=40, num_heads=2)
    assert "E/4 = 12" in problem("tiny_2x2", stem="hmlp_bn", embed_dim=48, num_heads=1, img_size=48) or \
        "head_dim 48" in problem("tiny_2x2", stem="hmlp_bn", embed_dim=48, num_heads=1, img_size=48)


@pytest.mark.interpreter
def test_hybrid_backend_routes_by_batch_and_falls_back_on_a_failed_self_check():
    """backend='auto' on sm_90 builds this pairing; on the CPU it runs with the engine's ATen implementation and the
    Triton kernels under the interpreter."""
    tk = pytest.importorskip("threethings_fast.triton_kernels")
    if not tk.interpreter_active():
        pytest.skip("Triton kernels not under the interpreter")
    from threethings_fast.models.vit.folding import fold_model
    from threethings_fast.fused.backends import make_ops
    from threethings_fast.fused.model import FusedViT
    model64 = make_model("tiny_2x2", num_classes=5)
    model32 = make_model("tiny_2x2", dtype=torch.float32, num_classes=5)
    model32.load_state_dict(model64.state_dict())
    ops = make_ops("hybrid")
    ops.max_batch = 2
    fused = FusedViT(ops.prepare(fold_model(model32), torch.float32, torch.device("cpu")), ops, torch.float32, "cpu")
    assert fused.backend == "cuda (batch <= 2) + triton"
    calls = []
    engine_run = ops.engine.run
    ops.engine.run = lambda w, x: calls.append(x.shape[0]) or engine_run(w, x)
    for batch in (1, 3):
        x = images_for(model64, batch)
        assert_within_bound(fused(x.float()), model32(x.float()), model64(x), torch.float32)
    assert calls == [1]                                   # batch 3 went to Triton
    ops.self_check(fused.weights)
    assert ops.engine_ok
    ops.engine.run = lambda w, x: torch.full((x.shape[0], 5), 7.0)
    with pytest.warns(RuntimeWarning, match="disagrees with the Triton backend"):
        ops.self_check(fused.weights)
    assert not ops.engine_ok and fused.backend == "triton"
    x = images_for(model64, 1)
    assert_within_bound(fused(x.float()), model32(x.float()), model64(x), torch.float32)


def test_torch_compile_traces_the_engine_op():
    fused = engine_model(make_model("tiny_2x2", dtype=torch.float32))
    x, w, cfg, eps = _op_args(fused)
    x = x.float()

    def forward(images):
        return torch.ops.ttf.vit_forward(images, w, cfg, eps) * 2

    compiled = torch.compile(forward, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), fused(x) * 2)
