"""timm interop for MLP-Mixer: read a timm `MlpMixer` module into a config, build the reference from it, export back.

    read_timm(module)  -> MixerConfig                 every size read from the module; ValueError names anything the
                                                       reference cannot reproduce
    from_timm(module)  -> MlpMixer                    the reference, timm's state dict loaded with strict=True, in the
                                                       module's dtype and device, eval mode
    export_timm(model) -> dict[str, Tensor]           loads with strict=True into the timm model (K = 1, linear stem)

ResMLP and gMLP are the same timm class (`MlpMixer` with another block_layer); the three interop modules share the
readers of threethings_fast.models._layers (`read_timm_common`, `layer_norm_eps`, `check_timm_mlp`, ...).
"""
from __future__ import annotations

import torch
from torch import nn

from .._layers import (check_timm_mlp, export_state_dict, layer_norm_eps, load_from_timm, read_timm_common,
                       same_value)
from .config import MixerConfig
from .reference import MlpMixer


def read_timm(module: nn.Module) -> MixerConfig:
    """MixerConfig of a timm MlpMixer with MixerBlocks (mixer_s16_224, mixer_b16_224, ...)."""
    fields = read_timm_common(module, "MixerBlock", "MLP-Mixer")
    d, n = fields["embed_dim"], module.stem.num_patches
    eps, tokens, channels = [], [], []
    for i, block in enumerate(module.blocks):
        where = f"MLP-Mixer blocks.{i}"
        eps += [layer_norm_eps(block.norm1, d, where + ".norm1"), layer_norm_eps(block.norm2, d, where + ".norm2")]
        n_in, t = check_timm_mlp(block.mlp_tokens, where + ".mlp_tokens")
        d_in, c = check_timm_mlp(block.mlp_channels, where + ".mlp_channels")
        if n_in != n or d_in != d:
            raise ValueError(f"{where}: token MLP over {n_in} tokens / channel MLP over {d_in} channels, expected "
                             f"{n} / {d}")
        tokens.append(t)
        channels.append(c)
    eps.append(layer_norm_eps(module.norm, d, "MLP-Mixer norm"))
    return MixerConfig(**fields, tokens_dim=same_value(tokens, "tokens_dim", "MLP-Mixer"),
                       channels_dim=same_value(channels, "channels_dim", "MLP-Mixer"),
                       norm_eps=same_value(eps, "LayerNorm eps", "MLP-Mixer"))


def from_timm(module: nn.Module) -> MlpMixer:
    """Reference MlpMixer equal to the timm module (its state dict loaded strictly)."""
    return load_from_timm(MlpMixer, read_timm(module), module)


def export_timm(model: MlpMixer) -> dict[str, torch.Tensor]:
    """State dict of a K = 1, linear-stem reference MlpMixer in timm's layout (identical names); ValueError
    otherwise."""
    return export_state_dict(model, MlpMixer, "MLP-Mixer")
