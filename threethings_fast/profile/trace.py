"""One torch.profiler Chrome trace of a chosen (model, provider, batch): where the launches and the gaps are.

Open the JSON in chrome://tracing or https://ui.perfetto.dev. Summarised into the profile JSON:
    ops_per_forward       outermost aten:: ops per forward (CPU side: what the Python/C++ dispatcher issues)
    kernels_per_forward   device kernels per forward (CUDA only; a CUDA-graph replay shows its kernels too)
    device_busy_fraction  summed kernel time / wall time of the traced forwards (CUDA only; 1 - idle gaps)
"""
from __future__ import annotations

import os
import time
from typing import Optional

import torch

from ..providers import build, is_fused, resolve
from ..timing import sync
from .common import Settings, slug

TRACE_ITERS = 3


def parse_trace_spec(spec: Optional[str]) -> tuple[str, str, str]:
    """ "MODEL:PROVIDER:BATCH" (any part may be empty; None or "auto": all empty) -> its three parts, the provider
    as its registered name. UnknownProvider (a ValueError) for a provider name that is not registered; ValueError
    for a batch that is not a positive integer."""
    parts = [] if spec in (None, "", "auto") else spec.split(":")
    if len(parts) > 3:
        raise ValueError(f"--trace takes MODEL:PROVIDER:BATCH, got {spec!r}")
    model, provider, batch = parts + [""] * (3 - len(parts))
    if batch and not (batch.isdigit() and int(batch) > 0):
        raise ValueError(f"--trace batch must be a positive integer, got {batch!r}")
    return model, resolve(provider) if provider else "", batch


def resolve_trace_spec(spec: str, plan: dict, batches: list) -> tuple[str, str, int]:
    """ "MODEL:PROVIDER:BATCH" (any part may be empty) or "auto" -> (model, provider, batch). Auto: the first xK
    model, its best-guess fastest provider (the last planned fused one), the smallest batch of the sweep."""
    model, provider, batch = parse_trace_spec(spec)
    models = list(plan)
    if not model:
        model = next((m for m in models if any(p == "branch_by_branch" for p in plan[m])), models[0])
    if model not in plan:
        raise ValueError(f"--trace model {model!r} is not in the sweep ({', '.join(models)})")
    if not plan[model]:
        raise ValueError(f"--trace: no provider runs {model} here")
    if not provider:
        fused = [p for p in plan[model] if is_fused(p)]
        provider = fused[-1] if fused else plan[model][0]
    if provider not in plan[model]:
        raise ValueError(f"--trace provider {provider!r} does not run {model} here ({', '.join(plan[model])})")
    return model, provider, int(batch) if batch else min(batches)


def record_trace(settings: Settings, device: torch.device, entries, plan: dict, result: dict) -> Optional[dict]:
    from torch.profiler import ProfilerActivity, profile, record_function

    try:
        model, provider, batch = resolve_trace_spec(settings.trace, plan, settings.batches)
    except ValueError as exc:
        result["errors"].append({"model": None, "provider": None, "batch": None, "error": f"trace: {exc}",
                                 "traceback": ""})
        return None
    entry = next(e for e in entries if e.name == model)
    cfg = entry.config
    images = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size).to(device=device, dtype=settings.dtype)
    path = os.path.join(settings.trace_dir or ".", f"trace_{slug(model)}_{slug(provider)}_b{batch}.json")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad():
        fn, cleanup = build(entry, provider, images)
        for _ in range(2):
            fn()
        sync(device)
        t0 = time.perf_counter()
        with profile(activities=activities) as prof:
            for i in range(TRACE_ITERS):
                with record_function(f"forward#{i}"):
                    fn()
                sync(device)
        wall = time.perf_counter() - t0
        cleanup()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    prof.export_chrome_trace(path)
    events = prof.events()
    ops = sum(1 for e in events if e.name.startswith("aten::")
              and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))
    info = {"model": model, "provider": provider, "batch": batch, "iterations": TRACE_ITERS, "file": path,
            "wall_s": wall, "ops_per_forward": ops / TRACE_ITERS, "kernels_per_forward": None,
            "device_busy_fraction": None}
    if device.type == "cuda":
        kernels = [e for e in events if _is_device_event(e)]
        busy_us = sum(_device_time_us(e) for e in kernels)
        info["kernels_per_forward"] = len(kernels) / TRACE_ITERS
        info["device_busy_fraction"] = min(1.0, busy_us / 1e6 / wall) if wall > 0 else None
    return info


def _is_device_event(e) -> bool:
    dt = getattr(e, "device_type", None)
    return dt is not None and "CUDA" in str(dt) and not e.name.startswith("Memset") and "Memcpy" not in e.name


def _device_time_us(e) -> float:
    """Duration of a device event (a kernel's own start..end)."""
    try:
        return float(e.time_range.elapsed_us())
    except AttributeError:
        return 0.0
