"""Small-batch latency of the C++ engine against the other ways to run the same weights (CUDA, bf16).

Providers, timed round-robin in one process (CUDA events per call, median and p90 of `--reps` calls):
    engine            ttf.convert(model, backend="cuda"): one C++ op call per forward
    engine+graph      the same forward captured in a CUDA graph (one replay per forward)
    triton+graph      the Triton backend captured in a CUDA graph
    timm              timm eager, same weights (our reference exported to timm's layout, loaded into timm)
    timm:compile-ro   torch.compile(timm_model, mode="reduce-overhead")
    timm:compile-ma   torch.compile(timm_model, mode="max-autotune")   (only with --max-autotune: minutes of tuning)
The bf16 tensor-core peak is measured in the same process (8192³ matmul) for the "% of peak" column.

    python bench/bench_engine.py --out latency.json [--models S18x2 S36x1 B12x1] [--batches 1 8] [--reps 200]

Writes JSON (device, versions, dtype, command, raw per-call times in seconds) and a markdown table next to it, and
checks the targets of the engine's notes (bench/notes/engine.md) on what it measured.
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
from threethings_fast.timing import device_name, sync  # noqa: E402

TIMM_NAMES = {"S18x2": ("vit_small_patch16_18x2_224", {}), "S36x1": ("vit_small_patch16_36x1_224", {}),
              "B12x1": ("vit_base_patch16_224", {"init_values": 1e-5}), "B18x2": ("vit_base_patch16_18x2_224", {})}
DTYPE = torch.bfloat16


def measured_peak_tflops(device) -> float:
    a = torch.randn(8192, 8192, device=device, dtype=DTYPE)
    b = torch.randn(8192, 8192, device=device, dtype=DTYPE)
    for _ in range(3):
        a @ b
    sync(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    end.synchronize()
    return 2 * 8192 ** 3 * 10 / (start.elapsed_time(end) / 1e3) / 1e12


def graphed(fn, example):
    """A CUDA graph of fn(example); returns a callable that replays it (the input buffer is `example`)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(example)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(example)
    return graph.replay


def providers_for(name: str, batch: int, args, log) -> tuple[dict, object]:
    device = torch.device("cuda")
    with torch.device(device):
        reference = ttf.create_model(name).to(DTYPE).eval()
    x = torch.randn(batch, 3, 224, 224, device=device, dtype=DTYPE)
    out: dict = {}
    engine = ttf.convert(reference, backend="cuda")
    out["engine"] = lambda: engine(x)
    out["engine+graph"] = graphed(engine, x)
    triton = ttf.convert(reference, backend="triton")
    out["triton+graph"] = graphed(triton, x)
    try:
        import timm
    except ImportError:
        log(f"{name} b{batch}: timm not installed, its providers are left out")
        return out, x
    timm_name, kwargs = TIMM_NAMES[name]
    tm = timm.create_model(timm_name, pretrained=False, **kwargs).to(device=device, dtype=DTYPE).eval()
    tm.load_state_dict(ttf.export_state_dict(reference, "timm"))
    with torch.no_grad():
        out["timm"] = lambda: tm(x)
        modes = ["reduce-overhead"] + (["max-autotune"] if args.max_autotune else [])
        for mode in modes:
            t0 = time.perf_counter()
            compiled = torch.compile(tm, mode=mode)
            for _ in range(3):
                compiled(x)
            sync(device)
            log(f"{name} b{batch}: torch.compile({mode}) ready in {time.perf_counter() - t0:.0f} s")
            out[f"timm:compile-{'ro' if mode == 'reduce-overhead' else 'ma'}"] = (lambda c=compiled: c(x))
    return out, x


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
    parser.add_argument("--models", nargs="+", default=["S18x2", "S36x1", "B12x1"], choices=sorted(TIMM_NAMES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--max-autotune", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_engine.py: no CUDA device; the engine's latency is measured on an sm_90 GPU", file=sys.stderr)
        return 2

    def log(msg):
        print(f"[bench_engine] {msg}", flush=True)

    import triton
    device = torch.device("cuda")
    result = {"device": device_name(device), "torch": torch.__version__, "triton": triton.__version__,
              "cuda": torch.version.cuda, "dtype": "bfloat16", "command": " ".join(sys.argv), "rows": []}
    try:
        import timm
        result["timm"] = timm.__version__
    except ImportError:
        result["timm"] = None
    result["peak_tflops_bf16"] = peak = measured_peak_tflops(device)
    log(f"{result['device']}: measured bf16 matmul peak {peak:.0f} TFLOP/s")
    md = ["| model | batch | provider | median µs | p90 µs | TFLOP/s | % peak |", "|---|---:|---|---:|---:|---:|---:|"]
    try:
        for name in args.models:
            flops = 2 * count_macs(ttf.from_name(name)).total
            for batch in args.batches:
                providers, _ = providers_for(name, batch, args, log)
                times = time_providers(providers, args.reps)
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
        "engine")), key=lambda r: r["median_s"], default=None)
    s18 = best("S18x2", 1)
    if s18:
        lines.append(f"S18x2 bs1 ≤ 100 µs: {s18['median_s'] * 1e6:.1f} µs ({s18['provider']})")
        timm_best = min((med("S18x2", 1, p) for p in ("timm", "timm:compile-ro", "timm:compile-ma")
                         if med("S18x2", 1, p)), default=None)
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
