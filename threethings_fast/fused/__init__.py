"""Fused inference models: folded weights executed by a backend (torch, triton)."""
from .model import FusedViT
from .weights import FusedWeights

__all__ = ["FusedViT", "FusedWeights"]
