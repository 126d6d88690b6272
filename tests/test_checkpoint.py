import io

import pytest
import torch

import threethings_fast as ttf
from helpers import images_for, make_model


def _same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name, kw", [
    ("tiny_2x2", {}), ("tiny_2x1", {}), ("tiny_1x3", {}), ("tiny_2x2", {"init_values": None}),
    ("tiny_2x2", {"stem": "hmlp_bn"}), ("tiny_2x1", {"stem": "hmlp_ln"}),
])
def test_round_trip_deit_ours_timm_ours_is_exact(name, kw):
    src = make_model(name, **kw)
    deit = ttf.export_state_dict(src, layout="deit")
    assert ttf.detect_layout(deit) == "deit"
    a = ttf.create_model(name, **kw).double()
    assert ttf.load_state_dict(a, deit) == "deit"
    timm = ttf.export_state_dict(a, layout="timm")
    assert ttf.detect_layout(timm) == "timm"
    b = ttf.create_model(name, **kw).double()
    assert ttf.load_state_dict(b, timm) == "timm"
    _same(a.state_dict(), b.state_dict())
    _same(ttf.export_state_dict(b, "deit"), deit)
    x = images_for(src)
    assert torch.equal(a.eval()(x), b.eval()(x))
    torch.testing.assert_close(a(x), src(x), rtol=1e-13, atol=1e-13)


def test_deit_key_names():
    sd = ttf.export_state_dict(make_model("tiny_2x2", stem="hmlp_bn"), layout="deit")
    for key in ["blocks.0.norm11.weight", "blocks.0.attn1.qkv.weight", "blocks.0.gamma_1_1", "blocks.0.gamma_2",
                "blocks.1.mlp1.fc2.bias", "blocks.1.norm21.bias", "patch_embed.proj.0.weight",
                "patch_embed.proj.7.running_var", "cls_token", "norm.weight", "head.bias"]:
        assert key in sd, key
    assert sd["pos_embed"].shape == (1, 4, 64)     # deit: no class-token row


def test_timm_key_names():
    sd = ttf.export_state_dict(make_model("tiny_2x2"), layout="timm")
    for key in ["blocks.0.attns.1.norm.weight", "blocks.0.attns.1.attn.qkv.bias", "blocks.0.attns.0.ls.gamma",
                "blocks.1.ffns.1.mlp.fc1.weight", "blocks.1.ffns.0.ls.gamma"]:
        assert key in sd, key
    assert sd["pos_embed"].shape == (1, 5, 64)


def test_saved_checkpoint_loads_with_weights_only_and_wrapper():
    model = make_model("tiny_2x2")
    buf = io.BytesIO()
    torch.save({"model": ttf.export_state_dict(model, "deit"), "epoch": 3}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    other = ttf.create_model("tiny_2x2").double().eval()
    ttf.load_state_dict(other, ckpt)
    _same(ttf.export_state_dict(other, "deit"), ckpt["model"])
    x = images_for(model)
    torch.testing.assert_close(other(x), model(x), rtol=1e-13, atol=1e-13)


def test_layout_that_fits_neither_lists_keys():
    sd = {"foo.weight": torch.zeros(3), "bar": torch.zeros(2)}
    with pytest.raises(ttf.CheckpointError, match="cannot tell the checkpoint layout"):
        ttf.load_state_dict(ttf.create_model("tiny_2x2"), sd)


def test_missing_and_unexpected_keys_are_listed():
    sd = ttf.export_state_dict(make_model("tiny_2x2"), "timm")
    del sd["blocks.1.ffns.0.mlp.fc1.bias"]
    sd["blocks.1.extra.weight"] = torch.zeros(1)
    with pytest.raises(ttf.CheckpointError) as info:
        ttf.load_state_dict(ttf.create_model("tiny_2x2"), sd)
    assert "blocks.1.ffns.0.mlp.fc1.bias" in str(info.value) and "blocks.1.extra.weight" in str(info.value)
    assert "missing keys (1)" in str(info.value) and "unexpected keys (1)" in str(info.value)


def test_wrong_k_and_wrong_resolution_are_clear_errors():
    sd = ttf.export_state_dict(make_model("tiny_2x2"), "deit")
    with pytest.raises(ttf.CheckpointError, match="unexpected keys"):
        ttf.load_state_dict(ttf.create_model("tiny_2x1"), sd)
    with pytest.raises(ttf.CheckpointError, match="set_img_size"):
        ttf.load_state_dict(ttf.create_model("tiny_2x2", img_size=48), sd)


def test_failed_load_leaves_model_untouched():
    target = ttf.create_model("tiny_2x2")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    sd = ttf.export_state_dict(make_model("tiny_2x2", dtype=torch.float32), "timm")
    sd.pop("head.weight")
    with pytest.raises(ttf.CheckpointError):
        ttf.load_state_dict(target, sd)
    _same(target.state_dict(), before)


@pytest.mark.parametrize("name, kw", [("tiny_2x2", {}), ("tiny_1x3", {"stem": "hmlp_bn", "init_values": None}),
                                      ("tiny_2x1", {"stem": "hmlp_ln", "num_classes": 5})])
def test_infer_config_from_state_dict(name, kw):
    model = ttf.create_model(name, **kw)
    for layout in ("timm", "deit"):
        cfg = ttf.infer_config(ttf.export_state_dict(model, layout), num_heads=model.config.num_heads)
        assert cfg == model.config, layout


@pytest.mark.gpu  # timm needs torchvision, which has no CPU build here; the GPU image has both
def test_timm_model_loads_our_export_and_matches():
    timm = pytest.importorskip("timm")
    ours = make_model("tiny_2x2", dtype=torch.float32, num_classes=10)
    tm = timm.create_model("vit_small_patch16_18x2_224", pretrained=False, depth=2, img_size=32, embed_dim=64,
                           num_heads=2, num_classes=10).eval()
    tm.load_state_dict(ttf.export_state_dict(ours, "timm"), strict=True)
    x = images_for(ours, 2, dtype=torch.float32)
    torch.testing.assert_close(tm(x), ours(x), rtol=1e-5, atol=1e-5)
    back = ttf.create_model("tiny_2x2")
    assert ttf.load_state_dict(back, tm.state_dict()) == "timm"
