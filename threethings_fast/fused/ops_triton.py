"""The Triton backend: the fused forward (threethings_fast.fused.forward) on the Triton kernels of
threethings_fast.triton_kernels. Per block: normalize, linear (QKV), attention over K*H heads, linear (+residual),
normalize, linear (+GELU), linear (+residual) — 7 launches whatever K is; the stem is one launch (class token and
positions fused). Launchers never sync with the host, so a whole forward can be captured in a CUDA graph
(threethings_fast.fused.graphs)."""
from __future__ import annotations

import torch

from .weights import FusedWeights, cast_common


class TritonOps:
    name = "triton"

    def __init__(self):
        from .. import triton_kernels as tk  # import here: triton is optional for the rest of the package
        self.tk = tk

    def prepare(self, folded: dict, dtype: torch.dtype, device) -> FusedWeights:
        if dtype == torch.float64:
            raise TypeError("the Triton backend runs float16, bfloat16 or float32; use backend='torch' for float64")
        stem = folded["stem"]
        if stem["kind"] == "linear":
            prepared = {"kind": "linear", "patch": stem["patch"],
                        "weight": stem["weight"].to(dtype=dtype, device=device).contiguous(),
                        "bias": stem["bias"].to(dtype=torch.float32, device=device).contiguous()}
        else:
            prepared = {"kind": stem["kind"], "packed": self.tk.prepare_hmlp_stem(stem, dtype, device)}
        common = cast_common(folded, dtype, device)
        return FusedWeights(config=folded["config"], stem=prepared, **common,
                            extras={"cls_row": common["cls_pos"].reshape(-1)})

    def embed(self, images: torch.Tensor, weights: FusedWeights) -> torch.Tensor:
        stem = weights.stem
        cls = weights.extras["cls_row"]            # class token + its position, written at token 0 in-kernel
        if stem["kind"] == "linear":
            return self.tk.patch_embed(images, stem["weight"], stem["bias"], pos=weights.pos_patches, cls=cls,
                                       patch_size=stem["patch"])
        return self.tk.hmlp_stem(images, stem["packed"], pos=weights.pos_patches, cls=cls)

    def normalize(self, x, eps):
        return self.tk.normalize(x, eps)

    def linear(self, x, w, b, activation=None, residual=None, workspace=None):
        # `workspace` is ignored: the CUDA caching allocator recycles blocks without cost, and a CUDA graph
        # (fused.graphs) fixes every buffer anyway.
        return self.tk.linear(x, w, b, residual=residual, activation=activation)

    def attention(self, qkv, num_heads, head_dim):
        return self.tk.attention(qkv, num_heads, head_dim, 1.0)
