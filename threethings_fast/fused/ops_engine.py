"""The "cuda" backend: the whole fused forward as one C++ op, `torch.ops.ttf.vit_forward` (csrc/). One Python -> C++
call per forward; on an sm_90 GPU its CUDA implementation runs CUTLASS GEMMs and the engine's kernels with
programmatic dependent launch, on the CPU its ATen implementation runs the same schedule (for tests).

This module packs the folded weights into the op's weight list and config (the layout of csrc/engine/engine.h):
- the block weights are the very tensors of FusedWeights (W (N, K) row-major is what the GEMMs read), so
  FusedViT.refold's in-place updates reach the engine;
- the linear stem's weight gets its columns zero-padded to a multiple of 8 (16-byte rows for TMA);
- the hMLP stem is three GEMMs over patch-local rows: w1 (E/4, C·16), then the 2×2 convolutions as w2 (E/4, 4·E/4)
  and w3 (E, 4·E/4) with columns ordered (kernel position, channel), matching the engine's row order;
- the head gets its rows padded to a multiple of 8 (padded rows are zero; the op returns the real ones).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.vit.folding import head_layout
from ..stem_fold import LinearStemFold, StemFold
from ..validation import check_image_dtype
from .weights import FusedWeights, cast_common

CONFIG_VERSION = 1
_STEM_KIND = {"linear": 0, "hmlp_bn": 1, "hmlp_ln": 2}
_POOL = {"token": 0, "avg": 1}
_HEAD_NORM = {"none": 0, "after": 1, "before": 2}


def _pad_columns(w: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    extra = -w.shape[1] % multiple
    return torch.nn.functional.pad(w, (0, extra)) if extra else w


def _conv2x2_as_gemm(w: torch.Tensor) -> torch.Tensor:
    """(O, C, 2, 2) -> (O, 4·C), columns (ky, kx, c): the 2×2 input rows of the engine's stage, concatenated."""
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)


@dataclass(frozen=True)
class EngineStem:
    """The stem as the engine's op takes it: `tensors` in the order of csrc/engine/engine.h, the LN stem's eps."""

    tensors: tuple
    eps: float = 1e-6


def pack_stem(stem: StemFold, dtype: torch.dtype, device) -> list[torch.Tensor]:
    """A float64 folded stem (`stem_fold.fold_stem`) -> the engine's stem tensors, in the run dtype."""
    def c(t):
        return t.to(dtype=dtype, device=device).contiguous()
    if isinstance(stem, LinearStemFold):
        return [c(_pad_columns(stem.weight)), c(stem.bias)]
    w1 = stem.w1
    tensors = [c(_pad_columns(w1.reshape(w1.shape[0], -1))), c(stem.b1), c(_conv2x2_as_gemm(stem.w2)),
               c(stem.b2), c(_conv2x2_as_gemm(stem.w3)), c(stem.b3)]
    if stem.norm == "ln":
        tensors += [c(t) for pair in zip(stem.ln_weights, stem.ln_biases) for t in pair]
    return tensors


def config_lists(cfg, head_out: int, stem_eps: float = 1e-6) -> tuple[list[int], list[float]]:
    """The op's int and float config lists (csrc/engine/engine.h) for a model of `cfg` whose folded head has
    `head_out` rows."""
    pool, norm, tokens = head_layout(cfg)
    ints = [CONFIG_VERSION, cfg.depth, cfg.num_parallel, cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_hidden,
            head_out, _STEM_KIND[cfg.stem], cfg.patch_size, cfg.img_size, cfg.in_chans, cfg.num_prefix_tokens,
            _POOL[pool], _HEAD_NORM[norm], tokens, int(cfg.pre_norm)]
    eps = [float(cfg.norm_eps), float(stem_eps) if cfg.stem == "hmlp_ln" else 0.0]
    return ints, eps


def engine_config(weights: FusedWeights, stem) -> tuple[list[int], list[float]]:
    """`stem`: an EngineStem or a folded stem (both carry the LN stem's eps; a linear stem has none)."""
    return config_lists(weights.config, weights.head_w.shape[0], getattr(stem, "eps", 1e-6))


