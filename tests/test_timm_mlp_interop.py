"""Real timm MLP-Mixer, ResMLP and gMLP modules (random init, no download) against the reference models, on the CPU:
read_timm reads every size, from_timm equals timm in float64, export_timm loads back strictly and bit-exact, the
parameter layouts of the full-size models are timm's, and the refusals name what the reference cannot reproduce.

timm needs torchvision, which the CPU torch wheel lacks: run with the CUDA-build venv on the CPU,
    .venv-cuda/bin/python -m pytest tests/test_timm_mlp_interop.py
Elsewhere these tests skip, unless TTF_REQUIRE_TIMM=1 makes a missing timm an error.

timm's entry points for these families fix `num_blocks`, so `timm.create_model(name, depth=2)` is refused; the models
are built at full size and cut to their first 2 blocks (the blocks are all alike), which keeps real widths, token
counts, eps and init values.
"""
import copy
import dataclasses
import os
from functools import partial

import pytest
import torch
from torch import nn

from helpers import rel_err
from threethings_fast.models import gmlp, mixer, resmlp

if os.environ.get("TTF_REQUIRE_TIMM") == "1":
    import timm  # noqa: F401  (an ImportError here fails the run: the interop target must not skip)
else:
    timm = pytest.importorskip("timm")

# timm name -> (our family module, the config read_timm must give for the 2-block cut)
MODELS = {
    "mixer_s16_224": (mixer, mixer.resolve_name("mixer_s16_224").replace(depth=2)),
    "resmlp_12_224": (resmlp, resmlp.resolve_name("resmlp_12_224").replace(depth=2, init_values=1e-4)),
    "gmlp_s16_224": (gmlp, gmlp.resolve_name("gmlp_s16_224").replace(depth=2)),
}
FULL_SIZE = ["mixer_s16_224", "mixer_b16_224", "mixer_l16_224", "resmlp_12_224", "resmlp_24_224", "resmlp_36_224",
             "resmlp_big_24_224", "gmlp_ti16_224", "gmlp_s16_224", "gmlp_b16_224"]
FAMILY_OF = {"mixer": mixer, "resmlp": resmlp, "gmlp": gmlp}


def family(name: str):
    return FAMILY_OF[name.split("_")[0]]


def sizes(config) -> dict:
    """A config's fields less ResMLP's init_values (an init, not readable from trained weights)."""
    fields = dataclasses.asdict(config)
    fields.pop("init_values", None)
    return fields


@torch.no_grad()
def perturb(model: nn.Module) -> nn.Module:
    """Move every norm, Affine, LayerScale, bias and gate far from its init, so each layer matters."""
    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        r = torch.randn(p.shape, generator=g, dtype=p.dtype)
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "alpha" or (p.dim() == 1 and "norm" in name and leaf == "weight"):
            p.copy_(1 + 0.3 * r)
        elif leaf in ("ls1", "ls2"):
            p.copy_(0.05 + 0.5 * torch.rand(p.shape, generator=g, dtype=p.dtype))
        elif leaf == "beta" or p.dim() == 1:
            p.copy_(0.1 * r)
        elif "gate.proj" in name or name == "head.weight":  # timm inits these to ~0 / 0
            p.copy_(0.05 * r)
    return model


_BUILT: dict = {}


def timm_model(name: str, randomize: bool = True, **kwargs) -> nn.Module:
    """timm's `name` cut to its first 2 blocks, float64, eval. Each (name, kwargs) is built once (timm initialises
    every block of the full model, the bulk of this file's time) and copied."""
    key = (name, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if key not in _BUILT:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, **kwargs)
        model.blocks = model.blocks[:2]
        _BUILT[key] = model
    model = copy.deepcopy(_BUILT[key])
    if randomize:
        perturb(model)
    return model.double().eval()


def images_for(model: nn.Module, batch=2) -> torch.Tensor:
    return torch.randn(batch, 3, *model.stem.img_size, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)


@pytest.mark.parametrize("name", list(MODELS))
def test_float64_equal_and_export_bit_exact(name):
    module, expected_config = MODELS[name]
    ref_timm = timm_model(name)
    fresh = timm_model(name, randomize=False)
    assert module.read_timm(fresh) == expected_config  # every size, eps and (fresh) init value read from the module

    ours = module.from_timm(ref_timm)
    assert sizes(ours.config) == sizes(expected_config)
    assert next(ours.parameters()).dtype == torch.float64 and not ours.training
    x = images_for(ref_timm)
    with torch.no_grad():
        want = ref_timm(x)
        assert rel_err(ours(x), want) <= 1e-10

    state = module.export_timm(ours)
    fresh.load_state_dict(state, strict=True)
    for key, value in ref_timm.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(fresh(x), want)


def test_resmlp_init_values_when_layerscale_was_trained():
    model = timm_model("resmlp_12_224")          # perturbed: ls1 / ls2 no longer constant
    assert resmlp.read_timm(model).init_values == 0.1   # the paper's value for the depth-2 cut (<= 12)


@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_layout_is_timms(name):
    module = family(name)
    cls = {mixer: mixer.MlpMixer, resmlp: resmlp.ResMLP, gmlp: gmlp.GMLP}[module]
    with torch.device("meta"):
        theirs = timm.create_model(name, pretrained=False)
        ours = cls(module.resolve_name(name))
    assert sizes(module.read_timm(theirs)) == sizes(ours.config)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


def test_timm_resmlp_init_values_are_read():
    # timm builds resmlp_12_224 with LayerScale 1e-4 (its ResBlock default), the paper with 0.1; read_timm reports
    # what the module holds.
    assert resmlp.read_timm(_small("resmlp_12_224")).init_values == 1e-4
    assert resmlp.read_timm(_small("resmlp_24_224")).init_values == 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Refusals, on real timm modules (small images keep them cheap)
