"""Whole-model benchmarks, setup × provider: one forward of images -> logits.

Setups: CUDA: S18x2, S36x1 (same parameters as S18x2), B18x2 at 224 px, batch 1 and 64, bf16; CPU: S2x2 and S4x1
(the same family at depth 2 / 4, 224 px) at batch 1, float32 — the real depth takes seconds per call here.
Providers:
    reference         the reference model, eager
    branch_by_branch  the xK model's branches one after another (the paper's "sequential" execution; xK only)
    compile           torch.compile(reference) (CUDA only)
    timm              timm's VisionTransformer of the same config (ParallelThingsBlock for K > 1), when importable
    torch             convert(model, backend="torch")
    triton            convert(model, backend="triton") (CUDA)
    triton_graph      the same captured in a CUDA graph (threethings_fast.fused.graphs)
    triton_fusednorm(_graph)  convert(..., norm="fused"): LayerNorms in the GEMM epilogues (5 launches per block)
Derived: tflops = batch · forward_flops(cfg) / median (2·matmul MACs per image); images_per_s = batch / median.
"""
from __future__ import annotations

import functools

import pytest
import torch

from conftest import DEVICE, DTYPE, HAS_CUDA, skip_unavailable
import threethings_fast as ttf
from threethings_fast.macs import forward_flops

PROVIDERS = ["reference", "branch_by_branch", pytest.param("compile", marks=pytest.mark.compile), "timm", "torch",
             "triton", "triton_graph", "triton_fusednorm", "triton_fusednorm_graph"]
SETUPS = ([(m, b) for m in ("S18x2", "S36x1", "B18x2") for b in (1, 64)] if HAS_CUDA else
          [("S2x2", 1), ("S4x1", 1)])


@functools.lru_cache(maxsize=None)
def _reference(name: str):
    torch.manual_seed(0)
    return ttf.create_model(name).to(device=DEVICE, dtype=DTYPE).eval()


@functools.lru_cache(maxsize=None)
def _fused(name: str, backend: str, norm: str = "separate"):
    return ttf.convert(_reference(name), backend=backend, norm=norm)


@functools.lru_cache(maxsize=None)
def _compiled(name: str):
    cfg = torch._dynamo.config
    for attr in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, attr):
            setattr(cfg, attr, max(64, getattr(cfg, attr)))
    return torch.compile(_reference(name), dynamic=False)


@functools.lru_cache(maxsize=None)
def _timm(name: str):
    """timm's model of the same config, random init (pretrained=False: nothing is downloaded)."""
    from timm.models.vision_transformer import VisionTransformer
    cfg = _reference(name).config
    if cfg.stem != "linear":
        raise NotImplementedError("timm has no hMLP stem")
    kw = dict(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
              embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
              qkv_bias=cfg.qkv_bias, init_values=cfg.init_values)
    if cfg.num_parallel > 1:
        from timm.models.vision_transformer import ParallelThingsBlock
        kw["block_fn"] = functools.partial(ParallelThingsBlock, num_parallel=cfg.num_parallel)
    return VisionTransformer(**kw).to(device=DEVICE, dtype=DTYPE).eval()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("setup", SETUPS, ids=lambda s: f"{s[0]}-b{s[1]}" if isinstance(s, tuple) else str(s))
def test_model(measure, setup, provider):
    name, batch = setup
    skip_unavailable(provider)
    model = _reference(name)
    cfg = model.config
    if provider == "branch_by_branch" and cfg.num_parallel == 1:
        pytest.skip("x1 model: branch by branch is the reference itself")
    images = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=DEVICE).to(DTYPE)
    if provider == "reference":
        fn = functools.partial(model, images)
    elif provider == "branch_by_branch":
        fn = functools.partial(model, images, branch_by_branch=True)
    elif provider == "compile":
        fn = functools.partial(_compiled(name), images)
    elif provider == "timm":
        try:
            timm_model = _timm(name)
        except Exception as exc:  # noqa: BLE001 - a timm version without this block type
            pytest.skip(f"timm cannot build {name}: {type(exc).__name__}: {exc}")
        fn = functools.partial(timm_model, images)
    elif provider in ("torch", "triton"):
        fn = functools.partial(_fused(name, provider), images)
    elif provider == "triton_fusednorm":
        fn = functools.partial(_fused(name, "triton", "fused"), images)
    else:  # triton_graph, triton_fusednorm_graph
        from threethings_fast.fused.graphs import capture
        runner = capture(_fused(name, "triton", "fused" if "fusednorm" in provider else "separate"), [batch])
        fn = functools.partial(runner, images)
    flops = batch * forward_flops(cfg)
    median = measure(fn, group=f"model {name} b{batch}", flops=flops, model=name, batch=batch, provider=provider)
    if median:
        measure.extra_info["images_per_s"] = batch / median
