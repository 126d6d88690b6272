"""Reference models of Vision Permutator and the feed-forward-only ViT: paper numbers, the official layouts (checked
against layout-faithful rebuilds of the official code in vip_official.py / ffonly_official.py), MAC counts, the
resolution generalisation of ViP, and clear errors."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from helpers import randomize, rel_err
import ffonly_official
import vip_official
from threethings_fast.models import ffonly, vip
from threethings_fast.models.ffonly import FFOnly
from threethings_fast.models.vip import PermuteMLP, ViPConfig, VisionPermutator


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def images(cfg, batch=2, dtype=torch.float64, size=None):
    size = size or cfg.img_size
    return torch.randn(batch, cfg.in_chans, size, size, dtype=dtype)


def shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------
# Paper numbers
# ---------------------------------------------------------------------------------------------------------------
# ViP: the official README's table "Comparison with Recent MLP-like Models" (github.com/Andrew-Qibin/VisionPermutator):
#   ViP-Small/7 25M, ViP-Medium/7 55M, ViP-Large/7 88M parameters at 224 (same as the paper's comparison table).
# FF-only: Table 1 of Melas-Kyriazi 2021 (Do-You-Even-Need-Attention.pdf in the official repository, also its
#   README): FFOnly Tiny (P=16) 7.7M / 61.4%, Base (P=16) 62M / 74.9%, Large (P=32) 206M / 71.4%.
@pytest.mark.parametrize("family, name, millions, digits", [
    (vip, "vip_s7", 25, 0), (vip, "vip_m7", 55, 0), (vip, "vip_l7", 88, 0),
    (ffonly, "ffonly_tiny", 7.7, 1), (ffonly, "ffonly_base", 62, 0), (ffonly, "ffonly_large", 206, 0),
])
def test_param_counts_match_papers(family, name, millions, digits):
    with torch.device("meta"):  # shapes only
        model = family.create_reference(name)
    assert round(n_params(model) / 1e6, digits) == millions


# ViP FLOPs as the paper prints them (fvcore-style MACs, "FLOPs" in the paper's table): ViP-S/7 6.9G, ViP-M/7 16.3G.
@pytest.mark.parametrize("name, gmacs", [("vip_s7", 6.9), ("vip_m7", 16.3)])
def test_vip_macs_match_paper(name, gmacs):
    assert round(vip.count_macs(vip.resolve_name(name)).gmacs, 1) == gmacs


@pytest.mark.parametrize("family, name", [(vip, n) for n in vip.TINY_TABLE] + [(ffonly, n) for n in ffonly.TINY_TABLE]
                         + [(ffonly, "ffonly_test_b_bn")])
def test_matmul_macs_agree_with_torch_flop_counter(family, name):
    cfg = (ffonly.from_name("ffonly_test_b", stem="hmlp_bn") if name == "ffonly_test_b_bn"
           else family.resolve_name(name))
    model = family.create_reference(cfg).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images(cfg, batch=1, dtype=torch.float32))
    assert counter.get_total_flops() == family.forward_flops(cfg)
    assert family.count_macs(cfg).total > family.count_macs(cfg, count_norms=False).total  # norms add on top


# ---------------------------------------------------------------------------------------------------------------
# Official layouts: names and shapes at 224, numerics on small models
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(vip.MODEL_TABLE))
def test_vip_official_layout_at_224(name):
    with torch.device("meta"):
        ours, official = vip.create_reference(name), vip_official.official_model(name)
    assert shapes(ours) == shapes(official)
    assert all(layer.attn.mlp_h.weight.shape == layer.attn.mlp_c.weight.shape  # Linear(C, C) at 224
               for stage in ours.network if isinstance(stage, torch.nn.Sequential) for layer in stage)


@pytest.mark.parametrize("name, official", [("ffonly_tiny", "linear_tiny"), ("ffonly_base", "linear_base"),
                                            ("ffonly_large", "linear_large")])
def test_ffonly_official_layout_at_224(name, official):
    with torch.device("meta"):
        ours, theirs = ffonly.create_reference(name), ffonly_official.official_model(official)
    assert shapes(ours) == shapes(theirs)
    assert ffonly.resolve_name(official) == ffonly.resolve_name(name)


def _check_official_roundtrip(family, cfg, official, batch=3):
    official = randomize(official).double().eval()
    with torch.device("meta"):  # every tensor is loaded below: skip the random init
        ours = family.create_reference(cfg)
    ours = ours.to_empty(device="cpu").double().eval()
    family.load_official(ours, official.state_dict())
    x = images(cfg, batch=batch)
    with torch.no_grad():
        ref, out = official(x), ours(x)
    assert out.shape == (batch, cfg.num_classes)
    assert rel_err(out, ref) <= 1e-10
    exported = family.export_official(ours)
    theirs = official.state_dict()
    assert list(exported) == list(theirs)
    assert all(torch.equal(exported[k], theirs[k]) and exported[k].dtype == theirs[k].dtype for k in theirs)
    official.load_state_dict(exported, strict=True)


@pytest.mark.parametrize("cfg", [
    vip.resolve_name("vip_test_a"),
    vip.resolve_name("vip_test_a").replace(skip_lam=2.0, qkv_bias=True, num_classes=5),
    # m7-like: same width in stages 1-2 (no Downsample), the transition after stage 2
    ViPConfig(img_size=28, patch_size=7, num_classes=5, layers=(1, 1, 1), embed_dims=(24, 24, 40),
              transitions=(False, True, False), segment_dim=(4, 4, 2), mlp_ratios=(3, 3, 2)),
    # ViP-S/7's 224 geometry (32x32 grid with 32 segments, then 16x16 with 16) at a third of the width and one
    # block per stage, to stay fast on a 2-core CPU; the full widths are checked by name and shape at 224 above
    vip.resolve_name("vip_s7").replace(layers=(1, 1, 1, 1), embed_dims=(64, 128, 128, 128), num_classes=11),
], ids=["test_a", "test_a_bias_lam", "m7_like", "s7_geometry_224"])
def test_vip_matches_official_rebuild(cfg):
    _check_official_roundtrip(vip, cfg, vip_official.official_from_config(cfg), batch=1 if cfg.img_size == 224 else 3)


@pytest.mark.parametrize("cfg", [
    ffonly.resolve_name("ffonly_test_a"),
    ffonly.resolve_name("ffonly_test_c"),                                      # 4x4 position table resized to 7x7
    ffonly.resolve_name("ffonly_tiny").replace(depth=1, num_classes=11),       # FF-tiny widths at 224
], ids=["test_a", "test_c_pos_resize", "tiny_shallow_224"])
def test_ffonly_matches_official_rebuild(cfg):
    _check_official_roundtrip(ffonly, cfg, ffonly_official.official_from_config(cfg))


def test_ffonly_large_position_table_is_resized_like_official():
    # The official P=32 model keeps a 14x14 table for a 7x7 grid; shallow and narrow to stay fast.
    cfg = ffonly.resolve_name("ffonly_large").replace(depth=1, embed_dim=40, num_classes=3)
    assert cfg.grid_size == 7 and cfg.pos_grid_size == 14
    _check_official_roundtrip(ffonly, cfg, ffonly_official.official_from_config(cfg))


# ---------------------------------------------------------------------------------------------------------------
# ViP at any resolution
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("img_size, grids", [(112, (16, 8, 8, 8)), (28, (4, 2, 2, 2))])
def test_vip_s7_at_other_resolutions(img_size, grids):
    cfg = vip.from_name("vip_s7", img_size=img_size)
    assert cfg.grid_sizes == grids
    with torch.device("meta"):
        full = vip.create_reference(cfg)
        at224 = vip.create_reference("vip_s7")
    s = (192 // 32, 384 // 16)                       # segment widths S of stage 1 and 2..4
    assert full.network[0][0].attn.mlp_h.weight.shape == (grids[0] * s[0],) * 2
    assert full.network[2][0].attn.mlp_w.weight.shape == (grids[1] * s[1],) * 2
    assert at224.network[0][0].attn.mlp_h.weight.shape == (192, 192)
    # the rest of the layout does not depend on the resolution
    ours, official = shapes(full), shapes(at224)
    assert ours.keys() == official.keys()
    diff = {k for k in ours if ours[k] != official[k]}
    assert diff and all(".attn.mlp_h." in k or ".attn.mlp_w." in k for k in diff)
    shallow = cfg.replace(layers=(1, 1, 1, 1))   # shallow: run it, and count its matmuls
    with torch.device("meta"):
        model = vip.create_reference(shallow)
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():                        # a quick init: trunc_normal_ of 5M weights costs seconds here
        for p in model.parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0 if p.shape == model.norm.weight.shape else 0.0)
        counter = FlopCounterMode(display=False)
        with counter:
            out = model(images(shallow, batch=1, dtype=torch.float32))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert counter.get_total_flops() == vip.forward_flops(vip.resolve_name("vip_s7").replace(layers=(1, 1, 1, 1)),
                                                          img_size=img_size)


@pytest.mark.parametrize("grid, g", [((5, 5), 8), ((3, 5), 4), ((4, 4), 4)])
def test_permute_mlp_is_the_segment_projection_formula(grid, g):
    """h_out[b,h,w,k,s] = sum_{h',s'} Wh[(h,s),(h',s')] x[b,h',w,k,s'] + bh[(h,s)] (and likewise along w), whatever
    the grid: the generalisation of the official Linear(C, C) projections, checked against an einsum."""
    torch.manual_seed(0)
    H, W = grid
    C, B = 24, 2
    S = C // g
    layer = randomize(PermuteMLP(C, g, grid, qkv_bias=True)).double()
    x = torch.randn(B, H, W, C, dtype=torch.float64)
    xs = x.reshape(B, H, W, g, S)
    wh = layer.mlp_h.weight.reshape(H, S, H, S)
    ww = layer.mlp_w.weight.reshape(W, S, W, S)
    h = torch.einsum("hsit,biwkt->bhwks", wh, xs) + layer.mlp_h.bias.reshape(H, 1, 1, S)
    w = torch.einsum("wsjt,bhjkt->bhwks", ww, xs) + layer.mlp_w.bias.reshape(1, W, 1, S)
    h, w = h.reshape(B, H, W, C), w.reshape(B, H, W, C)
    c = x @ layer.mlp_c.weight.T + layer.mlp_c.bias
    a = layer.reweight((h + w + c).mean(dim=(1, 2))).reshape(B, C, 3).softmax(-1)
    expected = layer.proj(h * a[:, None, None, :, 0] + w * a[:, None, None, :, 1] + c * a[:, None, None, :, 2])
    with torch.no_grad():
        assert rel_err(layer(x), expected) <= 1e-12


def test_vip_num_classes_zero_gives_features():
    model = vip.create_reference(vip.from_name("vip_test_c", num_classes=0)).double().eval()
    x = images(model.config)
    feats = model(x)
    assert feats.shape == (2, 40) and torch.equal(feats, model.forward_features(x))


def test_ffonly_features_and_hmlp_stems():
    for stem in ("hmlp_bn", "hmlp_ln"):
        cfg = ffonly.from_name("ffonly_test_b", stem=stem)
        model = randomize(ffonly.create_reference(cfg)).double().eval()
        x = images(cfg)
        assert model.forward_features(x).shape == (2, 24)
        assert model(x).shape == (2, 7)
        assert model.patch_embed.proj[0].kernel_size == (4, 4)


# ---------------------------------------------------------------------------------------------------------------
# Names, configs and errors
# ---------------------------------------------------------------------------------------------------------------
def test_names():
    assert vip.resolve_name("ViP-S/7") == vip.resolve_name("ViP-Small/7") == vip.resolve_name("vip_s7")
    assert vip.resolve_name("ViP-M/7").layers == (4, 3, 14, 3)
    assert ffonly.resolve_name("linear_base") == ffonly.resolve_name("FF-base") == ffonly.resolve_name("ffonly_base")
    assert vip.from_name("vip_s7", img_size=112).img_size == 112
    assert isinstance(vip.create_reference("vip_test_a"), VisionPermutator)
    assert isinstance(ffonly.create_reference(ffonly.resolve_name("ffonly_test_a")), FFOnly)
    assert ViPConfig(layers=[1, 1], embed_dims=[24, 40], transitions=[True, False], segment_dim=[4, 2],
                     mlp_ratios=[3, 3], img_size=28).layers == (1, 1)   # lists stored as tuples
    with pytest.raises(KeyError, match="vip_s7"):
        vip.resolve_name("vip_xl7")
    with pytest.raises(KeyError, match="ffonly_tiny"):
        ffonly.resolve_name("ffonly_huge")
    with pytest.raises(TypeError, match="unknown"):
        vip.from_name("vip_s7", depth=3)
    with pytest.raises(TypeError, match="unknown"):
        ffonly.from_name("ffonly_tiny", num_heads=3)


@pytest.mark.parametrize("family, name, bad, field", [
    (vip, "vip_s7", dict(img_size=225), "img_size"),
    (vip, "vip_s7", dict(img_size=105), "odd"),       # 105 / 7 = 15: an odd grid before the stride-2 Downsample
    (vip, "vip_s7", dict(segment_dim=(32, 16, 16, 10)), "segment_dim"),
    (vip, "vip_s7", dict(layers=(4, 3, 8)), "layers"),
    (vip, "vip_s7", dict(transitions=(True, False, False, True)), "transitions"),
    (vip, "vip_s7", dict(layers=(4, 0, 8, 3)), "layers"),
    (vip, "vip_s7", dict(skip_lam=0.0), "skip_lam"),
    (vip, "vip_s7", dict(num_classes=-1), "num_classes"),
    (vip, "vip_test_a", dict(img_size=35), "odd"),
    (ffonly, "ffonly_tiny", dict(img_size=100), "img_size"),
    (ffonly, "ffonly_tiny", dict(stem="conv"), "stem"),
    (ffonly, "ffonly_tiny", dict(stem="hmlp_bn", patch_size=8), "patch_size"),
    (ffonly, "ffonly_tiny", dict(stem="hmlp_ln", embed_dim=190), "embed_dim"),
    (ffonly, "ffonly_tiny", dict(depth=0), "depth"),
    (ffonly, "ffonly_tiny", dict(pos_grid=0), "pos_grid"),
    (ffonly, "ffonly_tiny", dict(norm_eps=0.0), "norm_eps"),
])
def test_bad_configs(family, name, bad, field):
    with pytest.raises(ValueError, match=field):
        family.from_name(name, **bad)


@pytest.mark.parametrize("family, name", [(vip, "vip_test_b"), (ffonly, "ffonly_test_a")])
def test_bad_inputs(family, name):
    model = family.create_reference(name).double().eval()
    cfg = model.config
    with pytest.raises(TypeError, match="torch.Tensor"):
        model(images(cfg).numpy())
    with pytest.raises(ValueError, match="rank"):
        model(images(cfg)[0])
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 4, cfg.img_size, cfg.img_size, dtype=torch.float64))
    with pytest.raises(ValueError, match="built for"):
        model(images(cfg, size=cfg.img_size + cfg.patch_size))
    with pytest.raises(ValueError, match="divisible"):
        model(images(cfg, size=cfg.img_size + 1))
    with pytest.raises(ValueError, match="empty batch"):
        model(images(cfg, batch=0))
    with pytest.raises(TypeError, match="float64"):
        model(images(cfg, dtype=torch.float32))


@pytest.mark.parametrize("family, name", [(vip, "vip_test_c"), (ffonly, "ffonly_test_c")])
def test_load_official_errors(family, name):
    model = family.create_reference(name)
    good = family.export_official(model)
    missing = dict(good)
    gone = next(iter(missing))
    del missing[gone]
    with pytest.raises(ValueError, match=f"missing keys: {gone}"):
        family.load_official(model, missing)
    with pytest.raises(ValueError, match="unexpected keys: extra.weight"):
        family.load_official(model, {**good, "extra.weight": torch.zeros(1)})
    key = "head.weight"
    with pytest.raises(ValueError, match=r"mis-shaped keys: head.weight: checkpoint \(3, "):
        family.load_official(model, {**good, key: good[key][:3]})
    with pytest.raises(ValueError, match="mapping"):
        family.load_official(model, [1, 2])
    # DeiT / timm training checkpoints and DataParallel prefixes load unchanged
    other = family.create_reference(name)
    family.load_official(other, {"model": {f"module.{k}": v for k, v in good.items()}})
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), good.values()))


@pytest.mark.parametrize("family, name, other_size", [(vip, "vip_test_c", 112), (ffonly, "ffonly_test_c", 32)])
def test_official_weights_need_their_resolution(family, name, other_size):
    sd = family.export_official(family.create_reference(name))
    with pytest.raises(ValueError, match="img_size"):
        family.load_official(family.create_reference(family.from_name(name, img_size=other_size)), sd)
