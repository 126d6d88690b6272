"""Checkpoint interop: load and export the official deit layout and the timm layout, unchanged.

Our own module tree (threethings_fast.reference) stores every block as K branches `attns.j` / `ffns.j`, each
`{norm, attn|mlp, ls.gamma}`, and pos_embed with the class-token row: (1, 1 + N_p, D).

timm  (K >= 2, ParallelThingsBlock): blocks.i.attns.j.{norm,attn,ls.gamma}, blocks.i.ffns.j.{norm,mlp,ls.gamma}
timm  (K = 1, Block):                blocks.i.{norm1, attn, ls1.gamma, norm2, mlp, ls2.gamma}
deit  (models_v2):                   blocks.i.{norm1, norm11, attn, attn1, gamma_1, gamma_1_1, norm2, norm21, mlp,
                                     mlp1, gamma_2, gamma_2_1}; branch j >= 1 gets the suffix j (norm1j, attnj,
                                     gamma_1_j); K = 1 is {norm1, attn, gamma_1, norm2, mlp, gamma_2}
pos_embed: timm (1, 1 + N_p, D), deit (1, N_p, D) — deit adds no position to the class token, so loading a deit
checkpoint puts a zero class-token row in ours, and exporting to deit folds our class-token row into cls_token
(the same function, exactly: deit computes cls_token, we compute cls_token + pos_embed[:, 0]).
The stem keys (`patch_embed.proj.*`, hMLP under `patch_embed.proj.{0..7}`), cls_token, norm, head are shared.
"""
from __future__ import annotations

import math
import os
import re
from typing import Mapping, Optional, Union

import torch

from .configs import ViTConfig

LAYOUTS = ("timm", "deit")
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


class CheckpointError(ValueError):
    """A state dict does not fit the model (missing/unexpected keys, wrong shapes, unknown layout)."""


def read_checkpoint(path: Union[str, os.PathLike]) -> dict:
    """A checkpoint file -> its state dict (wrappers removed), read with torch.load(weights_only=True): loading
    never runs code; a pickle that would is refused. Raises CheckpointError for a truncated, corrupt or foreign
    file, FileNotFoundError if there is none."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # zip, pickle and weights_only errors differ by torch version; all mean the same here
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        unsafe = "weights_only" in str(e) or "Unsupported global" in str(e)
        raise CheckpointError(
            f"cannot read checkpoint {path}: " + ("it holds objects other than tensors and plain containers, which "
                                                   "could run code when loaded; refused" if unsafe else
                                                   "it is truncated or corrupt, or not a torch file")
            + f" ({type(e).__name__}: {first[:200]})") from e
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a state dict")
    return unwrap(payload)


def unwrap(state_dict: Mapping) -> dict:
    """Accept the common wrappers: {"model": sd} (official deit checkpoints), {"state_dict": sd}, "module." prefix."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    for wrapper in ("model", "state_dict"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], Mapping):
            state_dict = state_dict[wrapper]
            break
    out = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


# Keys only timm's VisionTransformer(Distilled) has: the official deit models_v2.vit_models has none of them.
_TIMM_ONLY_KEYS = ("dist_token", "reg_token", "norm_pre.weight", "fc_norm.weight", "head_dist.weight")


def detect_layout(state_dict: Mapping) -> str:
    """'timm' or 'deit'. Key names decide where they differ; otherwise (a K = 1 model without LayerScale) the
    pos_embed shape does: deit's excludes the class-token row, so it covers a square grid, and timm's (1 + g²
    rows) never does. A timm checkpoint that lost a position row therefore reads as deit: pass layout= where the
    source is known."""
    keys = list(state_dict)
    if any(".attns." in k or ".ffns." in k or ".ls1.gamma" in k or ".ls2.gamma" in k for k in keys):
        return "timm"
    if any(re.search(r"\.(norm1\d|norm2\d|attn\d|mlp\d|gamma_[12])(\.|$|_)", k) for k in keys):
        return "deit"
    if any(k in state_dict for k in _TIMM_ONLY_KEYS) or ("cls_token" not in state_dict and "pos_embed" in state_dict):
        return "timm"   # deit's models always have a class token
    pos = state_dict.get("pos_embed")
    if pos is not None and pos.dim() == 3:
        n = pos.shape[1]
        if math.isqrt(n) ** 2 == n:
            return "deit"   # (a timm no_embed_class model of this shape has the same keys and the same function)
        if math.isqrt(n - 1) ** 2 == n - 1:
            return "timm"
    raise CheckpointError("cannot tell the checkpoint layout (neither timm nor deit): no 'attns.'/'ffns.'/'ls1.gamma' "
                          "(timm) or 'norm11'/'attn1'/'gamma_1' (deit) keys and no pos_embed of a square grid. "
                          f"First keys: {keys[:8]}")


