"""Whole-model benchmarks, setup × provider: one forward of images -> logits.

Setups: CUDA: S18x2, S36x1 (same parameters as S18x2), B18x2 at 224 px, batch 1 and 64, bf16; CPU: S2x2 and S4x1
(the same family at depth 2 / 4, 224 px) at batch 1, float32 — the real depth takes seconds per call here.
The other families (FAMILY_SETUPS), each with a fused path at run time (`models.FAMILIES[...].fusable`): CUDA: the
families preset's CUDA models (mixer_b16_224, resmlp_24_224, gmlp_b16_224, vip_m7, ffonly_base) at batch 1 and 64;
CPU: its CPU models (mixer_s16_224, resmlp_12_224, gmlp_s16_224, vip_s7, ffonly_tiny) cut to 2 blocks
(ViP: 1 per stage), real widths and token counts, batch 1, named "<model>-d2".
Providers: the registry's (threethings_fast.providers; `python -m threethings_fast.profile --list-providers` says
what each runs), built and skipped exactly as the profiler builds and skips them, except those in LEFT_OUT below.
torch.compile providers carry the `compile` marker (-m compile / -m "not compile").
Derived: tflops = batch · forward_flops(cfg) / median (2·matmul MACs per image); images_per_s = batch / median.
"""
from __future__ import annotations

import functools

import pytest
import torch

from conftest import DEVICE, DTYPE, HAS_CUDA, skip_unavailable
from threethings_fast.api import create_model
from threethings_fast.macs import forward_flops
from threethings_fast.models import FAMILIES
from threethings_fast.profile.cli import FAMILY_PEERS
from threethings_fast.providers import ModelEntry, build, names
from threethings_fast.providers.registry import resolve_config

# Providers whose first call takes minutes, too long for a suite that times every setup within a deadline.
LEFT_OUT = {
    "fused[cuda]": "builds the C++ engine on first use; bench/bench_engine.py times it",
    "fused[cuda]+graph": "builds the C++ engine on first use; bench/bench_engine.py times it",
    "fused[auto]": "picks the C++ engine on sm_90, built on first use; the profiler's report preset times it",
    "timm+compile[max-autotune]": "minutes of tuning per shape; bench/bench_engine.py --max-autotune times it",
}
PROVIDERS = [pytest.param(p, marks=pytest.mark.compile) if "compile" in p else p
             for p in names() if p not in LEFT_OUT]
CPU_SUFFIX = "-d2"    # a CPU setup's family model cut to 2 blocks
FAMILY_SETUPS = [(peer[1] if HAS_CUDA else peer[0] + CPU_SUFFIX, b)
                 for family, peer in FAMILY_PEERS.items() if family != "vit" and FAMILIES[family].fusable
                 for b in ((1, 64) if HAS_CUDA else (1,))]
SETUPS = ([(m, b) for m in ("S18x2", "S36x1", "B18x2") for b in (1, 64)] if HAS_CUDA else
          [("S2x2", 1), ("S4x1", 1)]) + FAMILY_SETUPS


def _shallow(cfg):
    """`cfg` with 2 blocks (ViP: one per stage): the CPU setups keep real widths and token counts."""
    if hasattr(cfg, "layers"):
        return cfg.replace(layers=(1,) * len(cfg.layers))
    return cfg.replace(depth=2)


@functools.lru_cache(maxsize=None)
def _entry(name: str) -> ModelEntry:
    """The model's reference and, as the providers build them, its fused / compiled / timm models (kept for the
    session: every setup of the model reuses them)."""
    if not name.endswith(CPU_SUFFIX):
        return ModelEntry.create(name, DEVICE, DTYPE, seed=0)
    torch.manual_seed(0)
    cfg = _shallow(resolve_config(name[:-len(CPU_SUFFIX)]))
    return ModelEntry(name=name, config=cfg, reference=create_model(cfg).to(device=DEVICE, dtype=DTYPE).eval())


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("setup", SETUPS, ids=lambda s: f"{s[0]}-b{s[1]}" if isinstance(s, tuple) else str(s))
def test_model(measure, setup, provider):
    name, batch = setup
    entry = _entry(name)
    cfg = entry.config
    skip_unavailable(provider, cfg)
    images = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=DEVICE).to(DTYPE)
    fn, cleanup = build(entry, provider, images)
    try:
        median = measure(fn, group=f"model {name} b{batch}", flops=batch * forward_flops(cfg), model=name,
                         batch=batch, provider=provider)
    finally:
        cleanup()
    if median:
        measure.extra_info["images_per_s"] = batch / median
