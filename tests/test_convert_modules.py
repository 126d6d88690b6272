"""`convert(module)` for the official deit models_v2 ViT (a layout-faithful rebuild: deit is no pip package) and for
our own reference; refusals of what the fused path cannot reproduce. Real timm modules: tests/test_timm_interop.py."""
from functools import partial

import pytest
import torch
from torch import nn

import threethings_fast as ttf
import deit_models_v2 as deit
from helpers import randomize, rel_err
from threethings_fast.interop import read_module


def deit_model(block=deit.Layer_scale_init_Block_paralx2, stem=deit.PatchEmbed, dtype=torch.float64, **kw):
    args = dict(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=2, num_classes=10, qkv_bias=True,
                norm_layer=partial(nn.LayerNorm, eps=1e-6), block_layers=block, Patch_layer=stem)
    args.update(kw)
    model = deit.vit_models(**args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("blocks") and "gamma" in name:
                p.copy_(torch.rand_like(p) * 0.5 + 0.05)
        nn.init.normal_(model.pos_embed, std=0.5)
        nn.init.normal_(model.cls_token, std=0.5)
    randomize(model)
    return model.to(dtype).eval()


def images(batch=3, dtype=torch.float64, size=32):
    return torch.randn(batch, 3, size, size, dtype=dtype)


@pytest.mark.parametrize("block", [deit.Block, deit.Layer_scale_init_Block, deit.Block_paralx2,
                                   deit.Layer_scale_init_Block_paralx2], ids=lambda b: b.__name__)
def test_deit_module_converts_exactly(block):
    model = deit_model(block)
    x = images()
    fused = ttf.convert(model, backend="torch")
    assert fused.dtype == torch.float64
    assert fused.config.num_parallel == (2 if "paralx2" in block.__name__ else 1)
    assert (fused.config.init_values is not None) == ("Layer_scale" in block.__name__)
    assert rel_err(fused(x), model(x)) <= 1e-10


@pytest.mark.parametrize("norm_layer, stem", [(nn.SyncBatchNorm, "hmlp_bn"), (nn.BatchNorm2d, "hmlp_bn")])
def test_deit_hmlp_stem_module_converts_exactly(norm_layer, stem):
    model = deit_model(stem=partial(deit.hMLP_stem, norm_layer=norm_layer), img_size=48)
    x = images(size=48)
    fused = ttf.convert(model, backend="torch")
    assert fused.config.stem == stem
    assert rel_err(fused(x), model(x)) <= 1e-10


def test_deit_module_keeps_its_dtype_unless_told():
    model = deit_model(dtype=torch.float32)
    assert ttf.convert(model, backend="torch").dtype == torch.float32
    assert ttf.convert(model, backend="torch", dtype=torch.float64).dtype == torch.float64


def test_deit_huge_style_heads_are_read_from_the_module():
    model = deit_model(deit.Layer_scale_init_Block, embed_dim=160, num_heads=2, patch_size=14, img_size=28)
    config, _, layout = read_module(model)
    assert (config.num_heads, config.head_dim, config.patch_size, layout) == (2, 80, 14, "deit")
    x = images(size=28)
    assert rel_err(ttf.convert(model, backend="torch")(x), model(x)) <= 1e-10


def test_custom_attention_scale_is_refused():
    with pytest.raises(ValueError, match="custom attention scale"):
        ttf.convert(deit_model(qk_scale=0.3))


def test_dropout_active_in_train_mode_is_refused_and_eval_converts():
    model = deit_model(drop_rate=0.1).train()
    with pytest.raises(ValueError, match=r"head dropout 0.1 is active in train mode \(call .eval\(\)\)"):
        ttf.convert(model)
    model.blocks[0].attn.attn_drop.p = 0.2
    with pytest.raises(ValueError, match=r"Dropout\(p=0.2\) at blocks.0.attn.attn_drop"):
        ttf.convert(model)
    ttf.convert(model.eval(), backend="torch")


def test_tanh_gelu_and_other_blocks_are_named():
    model = deit_model()
    model.blocks[1].mlp1.act = nn.GELU(approximate="tanh")
    with pytest.raises(ValueError, match="approximate='tanh' in blocks.1.mlp1"):
        ttf.convert(model)
    model = deit_model()
    model.blocks[0] = nn.TransformerEncoderLayer(64, 2)
    with pytest.raises(ValueError, match="blocks.0 is a torch.nn.modules.transformer.TransformerEncoderLayer"):
        ttf.convert(model)


def test_mixed_layernorm_eps_is_refused():
    model = deit_model()
    model.norm.eps = 1e-5
    with pytest.raises(ValueError, match="different eps"):
        ttf.convert(model)


def test_our_reference_model_still_converts_and_foreign_modules_are_refused():
    with pytest.raises(TypeError, match="got torch.nn.modules.container.Sequential"):
        ttf.convert(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="a module carries its own architecture"):
        ttf.convert(deit_model(), config="tiny_2x2")
