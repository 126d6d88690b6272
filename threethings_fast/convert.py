"""`convert`: a model the user already has (ours, timm's, deit's) or a state dict -> fused inference model."""
from __future__ import annotations

import importlib
import os
from typing import Mapping, Optional, Union

import torch
from torch import nn

from .checkpoint import CheckpointError, check_finite, infer_config, load_state_dict, read_checkpoint, unwrap
from .configs import ViTConfig, from_name
from .models.vit.folding import fold_model
from .fused.backends import make_ops, resolve_backend
from .fused.model import FusedModel, FusedViT
from .interop import read_module
from .models import FAMILIES, family_of, resolve_any
from .reference.model import VisionTransformer
from .validation import concrete_device

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def convert(model: Union[nn.Module, Mapping, str, os.PathLike], backend: str = "auto", *,
            dtype: Optional[torch.dtype] = None, device=None, config=None, num_heads: Optional[int] = None,
            norm: str = "separate", allow_nonfinite: bool = False) -> FusedModel:
    """Fold a model into a fused inference model with the same outputs.

    model:   one of
             - a `VisionTransformer` from `create_model`;
             - a timm `VisionTransformer` (sequential or ParallelThingsBlock blocks; class / register /
               distillation tokens, no_embed_class, norm_pre, token or average pooling with fc_norm) or
               `VisionTransformerDistilled`;
             - the official deit `vit_models` (models_v2: LayerScale and parallel blocks, hMLP stem with BatchNorm or
               SyncBatchNorm);
             - a timm/deit-layout state dict, or the path of a checkpoint file holding one (read with
               weights_only=True: `read_checkpoint`). A state dict does not store the number of heads: give
               `num_heads` (the rest is read from its keys and shapes, see `infer_config`) or a `config` (name or
               ViTConfig).
             - an MLP-family model: this package's MLP-Mixer, ResMLP, gMLP, Vision Permutator or feed-forward-only
               reference (`create_model("mixer_b16_224")`, K-parallel variants included), timm's `MlpMixer` of the
               first three families, or a state dict in the family's layout (timm's; the official one for ViP and
               feed-forward-only) with `config` set to the family's name or config. The result is a `FusedModel`
               (a `FusedViT` for ViTs); the C++ engine is ViT-only.
             Modules are read exactly (heads, eps, patch size, tokens, pooling, stem); anything the fused path cannot
             reproduce (qk-norm, SwiGLU, a tanh GELU, attention pooling, a custom block, dropout active in train
             mode, ...) raises ValueError naming it.
    backend: "auto": on an sm_90 GPU the C++ engine for batches up to 8 and the Triton kernels above (after a
             one-batch self-check of the engine against Triton); on other GPUs Triton; on the CPU torch.
             "torch", "triton", or "cuda" (the C++ engine alone: one op per forward; on the CPU its ATen
             implementation, for tests). The fused model's repr names what runs.
    dtype, device: of the fused model; default those of the model (a state dict: its floating dtype, the CPU).
             Inputs must then be of that dtype and device.
    norm:    "separate" (default: a normalisation kernel writes x̂ for the QKV and fc1 GEMMs, 7 launches per block)
             or "fused" (Triton backend only: the residual GEMMs write per-row statistics of their output and the
             QKV / fc1 GEMMs apply the LayerNorm in their epilogue, 5 launches per block, no x̂ in memory). The MLP
             families the same way; their token GEMMs over a LayerNorm'd input (Mixer's token mixing, gMLP's
             gate) normalise the rows in their main loop. Which is faster is for the GPU benchmark to say
             (bench/notes/normalize.md, bench/notes/token_linear.md); both give the same outputs within the
             dtype's rounding.
    allow_nonfinite: load weights holding NaN / Inf (refused by default: CheckpointError naming the tensors).
    BatchNorm in an hMLP stem is folded with its running statistics (eval semantics) whatever mode `model` is in.
    """
    if isinstance(model, (str, os.PathLike)):
        model = read_checkpoint(model)
    family_model = _family_reference(model, config, num_heads, allow_nonfinite)
    if family_model is not None:
        return _convert_family(family_model, backend, dtype, device, norm, allow_nonfinite)
    if isinstance(model, Mapping):
        reference = _reference_from_state_dict(model, config, num_heads, allow_nonfinite)
        default_dtype, default_device = _state_dict_dtype(model), torch.device("cpu")
    else:
        if config is not None or num_heads is not None:
            raise TypeError("config / num_heads describe a state dict; a module carries its own architecture")
        reference = _reference_from_module(model, allow_nonfinite)
        default_dtype, default_device = reference.pos_embed.dtype, reference.pos_embed.device
    dtype = dtype or default_dtype
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be one of {_DTYPES}, got {dtype}")
    device = concrete_device(device) if device is not None else default_device
    requested = backend
    backend = resolve_backend(backend, device)
    if backend == "hybrid" and (dtype not in (torch.bfloat16, torch.float16) or _engine_problem(reference, dtype)):
        backend = "triton"       # auto: the engine only where its kernels run this model
    if requested == "auto" and backend == "triton" and (dtype == torch.float64 or not _triton_runs(reference)):
        backend = "torch"        # auto: plain torch ops where the Triton kernels cannot run the model
    ops = make_ops(backend, norm)
    weights = ops.prepare(fold_model(reference), dtype, device)
    if backend == "hybrid" and requested == "auto":
        ops.self_check(weights)
    return FusedViT(weights, ops, dtype, device)


