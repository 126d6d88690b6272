"""timm interop for ResMLP: read a timm `MlpMixer(block_layer=ResBlock, norm_layer=Affine)` into a config, build the
reference from it, export back.

    read_timm(module)  -> ResMLPConfig      every size read from the module; ValueError names anything the
                                            reference cannot reproduce (another norm, activation, pooling, ...)
    from_timm(module)  -> ResMLP            timm's state dict loaded with strict=True, module's dtype/device, eval
    export_timm(model) -> state dict        loads with strict=True into the timm model (K = 1, linear stem)

init_values: the LayerScale init cannot be read back from a trained model. When every ls1 / ls2 entry of the module
holds one value (a freshly built model) that value is used (timm builds resmlp_12_224 with 1e-4, the paper 0.1);
otherwise the paper's value for the depth (`paper_init_values`). It changes nothing once weights are loaded.
"""
from __future__ import annotations

import torch
from torch import nn

from .._layers import check_timm_mlp, export_state_dict, load_from_timm, read_timm_common, same_value
from .config import ResMLPConfig, paper_init_values
from .reference import ResMLP


def _check_affine(norm: nn.Module, dim: int, where: str) -> None:
    alpha, beta = getattr(norm, "alpha", None), getattr(norm, "beta", None)
    if type(norm).__name__ != "Affine" or not isinstance(alpha, torch.Tensor) or not isinstance(beta, torch.Tensor):
        raise ValueError(f"{where}: norm layer {type(norm).__name__} is not supported (timm's Affine)")
    if tuple(alpha.shape) != (1, 1, dim) or tuple(beta.shape) != (1, 1, dim):
        raise ValueError(f"{where}: Affine alpha {tuple(alpha.shape)} / beta {tuple(beta.shape)}, expected "
                         f"(1, 1, {dim})")


def read_timm(module: nn.Module) -> ResMLPConfig:
    """ResMLPConfig of a timm ResMLP (resmlp_12_224, resmlp_24_224, resmlp_36_224, resmlp_big_24_224, ...)."""
    fields = read_timm_common(module, "ResBlock", "ResMLP")
    d, n = fields["embed_dim"], module.stem.num_patches
    channels, scales = [], []
    for i, block in enumerate(module.blocks):
        where = f"ResMLP blocks.{i}"
        _check_affine(block.norm1, d, where + ".norm1")
        _check_affine(block.norm2, d, where + ".norm2")
        lt = block.linear_tokens
        if type(lt) is not nn.Linear or (lt.in_features, lt.out_features) != (n, n) or lt.bias is None:
            raise ValueError(f"{where}.linear_tokens: expected nn.Linear({n}, {n}) with bias, got {lt}")
        d_in, c = check_timm_mlp(block.mlp_channels, where + ".mlp_channels")
        if d_in != d:
            raise ValueError(f"{where}.mlp_channels: over {d_in} channels, expected {d}")
        for ls in ("ls1", "ls2"):
            if tuple(getattr(block, ls).shape) != (d,):
                raise ValueError(f"{where}.{ls}: shape {tuple(getattr(block, ls).shape)}, expected ({d},)")
        channels.append(c)
        scales += [block.ls1.detach(), block.ls2.detach()]
    _check_affine(module.norm, d, "ResMLP norm")
    init_values = _constant_value(scales)
    if init_values is None:
        init_values = paper_init_values(fields["depth"], fields["embed_dim"])
    return ResMLPConfig(**fields, channels_dim=same_value(channels, "channels_dim", "ResMLP"), init_values=init_values)


def _constant_value(tensors: list[torch.Tensor]) -> float | None:
    """The one value every element of `tensors` holds, as the shortest decimal that rounds to it in their dtype
    (1e-4, not float32's 9.99999975e-05); None when they differ or hold no data (meta tensors)."""
    first = tensors[0].reshape(-1)[0]
    if first.is_meta or not all(bool((t == first).all()) for t in tensors):
        return None
    value = float(first)
    # a float64 model converted from float32 weights (timm builds in float32) holds float32 values: round at float32
    dtype = first.dtype
    if dtype == torch.float64 and float(first.float()) == value:
        dtype = torch.float32
    for digits in range(1, 18):
        short = float(f"{value:.{digits}g}")
        if float(torch.tensor(short, dtype=dtype)) == value:
            return short
    return value


def from_timm(module: nn.Module) -> ResMLP:
    """Reference ResMLP equal to the timm module (its state dict loaded strictly)."""
    return load_from_timm(ResMLP, read_timm(module), module)


def export_timm(model: ResMLP) -> dict[str, torch.Tensor]:
    """State dict of a K = 1, linear-stem reference ResMLP in timm's layout (identical names); ValueError otherwise."""
    return export_state_dict(model, ResMLP, "ResMLP")
