"""CPU (or GPU) latency of the MLP families: reference vs fused vs timm eager, interleaved medians.

    python bench/bench_mlp_families.py [--batches 1 16] [--reps 5] [--models mixer_s16_224 resmlp_12_224 gmlp_ti16_224]

Every provider runs the same weights: the reference model's, loaded strictly into timm's model of the same name
(timm's layout is the reference's). Rounds are interleaved (reference, fused, timm, reference, ...) so that the
machine's drift hits every provider alike; the table reports medians and the fused/reference and fused/timm ratios.
timm is optional (its column is left out without it). Results go to stdout as a markdown table and, with --json,
to a file with the environment.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

import threethings_fast as ttf


def _timed(fn, x) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        fn(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _timm_twin(name: str, reference: torch.nn.Module):
    try:
        import timm
    except ImportError:
        return None
    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError:       # "Unknown model": ViP and feed-forward-only are not in timm
        return None
    model.load_state_dict(reference.state_dict(), strict=True)
    return model.to(next(reference.parameters())).eval()


def run(models, batches, reps, device, dtype):
    rows = []
    for name in models:
        torch.manual_seed(0)
        reference = ttf.create_model(name).to(device=device, dtype=dtype).eval()
        providers = {"reference": reference, "fused": ttf.convert(reference)}
        twin = _timm_twin(name, reference)
        if twin is not None:
            providers["timm"] = twin
        cfg = reference.config
        for batch in batches:
            x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=device, dtype=dtype)
            for fn in providers.values():      # warm-up (allocator, first-call paths)
                _timed(fn, x)
            times = {k: [] for k in providers}
            for _ in range(reps):
                for k, fn in providers.items():
                    times[k].append(_timed(fn, x))
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            rows.append({"model": name, "batch": batch, "median_ms": med, "raw_s": times,
                         "backend": providers["fused"].backend})
            print(f"{name} batch {batch}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items()), file=sys.stderr)
    return rows


def table(rows) -> str:
    has_timm = any("timm" in r["median_ms"] for r in rows)
    head = "| model | batch | reference ms | fused ms |" + (" timm ms |" if has_timm else "") + \
           " fused/reference speed-up |" + (" fused/timm speed-up |" if has_timm else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        m = r["median_ms"]
        cells = [r["model"], str(r["batch"]), f"{m['reference']:.1f}", f"{m['fused']:.1f}"]
        if has_timm:
            cells.append(f"{m['timm']:.1f}" if "timm" in m else "-")
        cells.append(f"{m['reference'] / m['fused']:.2f}x")
        if has_timm:
            cells.append(f"{m['timm'] / m['fused']:.2f}x" if "timm" in m else "- (not in timm)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mixer_s16_224", "resmlp_12_224", "gmlp_ti16_224"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--json", help="write the raw timings and the environment here")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    rows = run(args.models, args.batches, args.reps, torch.device(args.device), dtype)
    print(table(rows))
    if args.json:
        try:
            import timm
            timm_version = timm.__version__
        except ImportError:
            timm_version = None
        env = {"device": args.device, "dtype": args.dtype, "torch": torch.__version__, "timm": timm_version,
               "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads(), "command": " ".join(sys.argv)}
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
