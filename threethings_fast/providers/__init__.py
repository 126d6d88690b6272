"""Providers: the named ways to run one forward of a whole model, shared by every benchmark front end (the profiler
and its trace, the pytest-benchmark suites, bench/bench_engine.py). See `registry` for the API.

    reference                       the reference model, eager
    branch_by_branch                the xK model's branches one after another (the paper's "sequential"; xK only)
    compile                         torch.compile of the reference (CUDA)
    compile[reduce-overhead]        the same, mode="reduce-overhead" (CUDA graphs inside)
    timm                            timm's VisionTransformer, same config and weights (when timm imports)
    timm+compile                    torch.compile of that (CUDA)
    timm+compile[reduce-overhead]   the same, mode="reduce-overhead"
    timm+compile[max-autotune]      the same, mode="max-autotune" (minutes of tuning)
    fused[auto]                     convert(model): the backend convert() picks on this device
    fused[torch]                    convert(model, backend="torch")
    fused[triton]                   convert(model, backend="triton") (CUDA)
    fused[triton]+graph             the same, replayed from a CUDA graph per batch size
    fused[triton/fusednorm]         convert(model, backend="triton", norm="fused") (CUDA), and its +graph
    fused[cuda]                     convert(model, backend="cuda"): the C++ engine (sm_90), and its +graph

`python -m threethings_fast.profile --list-providers` prints them with whether each can run here. Every name takes a
model of any family (threethings_fast.models): MLP-Mixer, ResMLP, gMLP, ViP and FF-only models run reference /
compile, the fused[auto|torch|triton|triton/fusednorm] providers when their family has a fused path at run time,
timm (MlpMixer) for Mixer / ResMLP / gMLP at K = 1; fused[cuda] and branch_by_branch are ViT-only (registry's
docstring).
"""
from .registry import (ALIASES, REGISTRY, ModelEntry, Provider, UnknownProvider, available, build, get, is_fused,
                       model_of, names, prepare, raise_recompile_limit, resolve)

__all__ = ["ALIASES", "REGISTRY", "ModelEntry", "Provider", "UnknownProvider", "available", "build", "get",
           "is_fused", "model_of", "names", "prepare", "raise_recompile_limit", "resolve"]
