"""threethings_fast: fused-kernel inference for the ViTs of "Three things everyone should know about Vision
Transformers" (Touvron et al., ECCV 2022).

    import threethings_fast as ttf
    model = ttf.create_model("vit_small_patch16_18x2_224")   # reference model (random init)
    ttf.load_state_dict(model, state_dict)                   # deit or timm layout, auto-detected
    sd = ttf.export_state_dict(model, layout="timm")         # or "deit"
    fused = ttf.convert(model)                               # folded inference model
    mixer = ttf.create_model("mixer_b16_224")                # the MLP families too (threethings_fast.models)
    logits = fused(images)
"""
import os as _os

# Run from a source checkout without installing (PYTHONPATH=repo): map the top-level triton_kernels/ folder in as
# threethings_fast.triton_kernels, as an install does through setuptools' package-dir.
_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_ROOT, "pyproject.toml")) and _os.path.isdir(_os.path.join(_ROOT, "triton_kernels")):
    __path__.append(_ROOT)  # noqa: F821  (the package's own __path__)

from .api import create_model  # noqa: E402
from .checkpoint import (CheckpointError, detect_layout, export_state_dict, infer_config,  # noqa: E402
                         load_state_dict, read_checkpoint)
from .configs import ViTConfig, from_name, list_models  # noqa: E402
from .convert import convert  # noqa: E402
from .fused import FusedModel, FusedViT  # noqa: E402
from .macs import count_macs  # noqa: E402

__version__ = "0.1.0"

__all__ = ["ViTConfig", "from_name", "list_models", "create_model", "load_state_dict", "export_state_dict",
           "detect_layout", "infer_config", "read_checkpoint", "CheckpointError", "convert", "FusedModel", "FusedViT", "count_macs"]
