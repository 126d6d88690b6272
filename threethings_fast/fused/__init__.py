"""Fused inference models: folded weights executed by a backend (torch, triton)."""
from .model import FusedModel, FusedViT
from .weights import FusedWeights, PackedModel

__all__ = ["FusedModel", "FusedViT", "FusedWeights", "PackedModel"]
