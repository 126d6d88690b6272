"""Read the architecture of a model a user already has: a timm `VisionTransformer` (sequential or
`ParallelThingsBlock` blocks, `VisionTransformerDistilled`), the official deit `vit_models` (models_v2), or this
package's own reference model.

`read_module(module)` returns the `ViTConfig` that reproduces the module exactly, with its state dict and that
state dict's layout. Everything is read from the modules themselves (heads, LayerNorm eps, patch and image size,
LayerScale, tokens, pooling, stem), never guessed from shapes. Whatever the fused path cannot reproduce exactly is
refused with a ValueError that names the feature: qk-norm, extra norms inside attention or the MLP, gated MLPs
(SwiGLU), activations other than the exact GELU, a custom attention scale, attention pooling, blocks or attention
of another kind, and dropout / stochastic depth active in train mode.

Modules are recognised by their class names and attributes (duck typing): neither timm nor deit is imported.
"""
from __future__ import annotations

import math
import re
from typing import Optional

import torch
from torch import nn

from .configs import ViTConfig
from .reference.model import VisionTransformer as ReferenceViT

_TIMM_CLASSES = ("VisionTransformer", "VisionTransformerDistilled")
_DEIT_BLOCKS = ("Block", "Layer_scale_init_Block", "Block_paralx2", "Layer_scale_init_Block_paralx2")
_DROPOUT_TYPES = ("Dropout", "DropPath", "PatchDropout")


def _name(module) -> str:
    return type(module).__name__


