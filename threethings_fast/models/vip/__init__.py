"""Vision Permutator (Hou et al., TPAMI 2022): config, plain-PyTorch reference, MAC count, official layout."""
from .config import MODEL_TABLE, TINY_TABLE, ViPConfig, from_name, list_models, resolve_name
from .layout import export_official, load_official
from .macs import count_macs, forward_flops
from .reference import (Downsample, PatchEmbed, PermuteMLP, PermutatorBlock, ReweightMlp, VisionPermutator,
                        create_reference)

__all__ = ["ViPConfig", "MODEL_TABLE", "TINY_TABLE", "from_name", "list_models", "resolve_name", "VisionPermutator",
           "PermuteMLP", "PermutatorBlock", "ReweightMlp", "PatchEmbed", "Downsample", "create_reference",
           "count_macs", "forward_flops", "load_official", "export_official"]
