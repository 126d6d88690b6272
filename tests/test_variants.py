"""The ViT variants people deploy (timm's token / pooling / norm options, patch sizes, head_dim 80): reference model,
checkpoint layouts, config inference and every fused backend, on the CPU. Real timm: tests/test_timm_interop.py."""
import pytest
import torch

import threethings_fast as ttf
from helpers import assert_within_bound, images_for, kernels_interpreted, make_model, rel_err

# name -> ViTConfig overrides of tiny_2x2 (32x32 images, 16x16 patches, D = 64, 2 heads)
VARIANTS = {
    "avg_fc_norm": dict(global_pool="avg"),                                  # vit_medium_patch16_gap style
    "avg_norm_before_pool": dict(global_pool="avg", fc_norm=False),
    "no_class_token": dict(class_token=False, global_pool="avg"),
    "registers": dict(reg_tokens=3),                                         # vit_*_reg4_* style
    "registers_no_embed_class": dict(reg_tokens=2, no_embed_class=True, global_pool="avg"),
    "no_embed_class": dict(no_embed_class=True),                             # deit3_*
    "distilled": dict(distilled=True),                                       # deit_*_distilled_*
    "distilled_features": dict(distilled=True, num_classes=0),
    "pre_norm_clip": dict(pre_norm=True, patch_bias=False, norm_eps=1e-5),   # vit_*_clip_*
    "token_fc_norm": dict(fc_norm=True),
    "no_final_norm": dict(final_norm=False),
    "patch8": dict(patch_size=8),                                            # 16 patches
    "patch14": dict(img_size=42, patch_size=14),                             # 9 patches, 588 inputs per patch
    "patch32": dict(img_size=64, patch_size=32),
    "head_dim80": dict(embed_dim=160, num_heads=2),                          # ViT-H/14's head size
    "hmlp_registers_avg": dict(stem="hmlp_bn", reg_tokens=2, global_pool="avg"),
    "hmlp_ln_no_class_token": dict(stem="hmlp_ln", class_token=False, global_pool="avg"),
}
IDS = list(VARIANTS)


def variant(name, dtype=torch.float64, k=2):
    model = make_model("tiny_2x2", dtype=dtype, num_parallel=k, **VARIANTS[name])
    with torch.no_grad():   # prefix tokens far from their 0.02 init, so a misplaced row shows
        for token in model.prefix_parameters():
            token.mul_(50)
    return model


@pytest.mark.parametrize("name", IDS)
def test_fused_torch_float64_matches_reference(name):
    model = variant(name)
    x = images_for(model, 3)
    fused = ttf.convert(model, backend="torch")
    assert rel_err(fused(x), model(x)) <= 1e-10


@pytest.mark.parametrize("name", ["registers", "distilled", "avg_norm_before_pool", "pre_norm_clip", "patch14"])
def test_fused_torch_float32_within_reference_error(name):
    model64 = variant(name)
    model32 = variant(name, dtype=torch.float32)
    model32.load_state_dict(model64.state_dict())
    x = images_for(model64, 2)
    assert_within_bound(ttf.convert(model32, backend="torch")(x.float()), model32(x.float()), model64(x),
                        torch.float32)


@pytest.mark.interpreter
@pytest.mark.parametrize("norm", ["separate", "fused"])
@pytest.mark.parametrize("name", ["registers", "distilled", "avg_norm_before_pool", "no_class_token",
                                  "pre_norm_clip", "patch14", "head_dim80", "hmlp_registers_avg"])
def test_fused_triton_interpreter_within_reference_error(name, norm):
    tk = pytest.importorskip("threethings_fast.triton_kernels")
    if not torch.cuda.is_available() and not kernels_interpreted(tk.linear.__globals__["_linear_kernel"]):
        pytest.skip("Triton kernels not under the interpreter")
    model64 = variant(name, k=1)
    model32 = variant(name, dtype=torch.float32, k=1)
    model32.load_state_dict(model64.state_dict())
    x = images_for(model64, 2)
    fused = ttf.convert(model32, backend="triton", norm=norm)
    assert_within_bound(fused(x.float()), model32(x.float()), model64(x), torch.float32)


@pytest.mark.parametrize("name", IDS)
def test_timm_layout_round_trip_and_config_inference(name):
    model = variant(name)
    sd = ttf.export_state_dict(model, "timm")
    assert ttf.detect_layout(sd) == "timm"
    other = ttf.create_model(model.config).double()
    ttf.load_state_dict(other, sd)
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    # a state dict holds neither the heads, nor the pooling of a class-token model, nor the LayerNorm eps
    hints = {k: v for k, v in VARIANTS[name].items() if k in ("global_pool", "fc_norm", "norm_eps")}
    if "fc_norm" in hints:   # fc_norm keys read as average pooling (timm's default pairing) unless told
        hints["global_pool"] = model.config.global_pool
    if name == "registers_no_embed_class":   # 4 rows: 2x2 patches, or 1 patch + 3 prefix rows
        with pytest.raises(ttf.CheckpointError, match="no_embed_class="):
            ttf.infer_config(sd, num_heads=model.config.num_heads, **hints)
        hints["no_embed_class"] = True
    assert ttf.infer_config(sd, num_heads=model.config.num_heads, **hints) == model.config


