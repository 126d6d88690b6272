"""Tier-1 correctness on a GPU: every backend on the paper's real models, against float64, in bf16.

For each model (S18x2, S36x1, B12x1, B18x2 by default) and batch (1, 8, 64, 256):
    ref64  the reference model in float64 on the GPU (weights with norm and LayerScale gains far from init)
    ref16  the same reference in bfloat16: the error an unfused bf16 model makes
    fused  the providers fused[torch], fused[triton], fused[triton/fusednorm] and (with --engine, batch <= 8)
           fused[cuda], the C++ engine: convert(model, backend=...) in bfloat16; must satisfy
           |fused − ref64| <= 2·|ref16 − ref64| + 1.6e-2 (max over logits), and contain no NaN/Inf
    graph  fused.capture([batch]) replayed on the same images == the eager output, bitwise (Triton backends)
Each row is appended to the JSON file as soon as it is known, so a run cut short keeps what it checked.

    python bench/gpu_check.py --out OUT/check.json [--models S18x2 ...] [--batches 1 8 64 256] [--engine]
        [--deadline SECONDS]

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
from threethings_fast.timing import device_name  # noqa: E402

ATOL_BF16 = 1.6e-2
#: The fused models checked, by their provider names (threethings_fast.providers).
BACKENDS = ("fused[torch]", "fused[triton]", "fused[triton/fusednorm]", "fused[cuda]")


def build(backend: str, model, dtype):
    name, _, variant = backend[len("fused["):-1].partition("/")
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
    from helpers import randomize
    ref64 = randomize(ttf.create_model(name)).double().to(dev).eval()
    ref16 = ttf.create_model(name).to(torch.bfloat16).to(dev).eval()
    ref16.load_state_dict(ref64.state_dict())
    fused = {}
    for backend in backends:
        try:
            fused[backend] = build(backend, ref16, torch.bfloat16)
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
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                err = (out.double() - want).abs().max().item()
                row.update(err=err, finite=bool(torch.isfinite(out).all()), ok=bool(err <= bound))
                row["ok"] = row["ok"] and row["finite"]
                if backend.startswith("fused[triton") and dev.type == "cuda":
                    replay = model.capture([batch])
                    same = torch.equal(replay(x16), out)
                    row.update(graph_equal=same, ok=row["ok"] and same)
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
    ap.add_argument("--deadline", type=float, default=150.0, help="seconds; later batches are recorded as skipped")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="check the script itself on the CPU: fused[torch] only (give tiny --models)")
    args = ap.parse_args(argv)
    if args.cpu_dry_run:
        dev, backends = torch.device("cpu"), ["fused[torch]"]
    elif not torch.cuda.is_available():
        print("gpu_check.py: no CUDA device; this is the GPU run's correctness step", file=sys.stderr)
        return 2
    else:
        dev = torch.device("cuda")
        backends = [b for b in BACKENDS if b != "fused[cuda]" or args.engine]
    record = {"env": env_record(args, dev), "rows": []}
    out = Path(args.out)

    def write():
        out.write_text(json.dumps(record, indent=1))
        out.with_suffix(".md").write_text(markdown(record))

    deadline = time.monotonic() + args.deadline
    for name in args.models:
        if time.monotonic() > deadline:      # not even the float64 reference and the conversions
            record["rows"].append({"model": name, "batch": None, "ok": None, "error": "skipped: deadline"})
            continue
        check_model(name, args.batches, backends, record["rows"], write, deadline, dev)
    write()
    return 0 if all(r["ok"] is not False for r in record["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
