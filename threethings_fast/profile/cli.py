"""Command line of the profiler.

    python -m threethings_fast.profile                       # --quick on CPU (~2 min), --full on CUDA
    python -m threethings_fast.profile --full --out results/ # every batch size: 1..64 on CPU, 1..256 on CUDA
    python -m threethings_fast.profile --models tiny_2x2 tiny_4x1 --batches 1 2 --reps 2 --out /tmp/p
    python -m threethings_fast.profile --trace S18x2:fused[torch]:4     # + a Chrome trace of that config
    python -m threethings_fast.profile --preset report        # the short reference-vs-fused report (make report)
    python -m threethings_fast.profile --preset families      # the MLP families beside a ViT of about their FLOPs
    python -m threethings_fast.profile --list-providers       # every provider, and whether it can run here

Presets (any explicit option overrides its part of the preset):
    CPU  --quick   S36x1 S18x2; batches 1 2 4 8; 1 warm-up + 4 timed rounds; time budget 110 s; float32
    CPU  --full    S36x1 S18x2; batches 1 2 4 8 16 32 64; 1 + 5 rounds
    CUDA --quick   S36x1 S18x2 B36x1 B18x2; batches 1 4 16 64; 3 + 20 rounds; bfloat16
    CUDA --full    S36x1 S18x2 B36x1 B18x2; batches 1 2 4 ... 256; 5 + 30 rounds; bfloat16
    CPU  --preset report   S18x2; batches 1 16; 1 + 5 rounds; reference, branch_by_branch, fused[auto]; written
                           to bench/results/report_<device> (not over the main job's profile)
    CUDA --preset report   the same at batches 1 64, 5 + 50 rounds
    CPU  --preset families S12x1 (4.6 GMACs) beside mixer_s16_224 (3.8), resmlp_12_224 (3.0), gmlp_s16_224 (4.4),
                           vip_s7 (6.9), ffonly_tiny (1.4); batches 1 16; 1 + 5 rounds; reference, fused[auto],
                           timm; written to bench/results/families_<device>
    CUDA --preset families B12x1 (17.6 GMACs) beside mixer_b16_224 (12.6), resmlp_24_224 (6.0), gmlp_b16_224
                           (15.8), vip_m7 (16.3), ffonly_base (14.1); batches 1 64 256; 3 + 20 rounds; bfloat16;
                           fused[triton], fused[triton]+graph, timm, timm+compile
                           A family whose fused path is missing at run time (models.FAMILIES[...].fusable) is left
                           out of the families preset, with a note in the report; the ViT is always in.
Ctrl-C (SIGINT) stops the sweep and still writes profile.json / profile.md with what was measured ("interrupted":
true in the JSON, exit code 130).
Providers by default: reference, branch_by_branch, fused[torch], and on CUDA fused[triton], fused[triton]+graph and
the same two with the LayerNorms fused into the GEMMs (fused[triton/fusednorm], fused[triton/fusednorm]+graph);
--compile adds torch.compile of the reference (CUDA; one compilation per model and batch size: slow). Every name of
threethings_fast.providers is accepted by --providers and --trace; --list-providers says what each runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import torch

from ..models import FAMILIES
from ..providers import ALIASES, REGISTRY, UnknownProvider, available, names, resolve
from ..providers.registry import resolve_config
from .common import Settings, slug
from .sweep import run_profile
from .trace import parse_trace_spec

DEFAULT_PROVIDERS = ["reference", "branch_by_branch", "fused[torch]", "fused[triton]", "fused[triton]+graph",
                     "fused[triton/fusednorm]", "fused[triton/fusednorm]+graph"]
REPORT_PROVIDERS = ["reference", "branch_by_branch", "fused[auto]"]
# The families preset: per family, its (CPU, CUDA) model, each of about the matmul MACs of the family's ViT peer
# (GMACs per 224-px image in the comments, threethings_fast.macs).
FAMILY_PEERS = {
    "vit": ("S12x1", "B12x1"),                         # 4.6 / 17.6
    "mixer": ("mixer_s16_224", "mixer_b16_224"),       # 3.8 / 12.6
    "resmlp": ("resmlp_12_224", "resmlp_24_224"),      # 3.0 / 6.0
    "gmlp": ("gmlp_s16_224", "gmlp_b16_224"),          # 4.4 / 15.8
    "vip": ("vip_s7", "vip_m7"),                       # 6.9 / 16.3
    "ffonly": ("ffonly_tiny", "ffonly_base"),          # 1.4 / 14.1
}
FAMILIES_PROVIDERS = {"cpu": ["reference", "fused[auto]", "timm"],
                      "cuda": ["fused[triton]", "fused[triton]+graph", "timm", "timm+compile"]}


def family_peers(kind: str) -> tuple[list[str], list[str]]:
    """The families preset's models on `kind` ("cpu" / "cuda") and notes on the families it leaves out: the ViT,
    then every family with a fused path now (`Family.fusable`, read at run time) and a peer in FAMILY_PEERS."""
    column = 0 if kind == "cpu" else 1
    models, notes = [], []
    for name, family in FAMILIES.items():
        peer = FAMILY_PEERS.get(name)
        if peer is None:
            notes.append(f"{family.title}: no model of the families preset (FAMILY_PEERS in profile/cli.py)")
        elif name != "vit" and not family.fusable:
            notes.append(f"{peer[column]} ({family.title}) left out: no fused path yet")
        else:
            models.append(peer[column])
    return models, notes


PRESETS = {
    ("cpu", "quick"): dict(models=["S36x1", "S18x2"], batches=[1, 2, 4, 8], warmup=1, reps=4, time_budget=110.0),
    ("cpu", "full"): dict(models=["S36x1", "S18x2"], batches=[1, 2, 4, 8, 16, 32, 64], warmup=1, reps=5,
                          time_budget=None),
    ("cpu", "report"): dict(models=["S18x2"], batches=[1, 16], warmup=1, reps=5, time_budget=None,
                            providers=REPORT_PROVIDERS),
    ("cuda", "quick"): dict(models=["S36x1", "S18x2", "B36x1", "B18x2"], batches=[1, 4, 16, 64], warmup=3,
                            reps=20, time_budget=None),
    ("cuda", "full"): dict(models=["S36x1", "S18x2", "B36x1", "B18x2"], batches=[1, 2, 4, 8, 16, 32, 64, 128, 256],
                           warmup=5, reps=30, time_budget=None),
    ("cuda", "report"): dict(models=["S18x2"], batches=[1, 64], warmup=5, reps=50, time_budget=None,
                             providers=REPORT_PROVIDERS),
    # models=None: family_peers() at run time
    ("cpu", "families"): dict(models=None, batches=[1, 16], warmup=1, reps=5, time_budget=None,
                              providers=FAMILIES_PROVIDERS["cpu"]),
    ("cuda", "families"): dict(models=None, batches=[1, 64, 256], warmup=3, reps=20, time_budget=None,
                               providers=FAMILIES_PROVIDERS["cuda"]),
}
PRESET_NAMES = ("quick", "full", "report", "families")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def provider_name(text: str) -> str:
    """--providers values: a registered name, or an older spelling (mapped, with a note on stderr)."""
    try:
        name = resolve(text)
    except UnknownProvider as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if name != text:
        print(f"profile: provider {text!r} is now called {name!r}", file=sys.stderr)
    return name


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m threethings_fast.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="preset", action="store_const", const="quick",
                      help="few batches and rounds (default on CPU: about two minutes on 2 cores)")
    mode.add_argument("--full", dest="preset", action="store_const", const="full",
                      help="the whole sweep (default on CUDA)")
    mode.add_argument("--preset", dest="preset", choices=PRESET_NAMES,
                      help="a preset by name: quick, full, report (the short reference-vs-fused report) or "
                           "families (the MLP families beside a ViT of about their FLOPs)")
    p.add_argument("--models", nargs="+", default=None,
                   help="model names: any spelling of list_models(), or any family's name (mixer_b16_224, ...)")
    p.add_argument("--batches", nargs="+", type=int, default=None, help="batch sizes, ascending")
    p.add_argument("--providers", nargs="+", default=None, type=provider_name, metavar="PROVIDER",
                   help=f"any of {', '.join(names())} (those that cannot run here are skipped and listed)")
    p.add_argument("--list-providers", action="store_true",
                   help="print every provider, what it runs and whether it can run here, then exit")
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
    p.add_argument("--out", default=None,
                   help="output folder (default bench/results/profile_<device>; report preset: report_<device>; "
                        "families preset: families_<device>)")
    p.add_argument("--trace", nargs="?", const="auto", default=None, metavar="MODEL:PROVIDER:BATCH",
                   help="also write a torch.profiler Chrome trace of one config (default: the first xK model, its "
                        "last fused provider, the smallest batch); parts may be left empty, e.g. ':reference:1'")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-peak", action="store_true", help="skip measuring the matmul / copy peak")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.trace is not None:
        try:   # a typo here should fail now, not after the sweep
            model, provider, batch = parse_trace_spec(args.trace)
        except ValueError as exc:
            p.error(f"argument --trace: {exc}")
        if args.trace != "auto":
            args.trace = f"{model}:{provider}:{batch}"
    return args


def _device(args: argparse.Namespace) -> torch.device:
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _preset(args: argparse.Namespace, device: torch.device) -> tuple[str, dict]:
    """(name, settings) of the preset; a preset with models=None gets the families preset's models and notes."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    name = args.preset or ("full" if kind == "cuda" else "quick")
    preset = dict(PRESETS[(kind, name)], notes=[])
    if preset["models"] is None:
        preset["models"], preset["notes"] = family_peers(kind)
    return name, preset