# ---------------------------------------------------------------------------------------------------------------
def _small(name, **kwargs):
    return timm_model(name, img_size=64, randomize=False, **kwargs)


def _with(model: nn.Module, path: str, layer: nn.Module) -> nn.Module:
    """`model` with the submodule at `path` swapped for `layer` (what timm's entry points cannot be asked for)."""
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent), leaf, layer.double())
    return model


@pytest.mark.parametrize("build, reader, match", [
    (lambda: _small("mixer_s16_224", act_layer=nn.SiLU), mixer, "activation SiLU"),
    (lambda: _small("mixer_s16_224", act_layer=partial(nn.GELU, approximate="tanh")), mixer,
     r"GELU\(approximate='tanh'\)"),
    (lambda: _small("gmixer_12_224"), mixer, "GluMlp is not supported"),
    (lambda: _small("mixer_s16_224", global_pool=""), mixer, "global_pool=''"),
    (lambda: _small("mixer_s16_224", stem_norm=True), mixer, "stem norm"),
    (lambda: _small("mixer_s16_224", norm_layer=nn.BatchNorm1d), mixer, "norm layer BatchNorm1d"),
    (lambda: _small("resmlp_12_224"), mixer, "blocks.0 is a ResBlock, expected timm's MixerBlock"),
    (lambda: _small("mixer_s16_224"), resmlp, "blocks.0 is a MixerBlock, expected timm's ResBlock"),
    (lambda: _with(_small("resmlp_12_224"), "blocks.1.norm2", nn.LayerNorm(384)), resmlp,
     "blocks.1.norm2: norm layer LayerNorm is not supported"),
    (lambda: _with(_small("gmlp_s16_224"), "blocks.0.mlp_channels.gate.norm", nn.LayerNorm(768, bias=False)), gmlp,
     "gate.norm: LayerNorm.*bias=False"),
    (lambda: _with(_small("mixer_s16_224"), "blocks.1.mlp_tokens.fc1", nn.Linear(4, 128, bias=False)), mixer,
     "mlp_tokens.fc1"),
    (lambda: _small("gmlp_s16_224", act_layer=nn.ReLU), gmlp, "activation ReLU"),
    (lambda: timm_model("gmlp_s16_224", img_size=(64, 48), randomize=False), gmlp, "square images"),
    (lambda: nn.Linear(3, 3), gmlp, "expected a timm MlpMixer"),
])
def test_refusals_name_the_unsupported_feature(build, reader, match):
    with pytest.raises(ValueError, match=match):
        reader.read_timm(build())


def test_train_mode_regularisers_are_refused_eval_accepted():
    model = _small("mixer_s16_224", drop_path_rate=0.1, drop_rate=0.2)
    mixer.read_timm(model)                   # eval: dropout and drop-path are the identity
    model.train()
    with pytest.raises(ValueError, match="active in train mode.*module.eval"):
        mixer.read_timm(model)
    plain = _small("resmlp_12_224").train()  # train mode without any active regulariser is fine
    resmlp.read_timm(plain)


def test_layer_norm_eps_is_read():
    model = _small("mixer_s16_224", norm_layer=partial(nn.LayerNorm, eps=1e-5))
    assert mixer.read_timm(model).norm_eps == 1e-5


@pytest.mark.parametrize("module, name, overrides, match", [
    (mixer, "mixer_tiny_2x2", {}, "num_parallel=2 has no timm layout"),
    (resmlp, "resmlp_tiny_1x3", {}, "num_parallel=3 has no timm layout"),
    (gmlp, "gmlp_tiny_p16", dict(stem="hmlp_bn"), "stem='hmlp_bn' has no timm layout"),
    (resmlp, "resmlp_tiny_p16", dict(stem="hmlp_ln"), "stem='hmlp_ln' has no timm layout"),
])
def test_export_refuses_what_timm_cannot_hold(module, name, overrides, match):
    cls = {mixer: mixer.MlpMixer, resmlp: resmlp.ResMLP, gmlp: gmlp.GMLP}[module]
    with pytest.raises(ValueError, match=match):
        module.export_timm(cls(module.from_name(name, **overrides)))
    with pytest.raises(ValueError, match="expected a reference"):
        module.export_timm(nn.Linear(2, 2))


@pytest.mark.parametrize("name", list(MODELS))
def test_convert_takes_the_timm_module_as_it_is(name):
    """ttf.convert(timm module): the family is recognised from timm's block class, the fused model equals timm in
    float64 and within twice timm's own error in float32."""
    import threethings_fast as ttf
    from helpers import assert_within_bound
    ref_timm = timm_model(name)
    x = images_for(ref_timm)
    fused = ttf.convert(ref_timm, backend="torch")
    assert fused.family.name == name.split("_")[0]
    with torch.no_grad():
        want = ref_timm(x)
        assert rel_err(fused(x), want) <= 1e-10
        timm32 = copy.deepcopy(ref_timm).float()
        assert_within_bound(ttf.convert(timm32)(x.float()), timm32(x.float()), want, torch.float32)


def test_convert_refuses_an_unknown_timm_mlp_block():
    import threethings_fast as ttf
    model = timm_model("mixer_s16_224", randomize=False)

    class OtherBlock(nn.Module):
        def forward(self, x):
            return x
    model.blocks = nn.Sequential(OtherBlock())
    with pytest.raises(ValueError, match="OtherBlock"):
        ttf.convert(model)