def _family_reference(model, config, num_heads, allow_nonfinite: bool) -> Optional[nn.Module]:
    """The reference model of a non-ViT family that `model` (+ `config`) describes, or None for the ViT paths.
    Modules: this package's MLP-family references, timm's MlpMixer (Mixer, ResMLP, gMLP blocks). State dicts: a
    family config or name given as `config`, keys in the family's (timm-compatible) layout."""
    if isinstance(model, nn.Module):
        family = _module_family(model)
        if family is None or family.name == "vit":
            return None
        if config is not None or num_heads is not None:
            raise TypeError("config / num_heads describe a state dict; a module carries its own architecture")
        if isinstance(model, family.reference_type()):
            return model
        return importlib.import_module(f"threethings_fast.models.{family.name}.interop").from_timm(model)
    if not isinstance(model, Mapping) or config is None or isinstance(config, ViTConfig):
        return None
    if isinstance(config, str):
        try:
            from_name(config)
            return None                       # a ViT name
        except KeyError:
            config = resolve_any(config)
    family = family_of(config)
    if num_heads is not None:
        raise TypeError(f"num_heads describes a ViT; a {family.title} config carries its whole architecture")
    sd = unwrap(model)
    with torch.device("meta"):
        reference = family.reference_type()(config)
    reference = reference.to_empty(device=torch.device("cpu")).to(_widest_dtype(sd))
    if not allow_nonfinite:
        check_finite(sd, "the state dict")
    try:
        reference.load_state_dict(dict(sd), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the state dict does not match {family.title} {config}: {exc}") from exc
    return reference.eval()


def _module_family(model: nn.Module):
    try:
        return family_of(model)
    except TypeError:
        pass
    if type(model).__name__ == "MlpMixer" and type(model).__module__.startswith("timm."):
        block = type(model.blocks[0]).__name__ if len(model.blocks) else ""
        name = _TIMM_MLP_BLOCKS.get(block)
        if name is None:
            raise ValueError(f"timm MlpMixer with {block or 'no'} blocks: only MixerBlock (MLP-Mixer), ResBlock "
                             f"(ResMLP) and SpatialGatingBlock (gMLP) have a fused path")
        return FAMILIES[name]
    return None


_TIMM_MLP_BLOCKS = {"MixerBlock": "mixer", "ResBlock": "resmlp", "SpatialGatingBlock": "gmlp"}


def _convert_family(reference: nn.Module, backend: str, dtype, device, norm: str, allow_nonfinite: bool):
    """convert() for the MLP families: fold, pack for the backend, wrap in a FusedModel."""
    family = family_of(reference)
    if not family.fusable:
        raise NotImplementedError(f"{family.title}: this package has its reference model only, no fused path yet; "
                                  f"run the reference model ({type(reference).__name__}) itself")
    if not allow_nonfinite:
        check_finite(reference.state_dict(), "the model")
    param = next(reference.parameters())
    dtype = dtype or param.dtype
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be one of {_DTYPES}, got {dtype}")
    device = concrete_device(device) if device is not None else param.device
    requested = backend
    if requested == "cuda":
        raise ValueError(f"backend='cuda' (the C++ engine) runs ViTs only; use backend='triton' or 'torch' for "
                         f"{family.title}")
    backend = resolve_backend(backend, device)
    if backend == "hybrid":
        backend = "triton"
    if backend == "triton" and dtype == torch.float64:
        if requested == "triton":
            raise TypeError("the Triton backend runs float16, bfloat16 or float32; use backend='torch' for float64")
        backend = "torch"
    ops = make_ops(backend, norm)    # norm="fused" on the torch backend: a ValueError naming the Triton backend
    weights = family.folder()(reference).pack(ops, dtype, device)
    refresh = getattr(ops, "refresh", None)
    if refresh is not None:   # what the backend derives from the packed weights (Triton norm="fused": column sums)
        refresh(weights)
    return FusedModel(weights, ops, dtype, device, family)


def _triton_runs(reference: VisionTransformer) -> bool:
    from . import triton_kernels
    return reference.config.head_dim in triton_kernels.SUPPORTED_HEAD_DIMS


def _engine_problem(reference: VisionTransformer, dtype: torch.dtype) -> str:
    """Why the engine's CUDA kernels cannot run `reference` in `dtype` ("" when they can)."""
    from .fused.ops_engine import EngineOps
    return EngineOps.config_problem(reference.config, dtype)


def _reference_from_module(module: nn.Module, allow_nonfinite: bool) -> VisionTransformer:
    if isinstance(module, VisionTransformer):
        if not allow_nonfinite:
            check_finite(module.state_dict(), "the model")
        return module
    config, state_dict, layout = read_module(module)
    dtype = next((t.dtype for t in state_dict.values() if t.is_floating_point()), torch.float32)
    return _reference_holding(config, state_dict, layout, dtype, module_device(state_dict), allow_nonfinite)


def _reference_from_state_dict(state_dict: Mapping, config, num_heads: Optional[int],
                               allow_nonfinite: bool) -> VisionTransformer:
    if config is None:
        config = infer_config(state_dict, num_heads=num_heads)
    else:
        if isinstance(config, str):
            config = from_name(config)
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a model name or a ViTConfig, got {type(config).__name__}")
        if num_heads is not None and num_heads != config.num_heads:
            raise ValueError(f"num_heads={num_heads} contradicts config.num_heads={config.num_heads}")
    return _reference_holding(config, state_dict, None, _widest_dtype(state_dict), torch.device("cpu"),
                              allow_nonfinite)


def _reference_holding(config: ViTConfig, state_dict: Mapping, layout: Optional[str], dtype: torch.dtype,
                       device: torch.device, allow_nonfinite: bool) -> VisionTransformer:
    """A reference model of `config` holding exactly the values of `state_dict` (in `dtype`, wide enough for every
    tensor), built without random initialisation."""
    with torch.device("meta"):
        reference = VisionTransformer(config)
    reference = reference.to_empty(device=device).to(dtype)
    load_state_dict(reference, state_dict, layout, allow_nonfinite=allow_nonfinite)
    return reference.eval()


def module_device(state_dict: Mapping) -> torch.device:
    return next((t.device for t in state_dict.values()), torch.device("cpu"))


def _floating(state_dict: Mapping) -> list[torch.dtype]:
    return [t.dtype for t in unwrap(state_dict).values() if t.is_floating_point()]


def _state_dict_dtype(state_dict: Mapping) -> torch.dtype:
    """The state dict's dtype: that of its floating tensors when they agree, else that of pos_embed."""
    dtypes = set(_floating(state_dict))
    if not dtypes:
        raise CheckpointError("the state dict holds no floating-point tensors")
    if len(dtypes) == 1:
        return dtypes.pop()
    return unwrap(state_dict)["pos_embed"].dtype


def _widest_dtype(state_dict: Mapping) -> torch.dtype:
    """A dtype every floating tensor of the state dict converts to exactly."""
    dtypes = set(_floating(state_dict))
    if not dtypes:
        raise CheckpointError("the state dict holds no floating-point tensors")
    widest = dtypes.pop()
    for d in dtypes:
        widest = torch.promote_types(widest, d)
    if widest in (torch.float16, torch.bfloat16) and dtypes:
        widest = torch.float32   # fp16 and bf16 together: neither holds the other exactly
    return widest