def settings_from_args(args: argparse.Namespace) -> Settings:
    device = _device(args)
    preset_name, preset = _preset(args, device)
    providers = list(args.providers or preset.get("providers", DEFAULT_PROVIDERS))
    if args.compile and "compile" not in providers:
        providers.insert(1, "compile")
    batches = args.batches or preset["batches"]
    if sorted(batches) != list(batches) or min(batches) < 1:
        raise SystemExit(f"--batches must be positive and ascending, got {batches}")
    custom = any(x is not None for x in (args.models, args.batches, args.warmup, args.reps, args.providers))
    budget = preset["time_budget"] if args.time_budget < 0 else (args.time_budget or None)
    return Settings(
        models=args.models or preset["models"], batches=list(batches), providers=providers, device=str(device),
        dtype=DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32),
        warmup=preset["warmup"] if args.warmup is None else args.warmup,
        reps=preset["reps"] if args.reps is None else max(1, args.reps),
        min_seconds=args.min_seconds, time_budget_s=budget, threads=args.threads,
        preset=f"{preset_name}+custom" if custom else preset_name, seed=args.seed,
        measure_peak=not args.no_peak, progress=not args.no_progress, trace=args.trace,
        notes=[] if args.models else list(preset["notes"]))


def format_provider_list(device: torch.device, model: str) -> str:
    """Every registered provider: whether it can run `model` (any family's) on `device` (or why not) and what it
    runs."""
    cfg = resolve_config(model)
    lines = [f"providers (on {device}, for {model}):"]
    width = max(len(n) for n in names())
    for name in names():
        reason = available(name, cfg, device)
        where = "runs here" if reason is None else f"skipped here: {reason}"
        lines.append(f"  {name:{width}}  {REGISTRY[name].runs}\n  {'':{width}}  ({where})")
    lines.append("older spellings accepted by --providers: " + ", ".join(f"{a} -> {n}" for a, n in ALIASES.items()))
    return "\n".join(lines)


