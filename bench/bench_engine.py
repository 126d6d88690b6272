"""Small-batch latency of the C++ engine against the other ways to run the same weights (CUDA, bf16).

Providers (threethings_fast.providers, the names of every benchmark), timed round-robin in one process (CUDA events
per call, median and p90 of `--reps` calls):
    fused[cuda]                     ttf.convert(model, backend="cuda"): one C++ op call per forward
    fused[cuda]+graph               the same forward replayed from a CUDA graph
    fused[triton]+graph             the Triton backend replayed from a CUDA graph
    timm                            timm eager, same weights (our reference exported to timm's layout, loaded into timm)
    timm+compile[reduce-overhead]   torch.compile(timm_model, mode="reduce-overhead")
    timm+compile[max-autotune]      torch.compile(timm_model, mode="max-autotune")   (only with --max-autotune:
                                    minutes of tuning)
`--providers` picks any other registered ones. A +graph call includes copying the images into the graph's input
buffer, as everywhere the name appears. The bf16 tensor-core peak is measured in the same process
(threethings_fast.timing.measure_peak_matmul) for the "% of peak" column.

    python bench/bench_engine.py --out latency.json [--models S18x2 S36x1 B12x1] [--batches 1 8] [--reps 200]

Writes JSON (device, versions, dtype, command, raw per-call times in seconds, providers left out and why) and a
markdown table next to it, and checks the targets of the engine's notes (bench/notes/engine.md) on what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import threethings_fast as ttf  # noqa: E402
from threethings_fast.macs import count_macs  # noqa: E402
from threethings_fast.providers import ModelEntry, UnknownProvider, available, build, prepare, resolve  # noqa: E402
from threethings_fast.timing import device_name, measure_peak_matmul, sync  # noqa: E402

DTYPE = torch.bfloat16
DEFAULT_PROVIDERS = ["fused[cuda]", "fused[cuda]+graph", "fused[triton]+graph", "timm",
                     "timm+compile[reduce-overhead]"]
TIMM_PROVIDERS = ("timm", "timm+compile[reduce-overhead]", "timm+compile[max-autotune]")


def provider_name(text: str) -> str:
    try:
        return resolve(text)
    except UnknownProvider as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def providers_for(entry: ModelEntry, batch: int, providers: list, log) -> tuple[dict, dict, list]:
    """({provider: call}, {provider: cleanup}, [skipped rows]) for `entry` at `batch`. Each call is run once here:
    the first call compiles / autotunes / captures, and its time is logged, not timed."""
    device = entry.device
    cfg = entry.config
    x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=device, dtype=DTYPE)
    calls, cleanups, skipped = {}, {}, []
    with torch.no_grad():
        for provider in providers:
            reason = available(provider, cfg, device) or prepare(entry, provider)
            if reason is None:
                try:
                    t0 = time.perf_counter()
                    call, cleanups[provider] = build(entry, provider, x)
                    call()
                    sync(device)
                    calls[provider] = call
                    log(f"{entry.name} b{batch}: {provider} ready in {time.perf_counter() - t0:.1f} s")
                    continue
                except Exception as exc:  # noqa: BLE001 - the other providers are still timed
                    reason = f"{type(exc).__name__}: {exc}"
            log(f"{entry.name} b{batch}: {provider} left out: {reason}")
            skipped.append({"model": entry.name, "batch": batch, "provider": provider, "reason": reason})
    return calls, cleanups, skipped


def time_providers(providers: dict, reps: int) -> dict[str, list[float]]:
    """Round-robin: one call of each provider per round, each bracketed by CUDA events."""
    times = {k: [] for k in providers}
    with torch.no_grad():
        for fn in providers.values():
            for _ in range(5):
                fn()
        torch.cuda.synchronize()
        for _ in range(reps):
            for k, fn in providers.items():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times[k].append(start.elapsed_time(end) / 1e3)
    return times


def quantile(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", nargs="+", default=["S18x2", "S36x1", "B12x1"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--providers", nargs="+", type=provider_name, default=None, metavar="PROVIDER",
                        help=f"default: {' '.join(DEFAULT_PROVIDERS)}")
    parser.add_argument("--max-autotune", action="store_true", help="also time timm+compile[max-autotune]")
    args = parser.parse_args(argv)
    providers = list(args.providers or DEFAULT_PROVIDERS)
    if args.max_autotune and "timm+compile[max-autotune]" not in providers:
        providers.append("timm+compile[max-autotune]")
    if not torch.cuda.is_available():
        print("bench_engine.py: no CUDA device; the engine's latency is measured on an sm_90 GPU", file=sys.stderr)
        return 2

    def log(msg):
        print(f"[bench_engine] {msg}", flush=True)

    import triton
    device = torch.device("cuda")
    result = {"device": device_name(device), "torch": torch.__version__, "triton": triton.__version__,
              "cuda": torch.version.cuda, "dtype": "bfloat16", "command": " ".join(sys.argv),
              "providers": providers, "rows": [], "skipped": []}
    try:
        import timm
        result["timm"] = timm.__version__
    except ImportError:
        result["timm"] = None
    result["peak_tflops_bf16"] = peak = measure_peak_matmul(device, DTYPE)["tflops"]
    log(f"{result['device']}: measured bf16 matmul peak {peak:.0f} TFLOP/s")
    md = ["| model | batch | provider | median µs | p90 µs | TFLOP/s | % peak |", "|---|---:|---|---:|---:|---:|---:|"]
    try:
        for name in args.models:
            flops = 2 * count_macs(ttf.from_name(name)).total
            entry = ModelEntry.create(name, device, DTYPE, seed=0)
            for batch in args.batches:
                calls, cleanups, skipped = providers_for(entry, batch, providers, log)
                result["skipped"] += skipped
                try:
                    times = time_providers(calls, args.reps)
                finally:
                    for cleanup in cleanups.values():
                        cleanup()
                for provider, values in times.items():
                    med = statistics.median(values)
                    row = {"model": name, "batch": batch, "provider": provider, "median_s": med,
                           "p90_s": quantile(values, 0.9), "tflops": flops * batch / med / 1e12, "times_s": values}
                    result["rows"].append(row)
                    md.append(f"| {name} | {batch} | {provider} | {med * 1e6:.1f} | {row['p90_s'] * 1e6:.1f} | "
                              f"{row['tflops']:.1f} | {100 * row['tflops'] / peak:.1f} |")
                log(f"{name} b{batch}: " + ", ".join(f"{k} {statistics.median(v) * 1e6:.0f} µs" for k, v in times.items()))
                with open(args.out, "w") as f:          # rewritten after every row: a cut run keeps what it measured
                    json.dump(result, f, indent=1)
    except KeyboardInterrupt:
        log("interrupted: writing what was measured")
    result["targets"] = targets(result["rows"], peak)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    md += ["", "Targets (bench/notes/engine.md):"] + [f"- {t}" for t in result["targets"]]
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def targets(rows, peak) -> list[str]:
    def med(model, batch, provider):
        for r in rows:
            if (r["model"], r["batch"], r["provider"]) == (model, batch, provider):
                return r["median_s"]
        return None

    lines = []
    best = lambda m, b: min((r for r in rows if r["model"] == m and r["batch"] == b and r["provider"].startswith(  # noqa: E731
        "fused[cuda]")), key=lambda r: r["median_s"], default=None)
    s18 = best("S18x2", 1)
    if s18:
        lines.append(f"S18x2 bs1 ≤ 100 µs: {s18['median_s'] * 1e6:.1f} µs ({s18['provider']})")
        timm_best = min((med("S18x2", 1, p) for p in TIMM_PROVIDERS if med("S18x2", 1, p)), default=None)
        if timm_best:
            lines.append(f"S18x2 bs1 ≥ 4× best timm: {timm_best / s18['median_s']:.2f}×")
        s36 = best("S36x1", 1)
        if s36:
            lines.append(f"S18x2 bs1 ≥ 1.5× faster than S36x1 on the engine: {s36['median_s'] / s18['median_s']:.2f}×")
    b12 = best("B12x1", 1)
    if b12:
        lines.append(f"B12x1 bs1 ≤ 150 µs: {b12['median_s'] * 1e6:.1f} µs")
    for m in ("S18x2", "B12x1"):
        r = best(m, 8)
        if r:
            lines.append(f"{m} bs8 ≥ 50% of the bf16 peak: {100 * r['tflops'] / peak:.1f}%")
    return lines


if __name__ == "__main__":
    sys.exit(main())