class EngineOps:
    """Packs once (prepare), then one op call per forward (run). Owns one workspace per batch size for eager calls,
    so a model must not run two forwards at once (from two threads, or on two CUDA streams without an event
    between them)."""

    name = "cuda"
    runs_whole_forward = True

    def __init__(self):
        from ..extension import load_engine
        load_engine()
        self._workspace: dict[tuple, torch.Tensor] = {}

    def prepare(self, folded: dict, dtype: torch.dtype, device) -> FusedWeights:
        weights = FusedWeights(config=folded["config"], stem=self.prepare_stem(folded["stem"], dtype, device),
                               **cast_common(folded, dtype, device))
        self.refresh(weights)
        self.check_cuda(weights, dtype, device)
        return weights

    @staticmethod
    def prepare_stem(stem: StemFold, dtype: torch.dtype, device) -> EngineStem:
        return EngineStem(tensors=tuple(pack_stem(stem, dtype, device)), eps=getattr(stem, "eps", 1e-6))

    @staticmethod
    def cuda_problem(weights: FusedWeights, dtype: torch.dtype) -> str:
        """Why the engine's CUDA kernels cannot run this model in `dtype` ("" when they can); no GPU needed."""
        e = weights.extras["engine"]
        return torch.ops.ttf.engine_cuda_problem(e["config"], e["eps"], dtype)

    @staticmethod
    def config_problem(cfg, dtype: torch.dtype) -> str:
        """The same from a ViTConfig alone (before anything is folded or packed)."""
        ints, eps = config_lists(cfg, cfg.num_classes or cfg.embed_dim)
        return torch.ops.ttf.engine_cuda_problem(ints, eps, dtype)

    def check_cuda(self, weights: FusedWeights, dtype: torch.dtype, device) -> None:
        if torch.device(device).type == "cuda":
            problem = self.cuda_problem(weights, dtype)
            if problem:
                raise ValueError(f"backend='cuda' cannot run this model on the GPU: {problem}. Use "
                                 "backend='triton'")

    def refresh(self, weights: FusedWeights) -> None:
        """(Re)build the op's weight list after FusedWeights changed (refold): the padded head is updated in place
        so a captured CUDA graph keeps reading the right addresses."""
        rows = weights.head_w.shape[0]
        padded_rows = rows + (-rows % 8)
        old = weights.extras.get("engine")
        if old is not None and old["head_w"].shape[0] == padded_rows:
            head_w, head_b = old["head_w"], old["head_b"]
        else:
            head_w = weights.head_w.new_zeros(padded_rows, weights.head_w.shape[1])
            head_b = weights.head_b.new_zeros(padded_rows)
        head_w[:rows].copy_(weights.head_w)
        head_b[:rows].copy_(weights.head_b)
        tensors = list(weights.stem.tensors) + [weights.prefix, weights.pos_patches]
        if weights.norm_pre is not None:
            tensors += [weights.norm_pre["weight"], weights.norm_pre["bias"]]
        for blk in weights.blocks:
            tensors += [blk.w_qkv, blk.b_qkv, blk.w_proj, blk.b_proj, blk.w_fc1, blk.b_fc1, blk.w_fc2, blk.b_fc2]
        tensors += [head_w, head_b]
        ints, eps = engine_config(weights, weights.stem)
        weights.extras["engine"] = {"tensors": tensors, "config": ints, "eps": eps, "head_w": head_w,
                                    "head_b": head_b}

    def plan(self, weights: FusedWeights, batch: int, sm_count: int = 0) -> dict:
        """The op's workspace plan for a batch (byte offsets and split counts), for inspection and tests."""
        e = weights.extras["engine"]
        names = ["total_bytes", "x", "xn", "wide", "attn", "partial", "features", "logits", "gemm_workspace",
                 "stem_im2col", "stem_h1", "stem_h2", "splits_proj", "splits_fc2", "splits_stem"]
        values = torch.ops.ttf.vit_plan(e["config"], e["eps"], batch, weights.head_w.dtype, sm_count)
        return dict(zip(names, values))

    def _workspace_for(self, weights: FusedWeights, images: torch.Tensor):
        if images.is_cuda and torch.cuda.is_current_stream_capturing():
            return None      # allocated by the op from the graph's private pool: the graph fixes its address
        key = (images.shape[0], images.device)
        buf = self._workspace.get(key)
        if buf is None:
            sm = torch.cuda.get_device_properties(images.device).multi_processor_count if images.is_cuda else 0
            total = self.plan(weights, images.shape[0], sm)["total_bytes"]
            buf = self._workspace[key] = torch.empty(total, dtype=torch.uint8, device=images.device)
        return buf

    def run(self, weights: FusedWeights, images: torch.Tensor) -> torch.Tensor:
        check_image_dtype(images, weights.pos_patches.dtype, "FusedViT")
        e = weights.extras["engine"]
        return torch.ops.ttf.vit_forward(images, e["tensors"], e["config"], e["eps"],
                                         self._workspace_for(weights, images))

    def embed(self, images: torch.Tensor, weights: FusedWeights) -> torch.Tensor:
        """The stem alone, (B, N, D) tokens entering the blocks (norm_pre applied): for tests against the other
        backends' embedding."""
        check_image_dtype(images, weights.pos_patches.dtype, "FusedViT")
        e = weights.extras["engine"]
        return torch.ops.ttf.vit_embed(images, e["tensors"], e["config"], e["eps"])
