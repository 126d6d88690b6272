"""Interleaved timing: every provider is timed round-robin in one process, so machine noise hits all of them alike.
CUDA work is timed with CUDA events after a synchronising warm-up; CPU work with perf_counter."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping

import torch


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call of fn."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_interleaved(providers: Mapping[str, Callable[[], object]], device: torch.device, *, warmup: int = 2,
                     reps: int = 10, min_seconds: float = 0.0) -> dict[str, list[float]]:
    """Raw per-call times (seconds) for each provider, measured round-robin. Runs `reps` rounds, more while the
    total time is under `min_seconds`."""
    device = torch.device(device)
    for _ in range(warmup):
        for fn in providers.values():
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in providers}
    t_start = time.perf_counter()
    rounds = 0
    while rounds < reps or (time.perf_counter() - t_start < min_seconds and rounds < 50 * reps):
        for name, fn in providers.items():
            times[name].append(_time_once(fn, device))
        rounds += 1
    return times


def summarize(samples: list[float]) -> dict[str, float]:
    """median / p10 / p90 of raw seconds."""
    s = sorted(samples)
    q = statistics.quantiles(s, n=10, method="inclusive") if len(s) > 1 else [s[0]] * 9
    return {"median": statistics.median(s), "p10": q[0], "p90": q[-1], "n": len(s)}
