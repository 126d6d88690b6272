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
import re
from typing import Mapping, Optional

import torch

from .configs import ViTConfig

LAYOUTS = ("timm", "deit")
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


class CheckpointError(ValueError):
    """A state dict does not fit the model (missing/unexpected keys, wrong shapes, unknown layout)."""


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


def detect_layout(state_dict: Mapping) -> str:
    """'timm' or 'deit'. Key names decide where they differ; otherwise (a K = 1 model without LayerScale) the
    pos_embed shape does: deit's excludes the class-token row."""
    keys = list(state_dict)
    if any(".attns." in k or ".ffns." in k or ".ls1.gamma" in k or ".ls2.gamma" in k for k in keys):
        return "timm"
    if any(re.search(r"\.(norm1\d|norm2\d|attn\d|mlp\d|gamma_[12])(\.|$|_)", k) for k in keys):
        return "deit"
    pos = state_dict.get("pos_embed")
    if pos is not None and pos.dim() == 3:
        n = pos.shape[1]
        if math.isqrt(n) ** 2 == n:
            return "deit"
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


def to_internal(state_dict: Mapping, layout: Optional[str] = None) -> dict:
    """External (timm/deit) state dict -> our key layout. Unknown keys pass through unchanged, so a strict load
    reports them as unexpected."""
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
        elif key == "pos_embed" and layout == "deit":
            value = torch.cat([value.new_zeros(value.shape[0], 1, value.shape[2]), value], dim=1)
        out[key] = value
    return out


def from_internal(state_dict: Mapping, layout: str, num_parallel: int) -> dict:
    """Our key layout -> timm or deit."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    mapping = _block_map(layout, num_parallel)
    out = {}
    for key, value in state_dict.items():
        m = _BLOCK_KEY.match(key)
        if m:
            renamed = _rename_block_key(m.group(2), mapping)
            if renamed is None:
                raise CheckpointError(f"no {layout} name for {key!r}")
            key = f"blocks.{m.group(1)}.{renamed}"
        out[key] = value
    if layout == "deit":
        pos = out["pos_embed"]
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:].clone()
    return out


def load_state_dict(model: torch.nn.Module, state_dict: Mapping, layout: Optional[str] = None) -> str:
    """Load a deit- or timm-layout state dict (auto-detected unless `layout` is given) into a reference model,
    strictly. Returns the layout it detected. Raises CheckpointError naming missing/unexpected keys and shape
    mismatches; nothing is copied unless everything fits."""
    sd = unwrap(state_dict)
    layout = layout or detect_layout(sd)
    ours = to_internal(sd, layout)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    bad_shapes = [f"{k}: checkpoint {tuple(ours[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in ours and ours[k].shape != v.shape]
    if missing or unexpected or bad_shapes:
        msg = [f"state dict ({layout} layout) does not fit {type(model).__name__} "
               f"({getattr(model, 'config', '')})"]
        if missing:
            msg.append(f"missing keys ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            msg.append(f"unexpected keys ({len(unexpected)}): {unexpected[:20]}"
                       f"{' ...' if len(unexpected) > 20 else ''}")
        if bad_shapes:
            msg.append(f"shape mismatches ({len(bad_shapes)}): {bad_shapes[:10]}")
            if any(s.startswith("pos_embed") for s in bad_shapes):
                msg.append("pos_embed differs: build the model at the checkpoint's img_size, load, then "
                           "model.set_img_size(new_size)")
        raise CheckpointError("\n  ".join(msg))
    model.load_state_dict(ours, strict=True)
    return layout


def export_state_dict(model: torch.nn.Module, layout: str = "timm") -> dict:
    """The model's weights in the timm or deit layout (detached tensors; a copy where the layout changes them)."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    return from_internal(sd, layout, model.config.num_parallel)


def infer_config(state_dict: Mapping, num_heads: Optional[int] = None, **overrides) -> ViTConfig:
    """Rebuild a ViTConfig from a timm/deit state dict's shapes. Heads cannot be read from shapes: it defaults to
    embed_dim // 64 (head_dim 64, true for every model of the paper); pass num_heads otherwise."""
    sd = to_internal(state_dict)
    pos = sd["pos_embed"]
    d = pos.shape[-1]
    grid = math.isqrt(pos.shape[1] - 1)
    depth = 1 + max(int(m.group(1)) for k in sd for m in [_BLOCK_KEY.match(k)] if m)
    k = 1 + max(int(m.group(1)) for key in sd for m in [re.match(r"^blocks\.0\.attns\.(\d+)\.", key)] if m)
    if "patch_embed.proj.weight" in sd:
        stem, patch = "linear", sd["patch_embed.proj.weight"].shape[-1]
        in_chans = sd["patch_embed.proj.weight"].shape[1]
    else:
        stem = "hmlp_bn" if "patch_embed.proj.1.running_mean" in sd else "hmlp_ln"
        patch, in_chans = 16, sd["patch_embed.proj.0.weight"].shape[1]
    cfg = dict(
        img_size=grid * patch, patch_size=patch, in_chans=in_chans, embed_dim=d, depth=depth,
        num_heads=num_heads or max(1, d // 64), num_parallel=k,
        mlp_ratio=sd["blocks.0.ffns.0.mlp.fc1.weight"].shape[0] / d,
        num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0,
        init_values=1e-5 if "blocks.0.attns.0.ls.gamma" in sd else None,
        qkv_bias="blocks.0.attns.0.attn.qkv.bias" in sd, stem=stem,
    )
    cfg.update(overrides)
    return ViTConfig(**cfg)
