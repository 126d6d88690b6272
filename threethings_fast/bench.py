"""Main job, first version: time the reference and the fused model interleaved on the available device.

    python -m threethings_fast.bench                     # S18x2 at 224, batch 1 and 16 on CPU (64 on GPU)
    python -m threethings_fast.bench --model S36x1 --batches 1 8 --reps 5 --json out.json

Providers: the reference model (eager), the same parallel model run branch by branch (the paper's "sequential"
execution of an x2 model), and the fused model on the chosen backend. Reported per batch: median and p90
latency, images/s, and the fused speed-up over each peer. Ratios come from interleaved runs in one process.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from . import __version__
from .api import create_model
from .convert import convert
from .timing import device_name, summarize, time_interleaved

DEFAULT_MODEL = "vit_small_patch16_18x2_224"


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m threethings_fast.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name (default %(default)s)")
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help="batch sizes (default: 1 16 on CPU, 1 64 on GPU)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16", "float64"],
                   help="default float32 on CPU, bfloat16 on GPU")
    p.add_argument("--backend", default="auto", help="fused backend: auto, torch, triton")
    p.add_argument("--reps", type=int, default=None, help="timed rounds per batch (default 5 CPU, 50 GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write raw timings and metadata to this JSON file")
    return p.parse_args(argv)


def run(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    batches = args.batches or ([1, 64] if device.type == "cuda" else [1, 16])
    reps = args.reps or (50 if device.type == "cuda" else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model).to(device=device, dtype=dtype).eval()
    fused = convert(model, backend=args.backend)
    cfg = model.config
    result = {"model": args.model, "device": str(device), "device_name": device_name(device),
              "dtype": str(dtype).replace("torch.", ""), "backend": fused.backend, "torch": torch.__version__,
              "threethings_fast": __version__, "threads": torch.get_num_threads(), "batches": {}}
    try:
        import triton
        result["triton"] = triton.__version__
    except ImportError:
        result["triton"] = None
    for batch in batches:
        images = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=device, dtype=dtype)
        providers = {"reference": lambda: model(images), f"fused[{fused.backend}]": lambda: fused(images)}
        if cfg.num_parallel > 1:
            providers["branch_by_branch"] = lambda: model(images, branch_by_branch=True)
        with torch.inference_mode():
            raw = time_interleaved(providers, device, warmup=1 if device.type == "cpu" else 5, reps=reps)
        result["batches"][batch] = {name: {"raw_s": t, **summarize(t)} for name, t in raw.items()}
    return result


def format_table(result: dict) -> str:
    lines = [f"model {result['model']} | device {result['device']} ({result['device_name']}) | dtype "
             f"{result['dtype']} | backend {result['backend']} | torch {result['torch']} | threads "
             f"{result['threads']}",
             "", "| batch | provider | median ms | p90 ms | images/s | fused speed-up |",
             "|---:|---|---:|---:|---:|---:|"]
    for batch, per in result["batches"].items():
        fused_name = next(n for n in per if n.startswith("fused"))
        fused_median = per[fused_name]["median"]
        for name, s in per.items():
            ratio = s["median"] / fused_median
            lines.append(f"| {batch} | {name} | {s['median'] * 1e3:.2f} | {s['p90'] * 1e3:.2f} | "
                         f"{int(batch) / s['median']:.1f} | {ratio:.2f}x |")
    lines.append("")
    lines.append("fused speed-up = provider median / fused median (interleaved runs, same process).")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    result = run(args)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"raw timings written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
