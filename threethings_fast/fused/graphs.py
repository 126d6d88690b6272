"""CUDA-graph capture of a fused model for fixed batch sizes: one graph replay per forward instead of ~7 launches
per block. Small batches are launch-bound, so this is where batch-1 latency comes from."""
from __future__ import annotations

from typing import Iterable

import torch

from .model import FusedViT


class CUDAGraphViT:
    """Replays a captured forward of `fused` for each batch size in `batch_sizes`.

    __call__(images (B, C, H, W)) -> logits (B, num_classes). B must be one of the captured sizes (else a clear
    ValueError). The returned tensor is the graph's static output buffer: it is overwritten by the next call with
    the same batch size — `.clone()` it to keep it.
    """

    def __init__(self, fused: FusedViT, batch_sizes: Iterable[int], warmup: int = 2):
        if fused.device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA model, this one is on {fused.device}")
        self.fused = fused
        cfg = fused.config
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        for b in sorted(set(int(b) for b in batch_sizes)):
            if b < 1:
                raise ValueError(f"batch sizes must be >= 1, got {b}")
            static_in = torch.zeros(b, cfg.in_chans, cfg.img_size, cfg.img_size, dtype=fused.dtype,
                                    device=fused.device)
            stream = torch.cuda.Stream(fused.device)
            stream.wait_stream(torch.cuda.current_stream(fused.device))
            with torch.cuda.stream(stream):  # warm-up outside the graph: autotuning, allocator, lazy init
                for _ in range(warmup):
                    fused(static_in)
            torch.cuda.current_stream(fused.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # One memory pool per batch size: graphs sharing a pool are only safe when replayed in capture order,
            # and a user alternating sizes would see one size's output overwritten by another's scratch.
            with torch.cuda.graph(graph):
                static_out = fused(static_in)
            self._graphs[b] = (graph, static_in, static_out)

    @property
    def batch_sizes(self) -> list[int]:
        return sorted(self._graphs)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0] if images.dim() == 4 else None
        if b not in self._graphs:
            raise ValueError(f"no graph captured for input shape {tuple(images.shape)}; captured batch sizes: "
                             f"{self.batch_sizes}")
        graph, static_in, static_out = self._graphs[b]
        if images.shape != static_in.shape or images.dtype != static_in.dtype or images.device != static_in.device:
            raise ValueError(f"expected images {tuple(static_in.shape)} {static_in.dtype} on {static_in.device}, "
                             f"got {tuple(images.shape)} {images.dtype} on {images.device}")
        static_in.copy_(images)
        graph.replay()
        return static_out


def capture(fused: FusedViT, batch_sizes: Iterable[int]) -> CUDAGraphViT:
    """Capture `fused` in CUDA graphs for the given batch sizes."""
    return CUDAGraphViT(fused, batch_sizes)
