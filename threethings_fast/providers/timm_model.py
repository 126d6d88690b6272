"""timm's VisionTransformer of a config, holding a reference model's weights: the `timm` providers' model.

The weights are the reference's, exported into timm's layout (`export_state_dict(..., "timm")`) and loaded
strictly, so timm and our providers time the same function of the same numbers. Nothing is downloaded.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from ..checkpoint import export_state_dict
from ..configs import ViTConfig


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


def timm_unsupported(cfg: ViTConfig) -> Optional[str]:
    """What in `cfg` timm's VisionTransformer cannot build, or None."""
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
    if cfg.distilled:
        from timm.models.deit import VisionTransformerDistilled as cls
    else:
        from timm.models.vision_transformer import VisionTransformer as cls
    param = next(reference.parameters())
    model = cls(**timm_kwargs(cfg)).to(device=param.device, dtype=param.dtype).eval()
    model.load_state_dict(export_state_dict(reference, "timm"), strict=True)
    return model
