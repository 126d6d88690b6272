"""timm's model of a config, holding a reference model's weights: the `timm` providers' model.

    ViT                       timm's VisionTransformer (VisionTransformerDistilled) built from the config
    MLP-Mixer, ResMLP, gMLP   timm's MlpMixer: `timm.create_model(name)` when the config is one of the family's
                              MODEL_TABLE entries (whose names are timm's), else built from the config (tiny test
                              models, overrides); either way its sizes are read back (`<family>.interop.read_timm`)
                              and must equal the config's
    others                    none (timm has no Vision Permutator or feed-forward-only model)

The weights are the reference's, exported into timm's layout (`export_state_dict(..., "timm")`, or the family's
`interop.export_timm`) and loaded strictly, so timm and our providers time the same function of the same numbers.
Nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Optional

import torch

from ..checkpoint import export_state_dict
from ..configs import ViTConfig
from ..models import family_of

#: Families timm builds as its MlpMixer class (their interop modules: threethings_fast.models.<family>.interop).
TIMM_MLP_FAMILIES = ("mixer", "resmlp", "gmlp")


@functools.lru_cache(maxsize=1)
def timm_missing() -> Optional[str]:
    """Why timm cannot be imported here, or None. Cached: the import takes seconds and its outcome does not
    change within a process."""
    try:
        import timm  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name == "timm":
            return "timm is not installed"
        return f"timm is not importable here: {exc}" + (
            " (timm needs torchvision, which the CPU torch wheel lacks)" if exc.name == "torchvision" else "")
    except Exception as exc:  # noqa: BLE001 - a timm / torchvision mismatch raises more than ImportError
        return f"timm is not importable here ({type(exc).__name__}: {str(exc)[:160]})"
    return None


def timm_unsupported(cfg) -> Optional[str]:
    """What in `cfg` (a config of any family) timm's model cannot build, or None."""
    if not isinstance(cfg, ViTConfig):
        return _mlp_unsupported(cfg)
    if cfg.stem != "linear":
        return f"timm's VisionTransformer has no hMLP stem (config stem {cfg.stem!r})"
    if cfg.patch_bias == cfg.pre_norm:
        # timm ties the stem convolution's bias to pre_norm (CLIP: pre-norm, no bias); other pairings it cannot build
        return (f"timm builds the stem convolution with a bias exactly when pre_norm is off (config: patch_bias="
                f"{cfg.patch_bias}, pre_norm={cfg.pre_norm})")
    return None


def timm_kwargs(cfg: ViTConfig) -> dict:
    """Keyword arguments of timm's VisionTransformer for `cfg`. Fields at timm's defaults are left out, so older
    timm releases that lack some keywords still build the common models."""
    kw = dict(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
              embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
              qkv_bias=cfg.qkv_bias, init_values=cfg.init_values, global_pool=cfg.global_pool,
              norm_layer=functools.partial(torch.nn.LayerNorm, eps=cfg.norm_eps))
    optional = dict(class_token=(cfg.class_token, True), reg_tokens=(cfg.reg_tokens, 0),
                    no_embed_class=(cfg.no_embed_class, False), pre_norm=(cfg.pre_norm, False),
                    fc_norm=(cfg.fc_norm, None), final_norm=(cfg.final_norm, True))
    kw.update({k: value for k, (value, default) in optional.items() if value != default})
    if cfg.num_parallel > 1:
        from timm.models.vision_transformer import ParallelThingsBlock
        kw["block_fn"] = functools.partial(ParallelThingsBlock, num_parallel=cfg.num_parallel)
    return kw


def timm_from_reference(reference: torch.nn.Module) -> torch.nn.Module:
    """timm's model of `reference.config` on the reference's device and dtype, in eval mode, with its weights."""
    cfg = reference.config
    problem = timm_missing() or timm_unsupported(cfg)
    if problem:
        raise RuntimeError(problem)
    if not isinstance(cfg, ViTConfig):
        return _timm_mlp_from_reference(reference)
    if cfg.distilled:
        from timm.models.deit import VisionTransformerDistilled as cls
    else:
        from timm.models.vision_transformer import VisionTransformer as cls
    param = next(reference.parameters())
    model = cls(**timm_kwargs(cfg)).to(device=param.device, dtype=param.dtype).eval()
    model.load_state_dict(export_state_dict(reference, "timm"), strict=True)
    return model


