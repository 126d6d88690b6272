"""Tier-1 correctness on a GPU: every backend on the paper's real models, against float64, in bf16.

For each model (S18x2, S36x1, B12x1, B18x2 by default) and batch (1, 8, 64, 256):
    ref64  the reference model in float64 on the GPU (weights with norm and LayerScale gains far from init)
    ref16  the same reference in bfloat16: the error an unfused bf16 model makes
    fused  the providers fused[torch], fused[triton], fused[triton/fusednorm] and (with --engine, batch <= 8)
           fused[cuda], the C++ engine: convert(model, backend=...) in bfloat16; must satisfy
           |fused − ref64| <= 2·|ref16 − ref64| + 1.6e-2 (max over logits), and contain no NaN/Inf
    graph  fused.capture([batch]) replayed on the same images == the eager output, bitwise (Triton backends)
Then the other families (`--families`, default: the families preset's CUDA model of every family with a fused path
at run time — mixer_b16_224, resmlp_24_224, gmlp_b16_224, vip_m7, ffonly_base) at batch 1 and 64
(`--family-batches`), weights far from init (ResMLP's Affine and LayerScales included), three rows each:
    fused[triton]            convert(model, backend="triton") in bfloat16, within the same bound against float64
    fused[triton]+graph      its CUDA-graph replay, within the same bound, and == the eager output, bitwise
    fused[triton/fusednorm]  convert(model, backend="triton", norm="fused"), within the same bound
Each row is appended to the JSON file as soon as it is known, so a run cut short keeps what it checked.

    python bench/gpu_check.py --out OUT/check.json [--models S18x2 ...] [--batches 1 8 64 256] [--engine]
        [--families mixer_b16_224 ...] [--family-batches 1 64] [--deadline SECONDS]
    python bench/gpu_check.py --out c.json --cpu-dry-run --models tiny_2x2 --families mixer_tiny_2x2 --batches 1 3
        # the script's own logic on the CPU: fused[torch] rows only (default families: their tiny test models)

Exit status: 0 all rows pass, 1 a row fails, 2 no CUDA device. The JSON names the device, the versions, the dtype,
the autotune setting and the command.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))   # the tests' weight perturbation: one definition of "far from init"

import threethings_fast as ttf  # noqa: E402
from threethings_fast.models import FAMILIES  # noqa: E402
from threethings_fast.profile.cli import FAMILY_PEERS  # noqa: E402
from helpers import randomize  # noqa: E402  (the tests' "far from init")
from threethings_fast.timing import device_name  # noqa: E402

ATOL_BF16 = 1.6e-2
#: The fused models checked, by their provider names (threethings_fast.providers).
BACKENDS = ("fused[torch]", "fused[triton]", "fused[triton/fusednorm]", "fused[cuda]")
#: The other families: the engine is ViT-only; the graph replay gets its own row.
FAMILY_BACKENDS = ("fused[triton]", "fused[triton]+graph", "fused[triton/fusednorm]")
#: The dry run's default family models (TINY_TABLE names: odd widths, a few blocks).
TINY_FAMILY_MODELS = {"mixer": "mixer_tiny_2x2", "resmlp": "resmlp_tiny_2x2", "gmlp": "gmlp_tiny_2",
                      "vip": "vip_test_a", "ffonly": "ffonly_test_a"}


def default_families(dry_run: bool) -> list[str]:
    """Every family with a fused path now (read at run time): its CUDA model of the families preset, or for the
    dry run its tiny test model."""
    table = TINY_FAMILY_MODELS if dry_run else {f: peer[1] for f, peer in FAMILY_PEERS.items()}
    return [table[f] for f, family in FAMILIES.items() if f != "vit" and family.fusable and f in table]


def build(backend: str, model, dtype):
    name, _, variant = backend[len("fused["):backend.index("]")].partition("/")
    return ttf.convert(model, backend=name, dtype=dtype, norm="fused" if variant == "fusednorm" else "separate")


def env_record(args, dev) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    return {"device": device_name(dev), "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda, "dtype": "bfloat16",
            "autotune": os.environ.get("TTF_TRITON_AUTOTUNE", "1") != "0",
            "command": " ".join([Path(sys.executable).name] + sys.argv)}


@torch.no_grad()
def check_model(name: str, batches, backends, rows, write, deadline, dev) -> None:
    """Rows of model `name` (any family) for each provider in `backends` and batch. A "+graph" provider is the
    replay of its eager provider's model, checked against float64 like it; without one, the eager Triton rows
    check the replay == eager themselves."""
    ref64 = randomize(ttf.create_model(name)).double().to(dev).eval()
    ref16 = ttf.create_model(name).to(torch.bfloat16).to(dev).eval()
    ref16.load_state_dict(ref64.state_dict())
    fused = {}
    for backend in backends:
        eager = backend.removesuffix("+graph")
        if eager in fused:
            fused[backend] = fused[eager]
            continue
        try:
            fused[backend] = build(eager, ref16, torch.bfloat16)
        except Exception as exc:  # noqa: BLE001 - recorded; the other backends still run
            rows.append({"model": name, "provider": backend, "batch": None, "ok": False,
                         "error": f"convert: {type(exc).__name__}: {exc}"})
            write()
    cfg = ref64.config
    for batch in batches:
        if time.monotonic() > deadline:
            rows.append({"model": name, "batch": batch, "ok": None, "error": "skipped: deadline"})
            write()
            continue
        g = torch.Generator(device=dev.type).manual_seed(batch)
        x64 = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g, device=dev,
                          dtype=torch.float64)
        x16 = x64.to(torch.bfloat16)
        want = ref64(x64)
        ref_err = (ref16(x16).double() - want).abs().max().item()
        bound = 2 * ref_err + ATOL_BF16
        for backend, model in fused.items():
            if backend == "fused[cuda]" and batch > 8:
                continue
            row = {"model": name, "provider": backend, "batch": batch, "ref_err": ref_err, "bound": bound}
            t0 = time.perf_counter()
            try:
                out = model(x16)
                replay = None
                if backend.endswith("+graph"):
                    replay, eager = model.capture([batch]), out
                    out = replay(x16).clone()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                err = (out.double() - want).abs().max().item()
                row.update(err=err, finite=bool(torch.isfinite(out).all()), ok=bool(err <= bound))
                row["ok"] = row["ok"] and row["finite"]
                if replay is not None:
                    same = torch.equal(out, eager)
                    row.update(graph_equal=same, ok=row["ok"] and same)
                elif backend.startswith("fused[triton") and dev.type == "cuda" and f"{backend}+graph" not in fused:
                    replay = model.capture([batch])
                    same = torch.equal(replay(x16), out)
                    row.update(graph_equal=same, ok=row["ok"] and same)
                del replay
            except Exception as exc:  # noqa: BLE001
                row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            write()
            print(f"[check] {name} b{batch} {backend}: {'ok' if row['ok'] else 'FAIL'} "
                  f"err {row.get('err', float('nan')):.3g} bound {bound:.3g} ({row['seconds']} s)"
                  + (f" {row['error']}" if "error" in row else ""), flush=True)
        del want, x64, x16
    del fused, ref64, ref16
    torch.cuda.empty_cache()


def markdown(record) -> str:
    lines = [f"# Tier-1 correctness: {record['env']['device']}", "",
             f"torch {record['env']['torch']}, triton {record['env']['triton']}, bf16, autotune "
             f"{'on' if record['env']['autotune'] else 'off'}; `{record['env']['command']}`", "",
             "| model | batch | provider | err | bound (2x ref bf16 + atol) | graph == eager | ok |",
             "|---|---:|---|---:|---:|---|---|"]
    for r in record["rows"]:
        err = f"{r['err']:.3g}" if "err" in r else r.get("error", "")
        bound = f"{r['bound']:.3g}" if "bound" in r else ""
        graph = {True: "yes", False: "NO"}.get(r.get("graph_equal"), "")
        ok = {True: "ok", False: "**FAIL**", None: "skipped"}[r["ok"]]
        lines.append(f"| {r['model']} | {r.get('batch', '')} | {r.get('provider', '')} | {err} | {bound} | {graph} "
                     f"| {ok} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON file (a .md twin is written next to it)")
    ap.add_argument("--models", nargs="+", default=["S18x2", "S36x1", "B12x1", "B18x2"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64, 256])
    ap.add_argument("--engine", action="store_true", help="also the C++ engine (batch <= 8; builds it if needed)")
    ap.add_argument("--families", nargs="*", default=None, metavar="MODEL",
                    help="models of the other families (default: each fusable family's CUDA model of the profiler's "
                         "families preset; with --cpu-dry-run its tiny test model; none: no family rows)")
    ap.add_argument("--family-batches", nargs="+", type=int, default=None,
                    help="batches of the family models (default 1 64; with --cpu-dry-run: --batches)")
    ap.add_argument("--deadline", type=float, default=175.0, help="seconds; later batches are recorded as skipped")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="check the script itself on the CPU: fused[torch] only (give tiny --models)")
    args = ap.parse_args(argv)
    families = default_families(args.cpu_dry_run) if args.families is None else args.families
    family_batches = args.family_batches or (args.batches if args.cpu_dry_run else [1, 64])
    if args.cpu_dry_run:
        dev, backends, family_backends = torch.device("cpu"), ["fused[torch]"], ["fused[torch]"]
    elif not torch.cuda.is_available():
        print("gpu_check.py: no CUDA device; this is the GPU run's correctness step", file=sys.stderr)
        return 2
    else:
        dev = torch.device("cuda")
        backends = [b for b in BACKENDS if b != "fused[cuda]" or args.engine]
        family_backends = list(FAMILY_BACKENDS)
    record = {"env": env_record(args, dev), "rows": []}
    out = Path(args.out)

    def write():
        out.write_text(json.dumps(record, indent=1))
        out.with_suffix(".md").write_text(markdown(record))

    deadline = time.monotonic() + args.deadline
    plan = [(name, args.batches, backends) for name in args.models] + \
        [(name, family_batches, family_backends) for name in families]
    for name, batches, providers in plan:
        if time.monotonic() > deadline:      # not even the float64 reference and the conversions
            record["rows"].append({"model": name, "batch": None, "ok": None, "error": "skipped: deadline"})
            continue
        check_model(name, batches, providers, record["rows"], write, deadline, dev)
    write()
    return 0 if all(r["ok"] is not False for r in record["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
