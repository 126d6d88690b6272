"""threethings_fast: fused-kernel inference for the ViTs of "Three things everyone should know about Vision
Transformers" (Touvron et al., ECCV 2022).

    import threethings_fast as ttf
    model = ttf.create_model("vit_small_patch16_18x2_224")   # reference model (random init)
    ttf.load_state_dict(model, state_dict)                   # deit or timm layout, auto-detected
    sd = ttf.export_state_dict(model, layout="timm")         # or "deit"
    fused = ttf.convert(model)                               # folded inference model
    logits = fused(images)
"""
from .api import create_model
from .checkpoint import CheckpointError, detect_layout, export_state_dict, infer_config, load_state_dict
from .configs import ViTConfig, from_name, list_models
from .convert import convert
from .fused import FusedViT
from .macs import count_macs

__version__ = "0.1.0"

__all__ = ["ViTConfig", "from_name", "list_models", "create_model", "load_state_dict", "export_state_dict",
           "detect_layout", "infer_config", "CheckpointError", "convert", "FusedViT", "count_macs"]
