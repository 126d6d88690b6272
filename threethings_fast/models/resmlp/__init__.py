"""ResMLP (Touvron et al. 2021): config, reference model, MACs and timm interop side by side."""
from .config import (ALIASES, MODEL_TABLE, PAPER_TABLE, TINY_TABLE, ResMLPConfig, from_name, list_models,
                     paper_init_values, resolve_name)
from .interop import export_timm, from_timm, read_timm
from .macs import count_macs
from .reference import ChannelMixingBranch, ResBlock, ResMLP, TokenMixingBranch

__all__ = ["ALIASES", "MODEL_TABLE", "PAPER_TABLE", "TINY_TABLE", "ResMLPConfig", "from_name", "list_models",
           "paper_init_values", "resolve_name", "export_timm", "from_timm", "read_timm", "count_macs",
           "ChannelMixingBranch", "ResBlock", "ResMLP", "TokenMixingBranch"]
