"""Feed-forward-only ViT (Melas-Kyriazi 2021): config, plain-PyTorch reference, MAC count, official layout."""
from .config import MODEL_TABLE, TINY_TABLE, FFOnlyConfig, from_name, list_models, resolve_name
from .layout import export_official, load_official
from .macs import count_macs, forward_flops
from .reference import FeedForwardBlock, FFOnly, LearnedPositionalEncoding, create_reference

__all__ = ["FFOnlyConfig", "MODEL_TABLE", "TINY_TABLE", "from_name", "list_models", "resolve_name", "FFOnly",
           "FeedForwardBlock", "LearnedPositionalEncoding", "create_reference", "count_macs", "forward_flops",
           "load_official", "export_official"]
