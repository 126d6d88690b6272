"""gMLP (Liu et al. 2021): config, reference model, MACs and timm interop side by side."""
from .config import ALIASES, MODEL_TABLE, TINY_TABLE, GMLPConfig, from_name, list_models, resolve_name
from .interop import export_timm, from_timm, read_timm
from .macs import count_macs
from .reference import GMLP, GatedMlp, SpatialGatingBlock, SpatialGatingUnit

__all__ = ["ALIASES", "MODEL_TABLE", "TINY_TABLE", "GMLPConfig", "from_name", "list_models", "resolve_name",
           "export_timm", "from_timm", "read_timm", "count_macs", "GMLP", "GatedMlp", "SpatialGatingBlock",
           "SpatialGatingUnit"]
