"""Shared setup of the pytest-benchmark suites (bench_ops.py, bench_model.py): device, dtype, which providers can
run here (threethings_fast.providers decides), the GPU clock, and `measure`, the one way every benchmark is timed.

    pytest bench/ --benchmark-json=bench.json                 # CPU: small shapes; CUDA: real shapes, bf16
    pytest bench/ -m "not compile" ...                        # without the torch.compile providers
    pytest-benchmark compare A.json B.json --group-by=group --columns=median,iqr

Timing. On CUDA the benchmark clock is `threethings_fast.timing.cuda_sync_timer` (set here unless
--benchmark-timer is given): it drains the device before reading perf_counter, so each round of `iterations` calls
is timed from an idle GPU to the end of its last kernel, like a pair of CUDA events, with the ~10 µs
synchronisation amortised over the round. Rounds and iterations are calibrated per benchmark after a warm-up
(which also triggers Triton autotuning and torch.compile), aiming at TTF_BENCH_SECONDS of timing per benchmark.

Environment:
    TTF_BENCH_SECONDS   timing target per benchmark in seconds (default 0.2 on CUDA, 0.6 on CPU)
    TTF_BENCH_DEADLINE  seconds after the session start past which remaining benchmarks are skipped (the JSON is
                        still written: a suite cut short by a time limit keeps what it measured)
"""
from __future__ import annotations

import math
import os
import time
from typing import Optional

import pytest
import torch

from threethings_fast.configs import ViTConfig, from_name
from threethings_fast.fused.backends import triton_available
from threethings_fast.providers import available
from threethings_fast.providers.timm_model import timm_missing
from threethings_fast.timing import cuda_sync_timer

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
DTYPE = torch.bfloat16 if HAS_CUDA else torch.float32
HAS_TRITON = HAS_CUDA and triton_available()
HAS_TIMM = timm_missing() is None

TIMER = "threethings_fast.timing.cuda_sync_timer"
TARGET_S = float(os.environ.get("TTF_BENCH_SECONDS", "0.2" if HAS_CUDA else "0.6"))
DEADLINE_S = float(os.environ["TTF_BENCH_DEADLINE"]) if os.environ.get("TTF_BENCH_DEADLINE") else None
_SESSION_START = time.perf_counter()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # Before pytest-benchmark reads its options: on CUDA, time with the synchronising clock.
    if HAS_CUDA and getattr(config.option, "benchmark_timer", None) in (None, "time.perf_counter"):
        config.option.benchmark_timer = TIMER


def pytest_report_header(config):
    name = torch.cuda.get_device_name() if HAS_CUDA else "cpu"
    return (f"threethings_fast bench: device {name}, dtype {str(DTYPE).replace('torch.', '')}, torch "
            f"{torch.__version__}, triton {'yes' if HAS_TRITON else 'no'}, timm {'yes' if HAS_TIMM else 'no'}, "
            f"threads {torch.get_num_threads()}, target {TARGET_S} s per benchmark")


@pytest.fixture(autouse=True)
def _deadline_and_seed():
    if DEADLINE_S is not None and time.perf_counter() - _SESSION_START > DEADLINE_S:
        pytest.skip(f"TTF_BENCH_DEADLINE of {DEADLINE_S:.0f} s passed")
    torch.manual_seed(0)
    yield
    if HAS_CUDA:
        torch.cuda.synchronize()


def skip_unavailable(provider: str, cfg: Optional[ViTConfig] = None):
    """Skip a provider that cannot run `cfg` (default S18x2's) here, with the registry's reason (so the JSON and the
    terminal show it)."""
    reason = available(provider, cfg or from_name("S18x2"), DEVICE)
    if reason:
        pytest.skip(f"{provider}: {reason}")


def _sync():
    if HAS_CUDA:
        torch.cuda.synchronize()


@pytest.fixture
def measure(benchmark):
    """measure(fn, group=..., flops=..., bytes=..., **info) -> median seconds: warm up fn, calibrate, time it with
    benchmark.pedantic, and record in extra_info (also `measure.extra_info`) the derived rates from the median:
        tflops = flops / median / 1e12        (flops: of one call, formula in the calling benchmark)
        gbps   = bytes / median / 1e9         (bytes: minimal DRAM traffic of one call)
    """
    if HAS_CUDA and getattr(benchmark, "_timer", cuda_sync_timer) is not cuda_sync_timer:
        # --benchmark-timer was given explicitly: respect it only if it synchronises; else force ours.
        if "sync" not in getattr(benchmark._timer, "__name__", ""):
            benchmark._timer = cuda_sync_timer

    def run(fn, *, group: str, flops: float | None = None, bytes: float | None = None, warmup: int = 3,
            **info):
        benchmark.group = group
        with torch.no_grad():
            for _ in range(warmup if HAS_CUDA else 1):
                fn()
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            t1 = max(time.perf_counter() - t0, 1e-7)
            if HAS_CUDA:   # rounds of >= ~1 ms so the timer's synchronisation is noise
                iterations = int(min(100, max(1, math.ceil(1e-3 / t1))))
                rounds = int(min(100, max(5, TARGET_S / (t1 * iterations))))
            else:
                iterations = 1
                rounds = int(min(20, max(3, TARGET_S / t1)))
            benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)
        benchmark.extra_info.update({k: v for k, v in info.items() if v is not None})
        benchmark.extra_info.update(device=torch.cuda.get_device_name() if HAS_CUDA else "cpu",
                                    dtype=str(DTYPE).replace("torch.", ""), flops=flops, bytes=bytes)
        median = _median(benchmark)
        if median:
            benchmark.extra_info["median_s"] = median
            if flops:
                benchmark.extra_info["tflops"] = flops / median / 1e12
            if bytes:
                benchmark.extra_info["gbps"] = bytes / median / 1e9
        return median
    run.extra_info = benchmark.extra_info
    return run


def _median(benchmark):
    stats = getattr(benchmark, "stats", None)
    inner = getattr(stats, "stats", stats)
    try:
        return float(inner.median)
    except (AttributeError, TypeError):
        return None
