"""Interleaved timing: every provider is timed round-robin in one process, so machine noise hits all of them alike.
CUDA work is timed with CUDA events after a synchronising warm-up; CPU work with perf_counter."""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable, Mapping

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model for CPU runs."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_once(fn: Callable[[], object], device: torch.device) -> float:
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
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in providers}
    t_start = time.perf_counter()
    rounds = 0
    while rounds < reps or (time.perf_counter() - t_start < min_seconds and rounds < 50 * reps):
        for name, fn in providers.items():
            times[name].append(time_once(fn, device))
        rounds += 1
    return times


def summarize(samples: list[float]) -> dict[str, float]:
    """median / p10 / p90 of raw seconds."""
    s = sorted(samples)
    q = statistics.quantiles(s, n=10, method="inclusive") if len(s) > 1 else [s[0]] * 9
    return {"median": statistics.median(s), "p10": q[0], "p90": q[-1], "n": len(s)}


def cuda_sync_timer() -> float:
    """perf_counter after draining the current CUDA device (a plain perf_counter without CUDA).

    The clock for pytest-benchmark on GPU (`--benchmark-timer threethings_fast.timing.cuda_sync_timer`, set by
    bench/conftest.py): a round of `iterations` calls is then timed from an idle device to the end of its last
    kernel, as CUDA events would, with one synchronisation (~10 µs) amortised over the round."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def measure_peak_matmul(device, dtype: torch.dtype, n: int | None = None, *, warmup: int = 2,
                        reps: int = 10) -> dict:
    """Measured matmul rate of the device in `dtype`: an (n, n) @ (n, n) product, 2·n³ FLOPs per call.

    n defaults to 8192 on CUDA (large enough to saturate an H100's tensor cores) and 1024 on the CPU (a few tens of
    ms on 2 cores). Returns {"tflops": best rate (the peak used for "% of peak"), "tflops_median", "n", "dtype",
    "raw_s"}. The best rate, not the median: the peak is what the hardware can do, not what a noisy machine did."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    with torch.inference_mode():
        raw = time_interleaved({"mm": lambda: torch.mm(a, b)}, device, warmup=warmup, reps=reps)["mm"]
    flops = 2.0 * n ** 3
    return {"tflops": flops / min(raw) / 1e12, "tflops_median": flops / statistics.median(raw) / 1e12, "n": n,
            "dtype": str(dtype).replace("torch.", ""), "raw_s": raw}


def measure_copy_bandwidth(device, nbytes: int | None = None, *, warmup: int = 2, reps: int = 10) -> dict:
    """Measured device-memory copy bandwidth: `dst.copy_(src)` of nbytes, counted as 2·nbytes moved (read + write).

    nbytes defaults to 1 GiB on CUDA and 256 MiB on the CPU (far above the caches). Returns {"gbps": best rate,
    "gbps_median", "bytes", "raw_s"}."""
    device = torch.device(device)
    nbytes = nbytes or ((1 << 30) if device.type == "cuda" else (256 << 20))
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    raw = time_interleaved({"copy": lambda: dst.copy_(src)}, device, warmup=warmup, reps=reps)["copy"]
    moved = 2.0 * nbytes
    return {"gbps": moved / min(raw) / 1e9, "gbps_median": moved / statistics.median(raw) / 1e9, "bytes": nbytes,
            "raw_s": raw}
