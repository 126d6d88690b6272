"""timm interop for gMLP: read a timm `MlpMixer(block_layer=SpatialGatingBlock, mlp_layer=GatedMlp)` into a config,
build the reference from it, export back.

    read_timm(module)  -> GMLPConfig        every size and eps read from the module; ValueError names anything the
                                            reference cannot reproduce (another norm, activation, pooling, ...)
    from_timm(module)  -> GMLP              timm's state dict loaded with strict=True, module's dtype/device, eval
    export_timm(model) -> state dict        loads with strict=True into the timm model (linear stem)
"""
from __future__ import annotations

import torch
from torch import nn

from .._layers import (check_timm_mlp, export_state_dict, layer_norm_eps, load_from_timm, read_timm_common,
                       same_value)
from .config import GMLPConfig
from .reference import GMLP


def read_timm(module: nn.Module) -> GMLPConfig:
    """GMLPConfig of a timm gMLP (gmlp_ti16_224, gmlp_s16_224, gmlp_b16_224, ...)."""
    fields = read_timm_common(module, "SpatialGatingBlock", "gMLP")
    d, n = fields["embed_dim"], module.stem.num_patches
    eps, gate_eps, ffn = [], [], []
    for i, block in enumerate(module.blocks):
        where = f"gMLP blocks.{i}"
        eps.append(layer_norm_eps(block.norm, d, where + ".norm"))
        mlp = block.mlp_channels
        d_in, f = check_timm_mlp(mlp, where + ".mlp_channels", mlp_class="GatedMlp")
        gate = mlp.gate
        if type(gate).__name__ != "SpatialGatingUnit":
            raise ValueError(f"{where}.mlp_channels.gate: {type(gate).__name__} is not supported (timm's "
                             "SpatialGatingUnit)")
        gate_eps.append(layer_norm_eps(gate.norm, f // 2, where + ".mlp_channels.gate.norm"))
        proj = gate.proj
        if type(proj) is not nn.Linear or (proj.in_features, proj.out_features) != (n, n) or proj.bias is None:
            raise ValueError(f"{where}.mlp_channels.gate.proj: expected nn.Linear({n}, {n}) with bias, got {proj}")
        if d_in != d or mlp.fc2.in_features != f // 2 or mlp.fc2.out_features != d:
            raise ValueError(f"{where}.mlp_channels: fc1 {d_in} -> {f}, fc2 {mlp.fc2.in_features} -> "
                             f"{mlp.fc2.out_features}; expected {d} -> F and F/2 -> {d}")
        ffn.append(f)
    eps.append(layer_norm_eps(module.norm, d, "gMLP norm"))
    return GMLPConfig(**fields, ffn_dim=same_value(ffn, "ffn_dim", "gMLP"),
                      norm_eps=same_value(eps, "LayerNorm eps", "gMLP"),
                      gate_norm_eps=same_value(gate_eps, "gate LayerNorm eps", "gMLP"))


def from_timm(module: nn.Module) -> GMLP:
    """Reference GMLP equal to the timm module (its state dict loaded strictly)."""
    return load_from_timm(GMLP, read_timm(module), module)


def export_timm(model: GMLP) -> dict[str, torch.Tensor]:
    """State dict of a linear-stem reference GMLP in timm's layout (identical names); ValueError otherwise."""
    return export_state_dict(model, GMLP, "gMLP")