# ---------------------------------------------------------------------------------------------------------------
# Per-block key maps. Each maps one of *our* block-relative key prefixes to the external one.

def _block_map(layout: str, k: int) -> dict[str, str]:
    m = {}
    for j in range(k):
        if layout == "timm" and k > 1:
            m[f"attns.{j}."] = f"attns.{j}."
            m[f"ffns.{j}."] = f"ffns.{j}."
            continue
        if layout == "timm":  # K = 1 sequential timm Block
            m.update({"attns.0.norm.": "norm1.", "attns.0.attn.": "attn.", "attns.0.ls.": "ls1.",
                      "ffns.0.norm.": "norm2.", "ffns.0.mlp.": "mlp.", "ffns.0.ls.": "ls2."})
            continue
        sfx = str(j) if j else ""
        m[f"attns.{j}.norm."] = f"norm1{sfx}."
        m[f"attns.{j}.attn."] = f"attn{sfx}."
        m[f"attns.{j}.ls.gamma"] = f"gamma_1{'_' + sfx if sfx else ''}"
        m[f"ffns.{j}.norm."] = f"norm2{sfx}."
        m[f"ffns.{j}.mlp."] = f"mlp{sfx}."
        m[f"ffns.{j}.ls.gamma"] = f"gamma_2{'_' + sfx if sfx else ''}"
    return m


def _rename_block_key(rel: str, mapping: dict[str, str]) -> Optional[str]:
    for src, dst in mapping.items():
        if rel == src or (src.endswith(".") and rel.startswith(src)):
            return dst + rel[len(src):]
    return None


def _num_parallel(state_dict: Mapping, layout: str) -> int:
    if layout == "timm":
        js = {int(m.group(1)) for k in state_dict for m in [re.match(r"^blocks\.\d+\.attns\.(\d+)\.", k)] if m}
        return max(js) + 1 if js else 1
    js = {int(m.group(1)) for k in state_dict for m in [re.match(r"^blocks\.\d+\.attn(\d+)\.", k)] if m}
    return max(js) + 1 if js else 1


def to_internal(state_dict: Mapping, layout: Optional[str] = None, no_embed_class: bool = False) -> dict:
    """External (timm/deit) state dict -> our key layout. Unknown keys pass through unchanged, so a strict load
    reports them as unexpected. A deit pos_embed has no class-token row: for a model with no_embed_class=False a
    zero row is put in front (deit adds no position to the class token), else it is kept as is."""
    sd = unwrap(state_dict)
    layout = layout or detect_layout(sd)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    k = _num_parallel(sd, layout)
    inverse = {dst: src for src, dst in _block_map(layout, k).items()}
    out = {}
    for key, value in sd.items():
        m = _BLOCK_KEY.match(key)
        if m:
            renamed = _rename_block_key(m.group(2), inverse)
            key = f"blocks.{m.group(1)}.{renamed}" if renamed is not None else key
        elif key == "pos_embed" and layout == "deit" and not no_embed_class and value.dim() == 3:
            value = torch.cat([value.new_zeros(value.shape[0], 1, value.shape[2]), value], dim=1)
        out[key] = value
    return out


def _deit_cannot_hold(config: ViTConfig) -> list[str]:
    """Features of `config` that the official deit layout (models_v2.vit_models) has no place for."""
    reasons = {
        "no class token": not config.class_token, "a distillation token": config.distilled,
        "register tokens": config.reg_tokens > 0, "norm_pre": config.pre_norm,
        "average pooling": config.global_pool != "token", "fc_norm": config.use_fc_norm,
        "no final norm": not config.final_norm, "a patch embedding without bias": not config.patch_bias,
    }
    return [name for name, present in reasons.items() if present]


