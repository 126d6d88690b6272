import pytest
import torch

import threethings_fast as ttf
from threethings_fast.configs import resolve_name
from threethings_fast.macs import count_macs


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, millions", [
    ("S18x2", 64.7), ("S36x1", 64.7), ("B12x1", 86.6), ("vit_base_patch16_18x2_224", 256.7),
    ("deit_base_patch16_36x1_LS", 256.7),
])
def test_param_counts_match_paper(name, millions):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = ttf.create_model(name)
    assert round(n_params(model) / 1e6, 1) == millions


def test_parallel_and_sequential_have_same_params_and_macs():
    s18x2, s36x1 = ttf.from_name("S18x2"), ttf.from_name("S36x1")
    assert count_macs(s18x2).total == count_macs(s36x1).total
    assert round(count_macs(s18x2).gmacs, 1) == 13.7


def test_macs_vit_b_linear_vs_hmlp():
    cfg = ttf.from_name("B12x1")
    linear = count_macs(cfg).gmacs
    hmlp = count_macs(cfg.replace(stem="hmlp_bn")).gmacs
    assert round(linear, 2) == 17.58
    assert round(hmlp, 2) == 17.73
    assert round(100 * (hmlp / linear - 1), 1) == 0.8


@pytest.mark.parametrize("stem", ["linear", "hmlp_bn"])
@pytest.mark.parametrize("k", [1, 2])
def test_matmul_macs_agree_with_torch_flop_counter(stem, k):
    from torch.utils.flop_counter import FlopCounterMode
    model = ttf.create_model("tiny_2x1", num_parallel=k, stem=stem, img_size=48).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, 48, 48))
    # torch counts the head on the class token too; it counts no norms
    assert counter.get_total_flops() == 2 * count_macs(model.config, count_norms=False).total


def test_names_resolve_consistently():
    a = resolve_name("vit_small_patch16_18x2_224")
    assert a == resolve_name("S18x2") == resolve_name("deit_small_patch16_18x2_LS")
    assert resolve_name("deit_small_patch16_18x2").init_values is None
    assert resolve_name("deit_small_patch16_36_LS") == resolve_name("S36x1")
    assert a.num_parallel == 2 and a.depth == 18 and a.embed_dim == 384 and a.num_heads == 6
    assert "vit_base_patch16_18x2_224" in ttf.list_models()


def test_create_model_overrides():
    m = ttf.create_model("S18x2", depth=1, img_size=64, num_parallel=3, stem="hmlp_ln", num_classes=7,
                         init_values=None)
    c = m.config
    assert (c.depth, c.img_size, c.num_parallel, c.stem, c.num_classes, c.init_values) == (1, 64, 3, "hmlp_ln", 7,
                                                                                          None)
    assert len(m.blocks[0].attns) == 3 and m.pos_embed.shape == (1, 17, 384)


@pytest.mark.parametrize("bad, err", [
    (dict(stem="conv"), ValueError), (dict(img_size=100), ValueError), (dict(embed_dim=100, num_heads=6), ValueError),
    (dict(num_parallel=0), ValueError), (dict(depthh=3), TypeError), (dict(stem="hmlp_bn", patch_size=8), ValueError),
])
def test_bad_configs(bad, err):
    with pytest.raises(err):
        ttf.create_model("tiny_2x2", **bad)


def test_unknown_name():
    with pytest.raises(KeyError, match="unknown model name"):
        ttf.create_model("vit_gigantic")