def _qualname(module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _is_identity(module) -> bool:
    return module is None or isinstance(module, nn.Identity)


def module_kind(module) -> Optional[str]:
    """"ours", "timm" or "deit" for a module `read_module` understands, else None."""
    if isinstance(module, ReferenceViT):
        return "ours"
    if not isinstance(module, nn.Module):
        return None
    if _name(module) in _TIMM_CLASSES and type(module).__module__.startswith("timm."):
        return "timm"
    if _name(module) == "vit_models" and all(hasattr(module, a) for a in ("patch_embed", "cls_token", "pos_embed",
                                                                          "blocks", "norm", "head")):
        return "deit"
    return None


class _Reader:
    """Collects the config fields of one module, the LayerNorm eps values seen, and what cannot be fused."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.fields: dict = {}
        self.eps: set[float] = set()
        self.refused: list[str] = []
        self._repeats: dict[str, list] = {}   # the same refusal in every block is reported once, with a count

    def refuse(self, feature: str) -> None:
        key = re.sub(r"\d+", "#", feature)
        if key in self._repeats:
            self._repeats[key][1] += 1
            return
        self._repeats[key] = [len(self.refused), 0]
        self.refused.append(feature)

    def message(self) -> str:
        parts = list(self.refused)
        for index, more in self._repeats.values():
            if more:
                parts[index] += f" (and {more} more like it)"
        return f"cannot convert {_qualname(self.module)} exactly: " + "; ".join(parts)

    def check(self) -> None:
        """Raise now if anything was refused (later steps need the fields read so far)."""
        if self.refused:
            raise ValueError(self.message())

    def layer_norm(self, norm, where: str, optional: bool = False) -> bool:
        """True for a LayerNorm with affine over the last dim; False for an absent norm when `optional`."""
        if optional and _is_identity(norm):
            return False
        if not isinstance(norm, nn.LayerNorm) or len(norm.normalized_shape) != 1:
            self.refuse(f"{where} is a {_name(norm)}, not a LayerNorm")
            return False
        if not norm.elementwise_affine or norm.weight is None or norm.bias is None:
            self.refuse(f"{where} is a LayerNorm without weight and bias")
            return False
        self.eps.add(float(norm.eps))
        return True

    # -- blocks -------------------------------------------------------------------------------------------------
    def attention(self, attn, where: str, width: int) -> None:
        if _name(attn) != "Attention" or not isinstance(getattr(attn, "qkv", None), nn.Linear) \
                or not isinstance(getattr(attn, "proj", None), nn.Linear):
            self.refuse(f"{where} is a {_qualname(attn)}: only plain multi-head attention (qkv, proj) is fused")
            return
        for norm_name, feature in (("q_norm", "qk-norm"), ("k_norm", "qk-norm"), ("norm", "a norm inside attention "
                                                                                         "(scale_attn_norm)")):
            if not _is_identity(getattr(attn, norm_name, None)):
                self.refuse(f"{feature} ({where}.{norm_name})")
        for extra in ("rope", "rel_pos", "lambda_full"):
            if getattr(attn, extra, None) is not None:
                self.refuse(f"{where}.{extra} (position encoding inside attention)")
        heads = int(attn.num_heads)
        if attn.qkv.in_features != width or attn.qkv.out_features != 3 * width or width % heads:
            self.refuse(f"{where}: qkv {attn.qkv.in_features} -> {attn.qkv.out_features} with {heads} heads does "
                        f"not fit width {width}")
            return
        head_dim = width // heads
        if float(attn.scale) != head_dim ** -0.5:
            self.refuse(f"a custom attention scale {float(attn.scale)!r} in {where} (qk_scale; the fused path uses "
                        f"head_dim^-0.5 = {head_dim ** -0.5!r})")
        if attn.proj.bias is None:
            self.refuse(f"an attention out-projection without bias ({where}.proj, proj_bias=False)")
        self.same("num_heads", heads, where)
        self.same("qkv_bias", attn.qkv.bias is not None, where)

    def mlp(self, mlp, where: str, width: int) -> None:
        if _name(mlp) != "Mlp" or not isinstance(getattr(mlp, "fc1", None), nn.Linear) \
                or not isinstance(getattr(mlp, "fc2", None), nn.Linear):
            kind = _qualname(mlp)
            gated = " (a gated MLP such as SwiGLU)" if "glu" in kind.lower() else ""
            self.refuse(f"{where} is a {kind}{gated}: only fc1 -> GELU -> fc2 MLPs are fused")
            return
        if not _is_identity(getattr(mlp, "norm", None)):
            self.refuse(f"a norm inside the MLP ({where}.norm, scale_mlp_norm)")
        act = getattr(mlp, "act", None)
        if not _exact_gelu(act):
            detail = f"approximate={act.approximate!r}" if isinstance(act, nn.GELU) else _qualname(act)
            self.refuse(f"the activation {detail} in {where} (the fused path computes the exact erf GELU)")
        if mlp.fc1.bias is None or mlp.fc2.bias is None:
            self.refuse(f"an MLP without biases ({where})")
        if mlp.fc1.in_features != width or mlp.fc2.out_features != width or mlp.fc2.in_features != mlp.fc1.out_features:
            self.refuse(f"{where}: fc1/fc2 shapes do not fit width {width}")
            return
        self.same("mlp_hidden", mlp.fc1.out_features, where)

    def layer_scale(self, ls, where: str) -> None:
        if _is_identity(ls):
            self.same("layer_scale", False, where)
        elif isinstance(getattr(ls, "gamma", None), torch.Tensor):
            self.same("layer_scale", True, where)
        else:
            self.refuse(f"{where} is a {_qualname(ls)}, not a LayerScale (gamma)")

    def same(self, field: str, value, where: str) -> None:
        """All blocks must agree on `field` (one config describes them all)."""
        seen = self.fields.setdefault(field, value)
        if seen != value:
            self.refuse(f"blocks that differ in {field} ({seen!r} vs {value!r} at {where})")

    def timm_block(self, block, where: str, width: int) -> None:
        if _name(block) == "ParallelThingsBlock":
            self.same("num_parallel", len(block.attns), where)
            if len(block.ffns) != len(block.attns):
                self.refuse(f"{where}: {len(block.attns)} attention branches but {len(block.ffns)} MLP branches")
            for j, branch in enumerate(block.attns):
                self.layer_norm(branch.norm, f"{where}.attns.{j}.norm")
                self.attention(branch.attn, f"{where}.attns.{j}.attn", width)
                self.layer_scale(branch.ls, f"{where}.attns.{j}.ls")
            for j, branch in enumerate(block.ffns):
                self.layer_norm(branch.norm, f"{where}.ffns.{j}.norm")
                self.mlp(branch.mlp, f"{where}.ffns.{j}.mlp", width)
                self.layer_scale(branch.ls, f"{where}.ffns.{j}.ls")
            return
        if _name(block) != "Block" or not all(hasattr(block, a) for a in ("norm1", "attn", "norm2", "mlp")):
            self.refuse(f"{where} is a {_qualname(block)}: only timm's Block and ParallelThingsBlock are fused")
            return
        self.same("num_parallel", 1, where)
        self.layer_norm(block.norm1, f"{where}.norm1")
        self.attention(block.attn, f"{where}.attn", width)
        self.layer_scale(getattr(block, "ls1", None), f"{where}.ls1")
        self.layer_norm(block.norm2, f"{where}.norm2")
        self.mlp(block.mlp, f"{where}.mlp", width)
        self.layer_scale(getattr(block, "ls2", None), f"{where}.ls2")

    def deit_block(self, block, where: str, width: int) -> None:
        if _name(block) not in _DEIT_BLOCKS:
            self.refuse(f"{where} is a {_qualname(block)}: deit's Block, Layer_scale_init_Block and their _paralx2 "
                        "forms are fused")
            return
        k = 1
        while hasattr(block, f"attn{k}"):
            k += 1
        self.same("num_parallel", k, where)
        self.same("layer_scale", hasattr(block, "gamma_1"), where)
        for j in range(k):
            sfx = str(j) if j else ""
            self.layer_norm(getattr(block, f"norm1{sfx}"), f"{where}.norm1{sfx}")
            self.attention(getattr(block, f"attn{sfx}"), f"{where}.attn{sfx}", width)
            self.layer_norm(getattr(block, f"norm2{sfx}"), f"{where}.norm2{sfx}")
            self.mlp(getattr(block, f"mlp{sfx}"), f"{where}.mlp{sfx}", width)

    # -- stem -----------------------------------------------------------------------------------------------------
    def stem(self, patch_embed) -> None:
        proj = getattr(patch_embed, "proj", None)
        if isinstance(proj, nn.Conv2d):
            k, s = tuple(proj.kernel_size), tuple(proj.stride)
            if k[0] != k[1] or k != s or tuple(proj.padding) != (0, 0) or tuple(proj.dilation) != (1, 1) \
                    or proj.groups != 1:
                self.refuse(f"a patch embedding conv with kernel {k}, stride {s}, padding {proj.padding} (square "
                            "patches with kernel == stride are fused)")
            if not _is_identity(getattr(patch_embed, "norm", None)):
                self.refuse("a norm inside the patch embedding (embed_norm_layer)")
            self.fields.update(stem="linear", patch_size=k[0], in_chans=proj.in_channels, embed_dim=proj.out_channels,
                               patch_bias=proj.bias is not None)
        elif isinstance(proj, nn.Sequential):
            self.hmlp(proj)
        else:
            self.refuse(f"the patch embedding {_qualname(patch_embed)} (a conv patch embedding or the hMLP stem are "
                        "fused)")
            return
        size = getattr(patch_embed, "img_size", None)
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        if size[0] is None:
            self.refuse("a patch embedding without a fixed image size")
        elif size[0] != size[1]:
            self.refuse(f"a non-square image size {size}")
        else:
            self.fields["img_size"] = int(size[0])

    def hmlp(self, proj: nn.Sequential) -> None:
        layers = list(proj)
        kinds = [_name(m) for m in layers]
        convs = [layers[i] for i in (0, 3, 6)] if len(layers) == 8 else []
        if len(layers) != 8 or not all(isinstance(c, nn.Conv2d) for c in convs) \
                or not all(_exact_gelu(layers[i]) for i in (2, 5)) \
                or [tuple(c.kernel_size) for c in convs] != [(4, 4), (2, 2), (2, 2)] \
                or [tuple(c.stride) for c in convs] != [(4, 4), (2, 2), (2, 2)]:
            self.refuse(f"a patch embedding Sequential {kinds} that is not the hMLP stem (conv4, norm, GELU, conv2, "
                        "norm, GELU, conv2, norm)")
            return
        norms = [layers[i] for i in (1, 4, 7)]
        if all(isinstance(n, nn.modules.batchnorm._BatchNorm) for n in norms):
            stem, eps = "hmlp_bn", 1e-5
            if any(not n.affine or not n.track_running_stats for n in norms):
                self.refuse("an hMLP BatchNorm without affine parameters or running statistics")
        elif all(isinstance(n, nn.LayerNorm) for n in norms):
            stem, eps = "hmlp_ln", 1e-6
        else:
            self.refuse(f"hMLP norms {[_name(n) for n in norms]} (BatchNorm / SyncBatchNorm or a channel LayerNorm "
                        "are fused)")
            return
        if any(float(n.eps) != eps for n in norms):
            self.refuse(f"hMLP norms with eps {[float(n.eps) for n in norms]} (the fused stem uses {eps})")
        self.fields.update(stem=stem, patch_size=16, in_chans=convs[0].in_channels, embed_dim=convs[2].out_channels,
                           patch_bias=True)

    def dropout(self) -> None:
        if not self.module.training:
            return
        for name, m in self.module.named_modules():
            p = getattr(m, "p", None) if _name(m) == "Dropout" else getattr(m, "drop_prob", getattr(m, "prob", None))
            if _name(m) in _DROPOUT_TYPES and m.training and p:
                self.refuse(f"{_name(m)}(p={p}) at {name or 'the model'} is active in train mode (call .eval(): "
                            "the fused model is inference-only)")
        rate = getattr(self.module, "dropout_rate", 0.0)
        if rate:
            self.refuse(f"head dropout {rate} is active in train mode (call .eval())")


def _exact_gelu(act) -> bool:
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    # timm.layers.activations.GELU calls F.gelu(x) with the default (erf) form
    return _name(act) == "GELU" and type(act).__module__.startswith("timm.") and \
        getattr(act, "approximate", "none") == "none"


def read_module(module: nn.Module) -> tuple[ViTConfig, dict, str]:
    """(config, state_dict, layout) reproducing `module` exactly; ValueError naming every feature that cannot be
    fused; TypeError for a module that is not a ViT this package knows."""
    kind = module_kind(module)
    if kind is None:
        raise TypeError(f"convert expects a threethings_fast VisionTransformer, a timm VisionTransformer / "
                        f"VisionTransformerDistilled, deit's vit_models, or a state dict; got {_qualname(module)}")
    if kind == "ours":
        return module.config, module.state_dict(), "timm"
    reader = _Reader(module)
    reader.dropout()
    if kind == "timm":
        fields = _read_timm(module, reader)
    else:
        fields = _read_deit(module, reader)
    if len(reader.eps) > 1:
        reader.refuse(f"LayerNorms with different eps {sorted(reader.eps)}")
    reader.check()
    fields["norm_eps"] = reader.eps.pop() if reader.eps else 1e-6
    return ViTConfig(**fields), module.state_dict(), ("timm" if kind == "timm" else "deit")


def _common_fields(reader: _Reader, module) -> dict:
    f = reader.fields
    width = f["embed_dim"]
    if f.get("num_heads") is None:
        raise ValueError(f"cannot convert {_qualname(module)}: no transformer blocks")
    mlp_ratio = f["mlp_hidden"] / width
    head = module.head
    if isinstance(head, nn.Linear):
        num_classes = head.out_features
        if head.in_features != width or head.bias is None:
            reader.refuse(f"a head {head} that is not Linear({width}, C) with bias")
    elif _is_identity(head):
        num_classes = 0
    else:
        reader.refuse(f"a head {_qualname(head)} (a Linear head is fused)")
        num_classes = 0
    return dict(img_size=f["img_size"], patch_size=f["patch_size"], in_chans=f["in_chans"], embed_dim=width,
                depth=len(module.blocks), num_heads=f["num_heads"], mlp_ratio=mlp_ratio,
                num_parallel=f["num_parallel"], init_values=1e-5 if f["layer_scale"] else None,
                qkv_bias=f["qkv_bias"], stem=f["stem"], num_classes=num_classes, patch_bias=f["patch_bias"])


def _read_blocks(module, reader: _Reader, read_block) -> None:
    width = reader.fields.get("embed_dim")
    if width is None:
        return
    for i, block in enumerate(module.blocks):
        read_block(block, f"blocks.{i}", width)


def _read_timm(module, reader: _Reader) -> dict:
    reader.stem(module.patch_embed)
    if getattr(module, "pos_embed", None) is None:
        reader.refuse("no position embedding (pos_embed='none')")
    if getattr(module, "attn_pool", None) is not None:
        reader.refuse(f"attention pooling ({_name(module.attn_pool)}, global_pool="
                      f"{getattr(module, 'global_pool', None)!r})")
    pool = getattr(module, "global_pool", "token")
    if pool not in ("token", "avg") and getattr(module, "attn_pool", None) is None:
        reader.refuse(f"global_pool={pool!r} (token and avg pooling are fused)")
    if getattr(module, "pool_include_prefix", False):
        reader.refuse("pool_include_prefix=True (average pooling over the prefix tokens too)")
    pre_norm = reader.layer_norm(getattr(module, "norm_pre", None), "norm_pre", optional=True)
    has_norm = reader.layer_norm(getattr(module, "norm", None), "norm", optional=True)
    has_fc_norm = reader.layer_norm(getattr(module, "fc_norm", None), "fc_norm", optional=True)
    if has_norm and has_fc_norm:
        reader.refuse("both a final norm and fc_norm")
    _read_blocks(module, reader, reader.timm_block)
    reader.check()
    distilled = _name(module) == "VisionTransformerDistilled"
    if distilled and getattr(module, "distilled_training", False) and module.training:
        reader.refuse("distilled_training in train mode (returns two outputs)")
    if distilled and isinstance(module.head, nn.Linear) and not isinstance(getattr(module, "head_dist", None),
                                                                            nn.Linear):
        reader.refuse(f"a distillation head {_qualname(module.head_dist)}")
    reg = getattr(module, "reg_token", None)
    fields = _common_fields(reader, module)
    fields.update(
        class_token=getattr(module, "cls_token", None) is not None, distilled=distilled,
        reg_tokens=int(reg.shape[1]) if reg is not None else 0,
        no_embed_class=bool(getattr(module, "no_embed_class", False)),
        pre_norm=pre_norm, global_pool=pool if pool in ("token", "avg") else "token",
        fc_norm=None if has_fc_norm == (pool == "avg") else has_fc_norm, final_norm=has_norm or has_fc_norm,
    )
    if distilled and has_fc_norm:
        reader.refuse("fc_norm in a distilled model (timm's DeiT head does not apply it)")
    return fields


def _read_deit(module, reader: _Reader) -> dict:
    reader.stem(module.patch_embed)
    reader.layer_norm(module.norm, "norm")
    _read_blocks(module, reader, reader.deit_block)
    reader.check()
    grid = math.isqrt(module.pos_embed.shape[1])
    if grid * grid != module.pos_embed.shape[1] or grid * reader.fields["patch_size"] != reader.fields["img_size"]:
        reader.refuse(f"pos_embed of shape {tuple(module.pos_embed.shape)} for {reader.fields['img_size']} px "
                      "images")
    return _common_fields(reader, module)