def from_internal(state_dict: Mapping, layout: str, config: ViTConfig) -> dict:
    """Our key layout -> timm or deit, for a model of `config`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "deit" and _deit_cannot_hold(config):
        raise CheckpointError(f"the deit layout (models_v2.vit_models) cannot hold {', '.join(_deit_cannot_hold(config))}"
                              "; export with layout='timm'")
    mapping = _block_map(layout, config.num_parallel)
    out = {}
    for key, value in state_dict.items():
        m = _BLOCK_KEY.match(key)
        if m:
            renamed = _rename_block_key(m.group(2), mapping)
            if renamed is None:
                raise CheckpointError(f"no {layout} name for {key!r}")
            key = f"blocks.{m.group(1)}.{renamed}"
        out[key] = value
    if layout == "deit" and not config.no_embed_class:
        pos = out["pos_embed"]
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:].clone()
    return out


def load_state_dict(model: torch.nn.Module, state_dict: Mapping, layout: Optional[str] = None, *,
                    allow_nonfinite: bool = False) -> str:
    """Load a deit- or timm-layout state dict (auto-detected unless `layout` is given) into a reference model,
    strictly. Returns the layout it detected. Raises CheckpointError naming missing / unexpected keys, shape
    mismatches, tensors that are not floating point where the model's are, and NaN / Inf values (unless
    `allow_nonfinite`); nothing is copied unless everything fits. Floating tensors of another precision load as the
    model's dtype (exactly when it is at least as wide)."""
    sd = unwrap(state_dict)
    layout = layout or detect_layout(sd)
    config = model.config
    ours = to_internal(sd, layout, no_embed_class=config.no_embed_class)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    bad_shapes = [f"{k}: checkpoint {tuple(ours[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in ours and ours[k].shape != v.shape]
    bad_dtypes = [f"{k}: expected a floating-point tensor, got {ours[k].dtype}" for k, v in expected.items()
                  if k in ours and v.is_floating_point() and not ours[k].is_floating_point()]
    if missing or unexpected or bad_shapes or bad_dtypes:
        msg = [f"state dict ({layout} layout) does not fit {type(model).__name__} ({config})"]
        if missing:
            msg.append(f"missing keys ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            msg.append(f"unexpected keys ({len(unexpected)}): {unexpected[:20]}"
                       f"{' ...' if len(unexpected) > 20 else ''}")
        if missing or unexpected:
            k = _num_parallel(ours, "timm")
            if k != config.num_parallel:
                msg.append(f"the checkpoint's blocks have {k} branch(es), the model's {config.num_parallel}: "
                           f"build the model with num_parallel={k}")
        if bad_shapes:
            msg.append(f"shape mismatches ({len(bad_shapes)}): {bad_shapes[:10]}")
            if any(s.startswith("pos_embed") for s in bad_shapes):
                msg.append(_pos_embed_hint(ours["pos_embed"], config))
            head = ours.get("head.weight")
            if head is not None and head.dim() == 2 and any(s.startswith("head.") for s in bad_shapes):
                msg.append(f"the checkpoint's head has {head.shape[0]} classes: build the model with "
                           f"num_classes={head.shape[0]}")
        if bad_dtypes:
            msg.append(f"wrong dtypes ({len(bad_dtypes)}): {bad_dtypes[:10]}")
        raise CheckpointError("\n  ".join(msg))
    if not allow_nonfinite:
        check_finite(ours, "the state dict")
    model.load_state_dict(ours, strict=True)
    return layout


def check_finite(state_dict: Mapping, what: str) -> None:
    """CheckpointError naming every tensor holding NaN / Inf (with counts): such weights make the outputs NaN."""
    bad = [f"{k} ({int((~torch.isfinite(v)).sum())} of {v.numel()})" for k, v in state_dict.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{what} holds NaN / Inf values in {len(bad)} tensor(s): {bad[:10]}; a model with "
                              "them outputs NaN. Pass allow_nonfinite=True to load them anyway")


def _pos_embed_hint(pos: torch.Tensor, config: ViTConfig) -> str:
    rows = pos.shape[1] if pos.dim() == 3 else -1
    if config.num_prefix_tokens and rows == config.num_patches and not config.no_embed_class:
        return ("pos_embed has one row per patch and none for the prefix tokens: if the checkpoint is a "
                "no_embed_class model (DeiT III), build the model with no_embed_class=True")
    if config.num_prefix_tokens and rows == config.num_tokens and config.no_embed_class:
        return "pos_embed has rows for the prefix tokens: build the model with no_embed_class=False"
    return ("pos_embed differs: build the model at the checkpoint's img_size, load, then "
            "model.set_img_size(new_size)")


def export_state_dict(model: torch.nn.Module, layout: str = "timm") -> dict:
    """The model's weights in the timm or deit layout (detached tensors; a copy where the layout changes them)."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    return from_internal(sd, layout, model.config)


def _square_grid(rows: int) -> Optional[int]:
    g = math.isqrt(rows) if rows > 0 else -1
    return g if g > 0 and g * g == rows else None


def infer_config(state_dict: Mapping, num_heads: Optional[int] = None, **overrides) -> ViTConfig:
    """Rebuild a ViTConfig from a timm/deit state dict's shapes and keys.

    Read from the state dict: width, depth, K, MLP ratio, patch size and stem, input channels, image size (from
    the position grid), classes, LayerScale, qkv bias, class / distillation / register tokens, no_embed_class,
    norm_pre, fc_norm, final norm, the stem's conv bias.
    Not in a state dict, so given here or taken as stated:
      - num_heads: required. Shapes only give the width: 1280 is 20 heads of 64 in the paper's models and 16 heads
        of 80 in ViT-H/14; a wrong guess gives wrong outputs, so none is made.
      - global_pool: "avg" when the state dict has fc_norm or no class token, else "token" (timm's defaults);
        pass global_pool= (and fc_norm=) for a model built otherwise.
      - norm_eps: 1e-6 (timm's ViTs, deit); CLIP-style models use 1e-5: pass norm_eps=.
    Any ViTConfig field may be overridden by keyword.
    """
    if num_heads is None and "num_heads" not in overrides:
        width = _width(state_dict)
        options = ", ".join(f"{width // hd} heads of {hd}" for hd in (64, 80, 96, 128, 32) if width % hd == 0)
        raise CheckpointError(
            "the number of attention heads is not stored in a state dict: the shapes give embed_dim "
            f"{width}{' (' + options + ' all fit)' if options else ''}. Pass num_heads=... (or a config=) — "
            "e.g. the paper's models use head_dim 64, ViT-H/14 16 heads of 80 — or convert the timm / deit module "
            "itself, which knows its heads")
    sd = unwrap(state_dict)
    layout = detect_layout(sd)
    sd = to_internal(sd, layout)
    pos = sd["pos_embed"]
    d = pos.shape[-1]
    class_token, distilled = "cls_token" in sd, "dist_token" in sd
    reg_tokens = sd["reg_token"].shape[1] if "reg_token" in sd else 0
    prefix = int(class_token) + int(distilled) + reg_tokens
    with_prefix, without_prefix = _square_grid(pos.shape[1] - prefix), _square_grid(pos.shape[1])
    if prefix and with_prefix and without_prefix and "no_embed_class" in overrides:
        with_prefix, without_prefix = (None, without_prefix) if overrides["no_embed_class"] else (with_prefix, None)
    if prefix and with_prefix and without_prefix:
        raise CheckpointError(f"pos_embed has {pos.shape[1]} rows: both {with_prefix}x{with_prefix} patches with "
                              f"positions for the {prefix} prefix tokens and {without_prefix}x{without_prefix} "
                              "patches without (no_embed_class) fit; pass no_embed_class=")
    if not (with_prefix or without_prefix):
        raise CheckpointError(f"pos_embed has {pos.shape[1]} rows, which is no square grid of patches with or "
                              f"without the {prefix} prefix tokens")
    no_embed_class = bool(prefix) and with_prefix is None
    grid = without_prefix if no_embed_class else with_prefix
    depth = 1 + max(int(m.group(1)) for k in sd for m in [_BLOCK_KEY.match(k)] if m)
    k = 1 + max(int(m.group(1)) for key in sd for m in [re.match(r"^blocks\.0\.attns\.(\d+)\.", key)] if m)
    if "patch_embed.proj.weight" in sd:
        stem, patch = "linear", sd["patch_embed.proj.weight"].shape[-1]
        in_chans = sd["patch_embed.proj.weight"].shape[1]
    else:
        stem = "hmlp_bn" if "patch_embed.proj.1.running_mean" in sd else "hmlp_ln"
        patch, in_chans = 16, sd["patch_embed.proj.0.weight"].shape[1]
    fc_norm = "fc_norm.weight" in sd
    global_pool = "avg" if fc_norm or not class_token else "token"
    cfg = dict(
        img_size=grid * patch, patch_size=patch, in_chans=in_chans, embed_dim=d, depth=depth,
        num_heads=num_heads, num_parallel=k,
        mlp_ratio=sd["blocks.0.ffns.0.mlp.fc1.weight"].shape[0] / d,
        num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0,
        init_values=1e-5 if "blocks.0.attns.0.ls.gamma" in sd else None,
        qkv_bias="blocks.0.attns.0.attn.qkv.bias" in sd, stem=stem,
        class_token=class_token, distilled=distilled, reg_tokens=reg_tokens, no_embed_class=no_embed_class,
        pre_norm="norm_pre.weight" in sd, global_pool=global_pool,
        fc_norm=None if fc_norm == (global_pool == "avg") else fc_norm,
        final_norm=fc_norm or "norm.weight" in sd,
        patch_bias=stem != "linear" or "patch_embed.proj.bias" in sd,
    )
    cfg.update(overrides)
    return ViTConfig(**cfg)


def _width(state_dict: Mapping) -> int:
    sd = unwrap(state_dict)
    pos = sd.get("pos_embed")
    if pos is None or pos.dim() != 3:
        raise CheckpointError("the state dict has no pos_embed of shape (1, N, D): not a ViT checkpoint")
    return int(pos.shape[-1])
