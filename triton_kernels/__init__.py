"""Triton kernels of threethings_fast (installed as ``threethings_fast.triton_kernels``).

Pure functions on tensors, one file per op. Each op is also registered with torch.library as ``torch.ops.ttf.<op>``
(via ``triton_op`` + ``wrap_triton``) so torch.compile and CUDA graphs can trace it.

    normalize(x, eps=1e-6, out_dtype=None)                                   -> ttf::normalize
    normalize_tokens(x, eps=1e-6)     (over the token axis of (B, N, D))     -> ttf::normalize_tokens
    row_stats(x) -> RowStats                                                  -> ttf::row_stats
    linear(x, weight, bias=None, residual=None, activation=None,
           out_dtype=None, allow_tf32=False,
           norm=None, colsum=None, eps=1e-6, return_stats=False)             -> ttf::linear, ttf::linear_stats
    attention(qkv, num_heads, head_dim, scale=1.0)                            -> ttf::attention
    patch_embed(images, weight, bias=None, pos=None, cls=None, ...)           -> ttf::patch_embed
    hmlp_stem(images, prepare_hmlp_stem(folded), pos=None, cls=None, ...)     -> ttf::hmlp_stem
    token_linear(x, w, bias=None, activation=None, scale=None, shift=None,
                 gate=None, residual=None, norm=None, eps=1e-6)               -> ttf::token_linear
    permute_projections(x, height_w, height_b, width_w, width_b,
                        channel_w, channel_b, segments)                       -> ttf::permute_projections

Each op module also keeps a plain PyTorch reference ``<op>_ref(..., upcast=False)`` used by tests and benchmarks.

Kernels run on CUDA tensors. CPU tensors are accepted only under the Triton interpreter: set ``TRITON_INTERPRET=1``
in the environment *before* importing this package (Triton reads it when the kernels are defined).

Importing this package without triton installed raises ImportError with an explanation (see ``_common``).
"""
from __future__ import annotations

try:
    import triton  # noqa: F401
except ImportError as exc:
    raise ImportError(
        "threethings_fast.triton_kernels needs the `triton` package (pip install 'triton>=3.0', or "
        "pip install 'threethings_fast[triton]'); it ships with CUDA builds of torch on Linux. Use the torch "
        f"backend of threethings_fast where Triton is unavailable. Original error: {exc}") from exc

from ._common import NAMESPACE, interpreter_active
from .attention import SUPPORTED_HEAD_DIMS, attention, attention_ref
from ._common import RowStats
from .linear import STAT_W, column_sums, linear, linear_ref
from .normalize import normalize, normalize_ref, normalize_tokens, normalize_tokens_ref, row_stats, row_stats_ref

from .hmlp_stem import HMLPStemWeights, hmlp_stem, hmlp_stem_ref, prepare_hmlp_stem
from .patch_embed import patch_embed, patch_embed_ref
from .token_linear import token_linear, token_linear_ref
from .permute_linear import permute_projections, permute_projections_ref

__all__ = [
    "NAMESPACE",
    "interpreter_active",
    "normalize",
    "normalize_ref",
    "normalize_tokens",
    "normalize_tokens_ref",
    "linear",
    "linear_ref",
    "column_sums",
    "STAT_W",
    "RowStats",
    "row_stats",
    "row_stats_ref",
    "attention",
    "attention_ref",
    "SUPPORTED_HEAD_DIMS",
    "HMLPStemWeights",
    "prepare_hmlp_stem",
    "hmlp_stem",
    "hmlp_stem_ref",
    "patch_embed",
    "patch_embed_ref",
    "token_linear",
    "token_linear_ref",
    "permute_projections",
    "permute_projections_ref",
]