def default_out(device: str, preset: str = "quick") -> str:
    """bench/results/profile_<device>, or report_<device> / families_<device> for the report / families presets
    (they do not overwrite the main job's profile)."""
    dev = torch.device(device)
    name = "cpu" if dev.type == "cpu" else slug(torch.cuda.get_device_name(dev).replace(" ", "_"))
    base = preset.split("+")[0]
    kind = base if base in ("report", "families") else "profile"
    return os.path.join("bench", "results", f"{kind}_{name}")


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


def run(argv: Optional[list] = None) -> tuple[int, str, Optional[dict]]:
    """The command: (exit code, output folder, result; None with --list-providers, which writes nothing)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.list_providers:
        device = _device(args)
        print(format_provider_list(device, (args.models or _preset(args, device)[1]["models"])[0]))
        return 0, "", None
    settings = settings_from_args(args)
    out = args.out or default_out(settings.device, settings.preset)
    settings.trace_dir = out
    result = run_profile(settings, argv)
    write_outputs(result, out, plots=not args.no_plots)
    with open(os.path.join(out, "profile.md")) as f:
        print(f.read())
    print(f"wrote {', '.join(os.path.join(out, p) for p in _listed(result['files']))}"
          + (f", {os.path.join(out, result['trace']['file'])}" if result.get("trace") else ""))
    if result.get("interrupted"):
        return 130, out, result   # the shell's code for SIGINT: the files hold a partial run
    return (1 if (result["errors"] and not result["results"]) else 0), out, result


def main(argv: Optional[list] = None) -> int:
    return run(argv)[0]


def _listed(files: dict) -> list[str]:
    return [files["json"], files["markdown"], *files["plots"]]
