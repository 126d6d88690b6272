"""Real timm models (random init, no download) through `convert`, on the CPU: float64 exact, float32 within 2× timm's
own float32 error, the state-dict path, export back into timm, and the refusals.

timm needs torchvision, which the CPU torch wheel lacks: these tests run in the venv of `make test-timm` (the CUDA
build of torch, executed on the CPU). Elsewhere they skip, unless TTF_REQUIRE_TIMM=1 makes a missing timm an error.
Models keep their real width, heads, patch size, tokens, pooling and norms; depth is cut to 2 blocks to keep the
float64 CPU forwards short (the blocks are all alike).
"""
import os

import pytest
import torch

import threethings_fast as ttf
from helpers import ATOL, rel_err
from threethings_fast.interop import read_module

if os.environ.get("TTF_REQUIRE_TIMM") == "1":
    import timm  # noqa: F401  (an ImportError here fails the run: the interop target must not skip)
else:
    timm = pytest.importorskip("timm")

# name -> create_model overrides beyond depth=2 (img_size cut where the native one makes float64 CPU runs long)
MODELS = {
    "vit_small_patch16_18x2_224": {},
    "vit_base_patch16_18x2_224": {},
    "vit_small_patch16_36x1_224": {},
    "vit_small_patch16_224": {},
    "vit_base_patch16_224": {},
    "vit_large_patch16_224": {},
    "vit_base_patch32_224": {},
    "deit_tiny_patch16_224": {},
    "deit3_small_patch16_224": {},                 # no_embed_class + LayerScale
    "vit_medium_patch16_gap_256": {},              # no class token, average pooling, norm before the pool
    "deit_small_distilled_patch16_224": {},        # distillation token + head_dist
    "vit_base_patch16_clip_224": {},               # norm_pre, conv without bias, eps 1e-5
    "vit_base_patch16_reg4_gap_256": {},           # register tokens, fc_norm after average pooling
    "vit_base_patch14_reg4_dinov2": {"img_size": 224},   # registers + class token, patch 14, LayerScale
    "vit_huge_patch14_224": {},                    # 16 heads of 80
}


@torch.no_grad()
def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Move every LayerScale, norm gain, bias, token and position far from its init, so each branch matters."""
    g = torch.Generator().manual_seed(0)

    def rand_like(p):
        return torch.randn(p.shape, generator=g, dtype=p.dtype)

    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            p.copy_(0.05 + 0.5 * torch.rand(p.shape, generator=g, dtype=p.dtype))
        elif p.dim() == 1 and "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.5 * rand_like(p))
        elif p.dim() == 1:
            p.copy_(0.1 * rand_like(p))
        elif name in ("cls_token", "reg_token", "dist_token", "pos_embed"):
            p.copy_(0.5 * rand_like(p))
    return model


def timm_model(name: str, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, depth=2, **MODELS[name])
    return perturb(model).to(dtype).eval()


def images_for(model: torch.nn.Module, batch=2, dtype=torch.float64) -> torch.Tensor:
    size = model.patch_embed.img_size
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.mark.parametrize("name", list(MODELS))
def test_timm_module_converts_exactly_in_float64(name):
    model = timm_model(name)
    x = images_for(model)
    fused = ttf.convert(model, backend="torch")
    assert fused.dtype == torch.float64
    assert rel_err(fused(x), model(x)) <= 1e-10


@pytest.mark.parametrize("name", list(MODELS))
def test_timm_module_float32_within_twice_timm_error(name):
    model64 = timm_model(name)
    model32 = timm_model(name, torch.float32)
    x = images_for(model64)
    fused = ttf.convert(model32, backend="torch")
    assert fused.dtype == torch.float32          # the module's dtype is kept
    ref64, ref32, out = model64(x), model32(x.float()).double(), fused(x.float()).double()
    err, ref_err = (out - ref64).abs().max().item(), (ref32 - ref64).abs().max().item()
    assert err <= 2 * ref_err + ATOL[torch.float32], (err, ref_err)


@pytest.mark.parametrize("name", list(MODELS))
def test_state_dict_path_and_export_back_into_timm(name):
    model = timm_model(name)
    config = read_module(model)[0]
    sd = model.state_dict()
    x = images_for(model)
    inferred = ttf.infer_config(sd, num_heads=config.num_heads)
    if name == "vit_base_patch16_clip_224":     # a state dict cannot say its LayerNorm eps (CLIP: 1e-5)
        assert inferred == config.replace(norm_eps=1e-6)
        fused = ttf.convert(sd, backend="torch", config=ttf.infer_config(sd, num_heads=12, norm_eps=1e-5))
    else:                                       # everything else is read from keys and shapes
        assert inferred == config
        fused = ttf.convert(sd, backend="torch", num_heads=config.num_heads)
    assert rel_err(fused(x), model(x)) <= 1e-10
    ours = ttf.create_model(config).double()
    ttf.load_state_dict(ours, sd)
    back = timm.create_model(name, pretrained=False, depth=2, **MODELS[name]).double().eval()
    back.load_state_dict(ttf.export_state_dict(ours, "timm"), strict=True)
    assert torch.equal(back(x), model(x))


def test_vit_huge_state_dict_needs_its_heads():
    sd = timm_model("vit_huge_patch14_224").state_dict()
    with pytest.raises(ttf.CheckpointError, match="16 heads of 80"):
        ttf.convert(sd, backend="torch")


def test_our_export_loads_into_timm_parallel_model():
    ours = ttf.create_model("S18x2", depth=2).double().eval()
    tm = timm.create_model("vit_small_patch16_18x2_224", pretrained=False, depth=2).double().eval()
    tm.load_state_dict(ttf.export_state_dict(ours, "timm"), strict=True)
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    assert torch.equal(tm(x), ours(x))


@pytest.mark.parametrize("name, kwargs, match", [
    ("vit_small_patch16_224", {"qk_norm": True}, "qk-norm"),
    ("vit_base_patch16_siglip_224", {}, "attention pooling"),
    ("vit_base_patch16_clip_quickgelu_224", {}, "QuickGELU"),
    ("vit_small_patch16_224", {"global_pool": "max"}, "global_pool='max'"),
])
def test_what_cannot_be_fused_is_named(name, kwargs, match):
    model = timm.create_model(name, pretrained=False, depth=2, **kwargs).eval()
    with pytest.raises(ValueError, match=match):
        ttf.convert(model)


def test_swiglu_mlp_is_named():
    from timm.layers import SwiGLUPacked
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=2, mlp_layer=SwiGLUPacked,
                              mlp_ratio=2.0).eval()
    with pytest.raises(ValueError, match="SwiGLU"):
        ttf.convert(model)


def test_dropout_in_train_mode_is_named_and_eval_converts():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=2, drop_rate=0.1,
                              drop_path_rate=0.1).train()
    with pytest.raises(ValueError, match="active in train mode"):
        ttf.convert(model)
    ttf.convert(model.eval(), backend="torch")


def test_other_timm_architectures_are_type_errors():
    with pytest.raises(TypeError, match="timm.models.eva.Eva"):
        ttf.convert(timm.create_model("vit_base_patch16_rope_reg1_gap_256", pretrained=False, depth=1))
