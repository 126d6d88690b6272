"""backend="auto" on an sm_90 GPU: the C++ engine for small batches, the Triton kernels above.

Both share one copy of the block weights (the engine reads the very tensors of the Triton backend's FusedWeights);
only the engine's packed stem and padded head are extra. The batch threshold is ENGINE_MAX_BATCH: where the engine
stops winning is for the GPU benchmark (bench/bench_engine.py) to say; 8 is the regime it is built for (launch-bound
forwards, M = 197·B rows).

Before the engine is trusted with a model, `self_check` runs one small batch through both paths and compares them;
a mismatch beyond bf16 rounding keeps the model on Triton alone and says so (a warning, and the repr).
"""
from __future__ import annotations

import warnings

import torch

from ..models.vit.forward import vit_forward
from .weights import FusedWeights

ENGINE_MAX_BATCH = 8


class HybridOps:
    runs_whole_forward = True

    def __init__(self, engine, triton, max_batch: int = ENGINE_MAX_BATCH):
        self.engine, self.triton, self.max_batch = engine, triton, max_batch
        self.norm = triton.norm
        self.engine_ok = True
        self.reason = ""

    @property
    def name(self) -> str:
        if not self.engine_ok:
            return "triton"
        return f"cuda (batch <= {self.max_batch}) + triton"

    def prepare(self, folded: dict, dtype: torch.dtype, device) -> FusedWeights:
        weights = self.triton.prepare(folded, dtype, device)
        engine_stem = self.engine.prepare_stem(folded["stem"], dtype, device)
        shared = FusedWeights(config=weights.config, stem=engine_stem, prefix=weights.prefix,
                              pos_patches=weights.pos_patches, norm_pre=weights.norm_pre, blocks=weights.blocks,
                              head_w=weights.head_w, head_b=weights.head_b)
        self.engine.refresh(shared)
        weights.extras["engine_weights"] = shared
        self.engine.check_cuda(shared, dtype, device)
        return weights

    def refresh(self, weights: FusedWeights) -> None:
        self.triton.refresh(weights)
        self.engine.refresh(weights.extras["engine_weights"])

    def run(self, weights: FusedWeights, images: torch.Tensor) -> torch.Tensor:
        if self.engine_ok and images.shape[0] <= self.max_batch:
            return self.engine.run(weights.extras["engine_weights"], images)
        return vit_forward(self.triton, weights, images)

    def self_check(self, weights: FusedWeights) -> None:
        """Compare the engine with the Triton path on one random image; fall back to Triton on a mismatch."""
        cfg = weights.config
        x = torch.randn(1, cfg.in_chans, cfg.img_size, cfg.img_size, dtype=weights.head_w.dtype,
                        device=weights.head_w.device)
        with torch.no_grad():
            ours = self.engine.run(weights.extras["engine_weights"], x).float()
            theirs = vit_forward(self.triton, weights, x).float()
        scale = theirs.abs().max().item() + 1e-6
        diff = (ours - theirs).abs().max().item()
        if not torch.isfinite(ours).all() or diff > 0.05 * scale:
            self.engine_ok = False
            self.reason = f"max |engine - triton| = {diff:.3g} on outputs of scale {scale:.3g}"
            warnings.warn(f"threethings_fast: the C++ engine disagrees with the Triton backend on this GPU "
                          f"({self.reason}); backend='auto' uses Triton for every batch. Please report it with "
                          "the output of bench/engine_gpu.sh.", RuntimeWarning, stacklevel=3)