# ---------------------------------------------------------------------------------------------------------------
# MLP-Mixer, ResMLP, gMLP: timm's MlpMixer
# ---------------------------------------------------------------------------------------------------------------
def _mlp_unsupported(cfg) -> Optional[str]:
    try:
        family = family_of(cfg)
    except TypeError as exc:
        return str(exc)
    if family.name not in TIMM_MLP_FAMILIES:
        return f"timm has no {family.title} model"
    k = getattr(cfg, "num_parallel", 1)
    if k != 1:
        return f"timm's {family.title} blocks are sequential (K = 1); this model has K = {k}"
    if cfg.stem != "linear":
        return f"timm's {family.title} has no hMLP stem (config stem {cfg.stem!r})"
    return None


def timm_mlp_name(cfg) -> Optional[str]:
    """timm's name of an MLP-family config: the family's MODEL_TABLE name whose config equals `cfg` (those names are
    timm's), or None for any other config."""
    table = importlib.import_module(f"threethings_fast.models.{family_of(cfg).name}").MODEL_TABLE
    return next((name for name, known in table.items() if known == cfg), None)


def timm_mlp_model(cfg) -> torch.nn.Module:
    """timm's MlpMixer of an MLP-family config (float32, CPU, eval, timm's random init): by name where timm has it,
    else from the config. ValueError when timm's model does not have the config's sizes (e.g. a gMLP gate eps
    other than timm's 1e-5)."""
    import timm
    from timm.models import mlp_mixer as mm

    family = family_of(cfg)
    name = timm_mlp_name(cfg)
    if name is not None and timm.is_model(name):
        model = timm.create_model(name, pretrained=False)
    else:
        d = cfg.embed_dim

        def ratio(hidden: int) -> float:
            # timm sizes a hidden layer int(ratio * dim): the +0.5 survives that rounding whatever the float error
            return (hidden + 0.5) / d

        kw = dict(num_classes=cfg.num_classes, img_size=cfg.img_size, in_chans=cfg.in_chans,
                  patch_size=cfg.patch_size, num_blocks=cfg.depth, embed_dim=d)
        if family.name == "mixer":
            model = mm.MlpMixer(**kw, mlp_ratio=(ratio(cfg.tokens_dim), ratio(cfg.channels_dim)),
                                norm_layer=functools.partial(torch.nn.LayerNorm, eps=cfg.norm_eps))
        elif family.name == "resmlp":
            model = mm.MlpMixer(**kw, mlp_ratio=ratio(cfg.channels_dim), norm_layer=mm.Affine,
                                block_layer=functools.partial(mm.ResBlock, init_values=cfg.init_values))
        else:
            model = mm.MlpMixer(**kw, mlp_ratio=ratio(cfg.ffn_dim), block_layer=mm.SpatialGatingBlock,
                                mlp_layer=mm.GatedMlp,
                                norm_layer=functools.partial(torch.nn.LayerNorm, eps=cfg.norm_eps))
    model.eval()
    got = importlib.import_module(f"threethings_fast.models.{family.name}.interop").read_timm(model)
    if _sizes(got) != _sizes(cfg):
        raise ValueError(f"timm's {family.title} {name or 'MlpMixer'} has sizes {got}, not those of {cfg}")
    return model


def _sizes(cfg) -> dict:
    """A config's fields less ResMLP's init_values (the LayerScale's init: the loaded weights replace it)."""
    fields = dataclasses.asdict(cfg)
    fields.pop("init_values", None)
    return fields


def _timm_mlp_from_reference(reference: torch.nn.Module) -> torch.nn.Module:
    family = family_of(reference.config)
    interop = importlib.import_module(f"threethings_fast.models.{family.name}.interop")
    param = next(reference.parameters())
    model = timm_mlp_model(reference.config).to(device=param.device, dtype=param.dtype)
    model.load_state_dict(interop.export_timm(reference), strict=True)
    return model.eval()
