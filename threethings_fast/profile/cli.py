"""Command line of the profiler.

    python -m threethings_fast.profile                       # --quick on CPU (~2 min), --full on CUDA
    python -m threethings_fast.profile --full --out results/ # every batch size: 1..64 on CPU, 1..256 on CUDA
    python -m threethings_fast.profile --models tiny_2x2 tiny_4x1 --batches 1 2 --reps 2 --out /tmp/p
    python -m threethings_fast.profile --trace S18x2:fused[torch]:4     # + a Chrome trace of that config

Presets (any explicit option overrides its part of the preset):
    CPU  --quick  S36x1 S18x2; batches 1 2 4 8; 1 warm-up + 4 timed rounds; time budget 110 s; float32
    CPU  --full   S36x1 S18x2; batches 1 2 4 8 16 32 64; 1 + 5 rounds
    CUDA --quick  S36x1 S18x2 B36x1 B18x2; batches 1 4 16 64; 3 + 20 rounds; bfloat16
    CUDA --full   S36x1 S18x2 B36x1 B18x2; batches 1 2 4 ... 256; 5 + 30 rounds; bfloat16
Ctrl-C (SIGINT) stops the sweep and still writes profile.json / profile.md with what was measured ("interrupted":
true in the JSON, exit code 130).
Providers by default: reference, branch_by_branch, fused[torch], and on CUDA fused[triton], fused[triton]+graph and
the same two with the LayerNorms fused into the GEMMs (fused[triton/fusednorm], fused[triton/fusednorm]+graph);
--compile adds torch.compile of the reference (CUDA; one compilation per model and batch size: slow).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import torch

from .sweep import PROVIDERS, Settings, run_profile, slug

PRESETS = {
    ("cpu", "quick"): dict(models=["S36x1", "S18x2"], batches=[1, 2, 4, 8], warmup=1, reps=4, time_budget=110.0),
    ("cpu", "full"): dict(models=["S36x1", "S18x2"], batches=[1, 2, 4, 8, 16, 32, 64], warmup=1, reps=5,
                          time_budget=None),
    ("cuda", "quick"): dict(models=["S36x1", "S18x2", "B36x1", "B18x2"], batches=[1, 4, 16, 64], warmup=3,
                            reps=20, time_budget=None),
    ("cuda", "full"): dict(models=["S36x1", "S18x2", "B36x1", "B18x2"], batches=[1, 2, 4, 8, 16, 32, 64, 128, 256],
                           warmup=5, reps=30, time_budget=None),
}
DEFAULT_PROVIDERS = ["reference", "branch_by_branch", "fused[torch]", "fused[triton]", "fused[triton]+graph",
                     "fused[triton/fusednorm]", "fused[triton/fusednorm]+graph"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m threethings_fast.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="preset", action="store_const", const="quick",
                      help="few batches and rounds (default on CPU: about two minutes on 2 cores)")
    mode.add_argument("--full", dest="preset", action="store_const", const="full",
                      help="the whole sweep (default on CUDA)")
    p.add_argument("--models", nargs="+", default=None, help="model names (any spelling of list_models())")
    p.add_argument("--batches", nargs="+", type=int, default=None, help="batch sizes, ascending")
    p.add_argument("--providers", nargs="+", default=None, choices=PROVIDERS, metavar="PROVIDER",
                   help=f"subset of {', '.join(PROVIDERS)} (those that cannot run here are skipped and listed)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the reference (CUDA)")
    p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up rounds per batch size")
    p.add_argument("--reps", type=int, default=None, help="timed rounds per batch size")
    p.add_argument("--min-seconds", type=float, default=0.0,
                   help="keep timing a batch size until this many seconds have passed (at most 50×reps rounds)")
    p.add_argument("--time-budget", type=float, default=-1.0, metavar="SECONDS",
                   help="skip batches (run order: smallest, largest, the rest) or time fewer rounds where the run "
                        "would exceed this; the largest batch always runs, with >= 2 rounds (0: no budget; "
                        "default: the preset's)")
    p.add_argument("--out", default=None, help="output folder (default bench/results/profile_<device>)")
    p.add_argument("--trace", nargs="?", const="auto", default=None, metavar="MODEL:PROVIDER:BATCH",
                   help="also write a torch.profiler Chrome trace of one config (default: the first xK model, its "
                        "last fused provider, the smallest batch); parts may be left empty, e.g. ':reference:1'")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-peak", action="store_true", help="skip measuring the matmul / copy peak")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kind = "cuda" if device.type == "cuda" else "cpu"
    preset_name = args.preset or ("full" if kind == "cuda" else "quick")
    preset = PRESETS[(kind, preset_name)]
    providers = list(args.providers or DEFAULT_PROVIDERS)
    if args.compile and "compile" not in providers:
        providers.insert(1, "compile")
    batches = args.batches or preset["batches"]
    if sorted(batches) != list(batches) or min(batches) < 1:
        raise SystemExit(f"--batches must be positive and ascending, got {batches}")
    custom = any(x is not None for x in (args.models, args.batches, args.warmup, args.reps))
    budget = preset["time_budget"] if args.time_budget < 0 else (args.time_budget or None)
    return Settings(
        models=args.models or preset["models"], batches=list(batches), providers=providers, device=str(device),
        dtype=DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if kind == "cuda" else torch.float32),
        warmup=preset["warmup"] if args.warmup is None else args.warmup,
        reps=preset["reps"] if args.reps is None else max(1, args.reps),
        min_seconds=args.min_seconds, time_budget_s=budget, threads=args.threads,
        preset=f"{preset_name}+custom" if custom else preset_name, seed=args.seed,
        measure_peak=not args.no_peak, progress=not args.no_progress, trace=args.trace)


def default_out(device: str) -> str:
    dev = torch.device(device)
    name = "cpu" if dev.type == "cpu" else slug(torch.cuda.get_device_name(dev).replace(" ", "_"))
    return os.path.join("bench", "results", f"profile_{name}")


def write_outputs(result: dict, out: str, plots: bool = True) -> dict:
    """profile.json, profile.md and the PNGs into `out`; fills result["files"] (paths relative to out).
    The JSON and markdown are written first, so a plotting failure (e.g. no matplotlib on an offline GPU image)
    loses no measurement; it is recorded in result["errors"] instead."""
    from .report import format_markdown

    os.makedirs(out, exist_ok=True)
    files = {"json": "profile.json", "markdown": "profile.md", "plots": []}
    if result.get("trace") and os.path.isabs(result["trace"]["file"]):
        result["trace"]["file"] = os.path.relpath(result["trace"]["file"], out)
    result["files"] = files

    def dump():
        with open(os.path.join(out, files["markdown"]), "w") as f:
            f.write(format_markdown(result))
        with open(os.path.join(out, files["json"]), "w") as f:
            json.dump(result, f, indent=1)

    dump()
    if plots:
        try:
            from .plots import plot_profile
            files["plots"] = [os.path.relpath(p, out) for p in plot_profile(result, out)]
        except Exception as exc:  # noqa: BLE001 - the numbers are already on disk
            result["errors"].append({"model": None, "provider": None, "batch": None,
                                     "error": f"plots not written: {type(exc).__name__}: {exc}", "traceback": ""})
            print(f"profile: plots not written ({type(exc).__name__}: {exc})", file=sys.stderr)
        dump()
    return files


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    settings = settings_from_args(args)
    out = args.out or default_out(settings.device)
    settings.trace_dir = out
    result = run_profile(settings, argv)
    write_outputs(result, out, plots=not args.no_plots)
    with open(os.path.join(out, "profile.md")) as f:
        print(f.read())
    print(f"wrote {', '.join(os.path.join(out, p) for p in _listed(result['files']))}"
          + (f", {os.path.join(out, result['trace']['file'])}" if result.get("trace") else ""))
    if result.get("interrupted"):
        return 130   # the shell's code for SIGINT: the files hold a partial run
    return 1 if (result["errors"] and not result["results"]) else 0


def _listed(files: dict) -> list[str]:
    return [files["json"], files["markdown"], *files["plots"]]