@pytest.mark.parametrize("name, feature", [
    ("no_class_token", "no class token"), ("registers", "register tokens"), ("distilled", "a distillation token"),
    ("pre_norm_clip", "norm_pre"), ("avg_fc_norm", "average pooling"), ("no_final_norm", "no final norm"),
])
def test_deit_layout_refuses_what_it_cannot_hold(name, feature):
    with pytest.raises(ttf.CheckpointError, match=feature):
        ttf.export_state_dict(variant(name), "deit")


def test_no_embed_class_model_uses_the_deit_position_layout_unchanged():
    model = variant("no_embed_class")
    sd = ttf.export_state_dict(model, "deit")
    assert sd["pos_embed"].shape == (1, 4, 64) and torch.equal(sd["cls_token"], model.cls_token.detach())
    back = ttf.create_model(model.config).double()
    assert ttf.load_state_dict(back, sd) == "deit"
    x = images_for(model)
    assert torch.equal(back.eval()(x), model(x))


def test_pos_embed_without_prefix_rows_names_no_embed_class():
    sd = ttf.export_state_dict(variant("no_embed_class"), "timm")
    with pytest.raises(ttf.CheckpointError, match="no_embed_class=True"):
        ttf.load_state_dict(ttf.create_model("tiny_2x2"), sd)


def test_state_dict_without_heads_is_refused_with_the_candidates():
    sd = ttf.export_state_dict(make_model("tiny_2x2", embed_dim=160, num_heads=2), "timm")
    with pytest.raises(ttf.CheckpointError, match="num_heads") as info:
        ttf.convert(sd, backend="torch")
    assert "2 heads of 80" in str(info.value) and "5 heads of 32" in str(info.value)
    with pytest.raises(ttf.CheckpointError, match="num_heads"):
        ttf.infer_config(sd)


def test_vit_huge_width_with_wrong_heads_would_differ_so_heads_are_required():
    """ViT-H/14 is 16 heads of 80; the old head_dim-64 guess (20 heads) changes the outputs. Same here at width
    320: 4 heads of 80 against the 5 heads of 64 a guess would take."""
    model = make_model("tiny_2x1", embed_dim=320, num_heads=4, img_size=28, patch_size=14)
    sd = ttf.export_state_dict(model, "timm")
    x = images_for(model)
    right = ttf.convert(sd, backend="torch", num_heads=4)
    wrong = ttf.convert(sd, backend="torch", num_heads=320 // 64)
    assert rel_err(right(x), model(x)) <= 1e-10
    assert rel_err(wrong(x), model(x)) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_dict_dtype_is_the_default(dtype):
    model = make_model("tiny_2x2", dtype=dtype)
    fused = ttf.convert(ttf.export_state_dict(model, "timm"), backend="torch", num_heads=2)
    assert fused.dtype == dtype
    x = images_for(model, dtype=dtype)
    assert rel_err(fused(x), model(x)) <= (1e-10 if dtype == torch.float64 else 1e-5)


def test_state_dict_mixed_dtypes_load_exactly():
    model = make_model("tiny_2x2", stem="hmlp_bn")
    sd = {k: (v.half() if "blocks.0" in k else v.float()) for k, v in ttf.export_state_dict(model, "timm").items()}
    fused = ttf.convert(sd, backend="torch", num_heads=2, dtype=torch.float64)
    held = {k: v.double() for k, v in sd.items()}
    exact = ttf.create_model(model.config).double()
    ttf.load_state_dict(exact, held)
    x = images_for(model)
    assert rel_err(fused(x), exact.eval()(x)) <= 1e-10


def test_config_arguments_are_for_state_dicts_only():
    with pytest.raises(TypeError, match="a module carries its own architecture"):
        ttf.convert(make_model("tiny_2x2"), num_heads=2)
    sd = ttf.export_state_dict(make_model("tiny_2x2"), "timm")
    with pytest.raises(ValueError, match="contradicts"):
        ttf.convert(sd, config="tiny_2x2", num_heads=4)


@pytest.mark.parametrize("bad, match", [
    (dict(global_pool="map"), "global_pool must be one of"),
    (dict(class_token=False), "needs the class token"),
    (dict(distilled=True, reg_tokens=1), "distilled models"),
    (dict(reg_tokens=-1), "reg_tokens"),
    (dict(stem="hmlp_bn", patch_bias=False), "linear stem"),
])
def test_bad_variant_configs_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        ttf.from_name("tiny_2x2", **bad)


def test_resize_keeps_every_prefix_position():
    model = variant("registers")
    before = model.pos_embed.detach()[:, :4].clone()
    model.set_img_size(48)
    assert model.pos_embed.shape == (1, 4 + 9, 64)
    assert torch.equal(model.pos_embed.detach()[:, :4], before)
    x = images_for(model)
    assert rel_err(ttf.convert(model, backend="torch")(x), model(x)) <= 1e-10
