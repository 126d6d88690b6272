"""`convert`: reference model (or a timm/deit state dict) -> fused inference model."""
from __future__ import annotations

from typing import Mapping, Optional, Union

import torch

from .checkpoint import infer_config, load_state_dict
from .configs import ViTConfig, from_name
from .folding import fold_model
from .fused.backends import make_ops, resolve_backend
from .fused.model import FusedViT
from .reference.model import VisionTransformer
from .validation import concrete_device

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def convert(model: Union[VisionTransformer, Mapping], backend: str = "auto", *, dtype: Optional[torch.dtype] = None,
            device=None, config: Union[str, ViTConfig, None] = None, num_heads: Optional[int] = None,
            norm: str = "separate") -> FusedViT:
    """Fold a reference model into a fused inference model.

    model:   a `VisionTransformer` from `create_model`, or a timm/deit-layout state dict (then `config` — a name or a
             ViTConfig — describes the model, else it is inferred from the shapes with head_dim 64 unless
             `num_heads` is given).
    backend: "auto" (Triton on CUDA when triton is installed, else torch), "torch", "triton", "cuda".
    dtype, device: of the fused model; default the model's. Inputs must then be of that dtype and device.
    norm:    "separate" (default: a normalisation kernel writes x̂ for the QKV and fc1 GEMMs, 7 launches per block)
             or "fused" (Triton backend only: the residual GEMMs write per-row statistics of their output and the
             QKV / fc1 GEMMs apply the LayerNorm in their epilogue, 5 launches per block, no x̂ in memory). Which
             is faster is for the GPU benchmark to say (bench/notes/normalize.md); both give the same outputs within
             the dtype's rounding.
    BatchNorm in an hMLP stem is folded with its running statistics (eval semantics) whatever mode `model` is in.
    """
    if isinstance(model, Mapping):
        if config is None:
            config = infer_config(model, num_heads=num_heads)
        elif isinstance(config, str):
            config = from_name(config)
        reference = VisionTransformer(config).to(torch.float64)
        load_state_dict(reference, model)
        model = reference
    elif not isinstance(model, VisionTransformer):
        raise TypeError(f"convert expects a threethings_fast VisionTransformer or a state dict, got "
                        f"{type(model).__name__}; timm/deit modules: pass their .state_dict()")
    param = model.cls_token
    dtype = dtype or param.dtype
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be one of {_DTYPES}, got {dtype}")
    device = concrete_device(device) if device is not None else param.device
    backend = resolve_backend(backend, device)
    ops = make_ops(backend, norm)
    weights = ops.prepare(fold_model(model), dtype, device)
    return FusedViT(weights, ops, dtype, device)
