"""Plain-PyTorch reference models: the numerical oracle for every fused path."""
from .blocks import Attention, AttnBranch, Block, FFNBranch, LayerScale, Mlp
from .model import VisionTransformer, resize_pos_embed
from .stems import HMLPStem, LayerNorm2d, PatchEmbed, build_stem

__all__ = ["Attention", "AttnBranch", "Block", "FFNBranch", "LayerScale", "Mlp", "VisionTransformer",
           "resize_pos_embed", "HMLPStem", "LayerNorm2d", "PatchEmbed", "build_stem"]
