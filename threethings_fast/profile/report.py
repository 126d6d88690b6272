"""The markdown report of a profile result: run header, the models, the families side by side (when the run holds
more than one family), Table-4-style speed-ups, the paper's anchor, the full table."""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

from ..configs import from_name
from ..providers import names
from .ratios import best_fused

# Touvron et al. 2022, Table 4: throughput (images/s) on one V100 of the x2 models, their branches executed
# sequentially ("seq") or in parallel ("par"), at batch 1 / 4 / 16 / 64.
PAPER_TABLE4 = {
    "S18x2": {"seq": {1: 44, 4: 168, 16: 569, 64: 647}, "par": {1: 61, 4: 245, 16: 518, 64: 575}},
    "B18x2": {"seq": {1: 42, 4: 155, 16: 266, 64: 286}, "par": {1: 61, 4: 187, 16: 231, 64: 248}},
}


def _fmt(x: Optional[float], digits: int = 1, suffix: str = "") -> str:
    if x is None:
        return "—"
    if abs(x) >= 1000:
        return f"{x:,.0f}{suffix}"
    if abs(x) < 10 and not suffix:   # CPU images/s and small TFLOP/s: keep about three significant digits
        digits = max(digits, 2 if abs(x) >= 1 else 3)
    return f"{x:.{digits}f}{suffix}"


def _rows(result: dict) -> dict:
    return {(r["model"], r["provider"], r["batch"]): r for r in result["results"]}


def _ips(idx, model, provider, batch) -> Optional[float]:
    row = idx.get((model, provider, batch))
    return row["images_per_s"] if row else None


def _div(a, b):
    return a / b if a is not None and b else None


def _family(info: dict) -> str:
    return info.get("family", "vit")      # files written before the field existed hold ViTs only


def _k(info: dict) -> int:
    return info["config"].get("num_parallel", 1)    # families without parallel blocks: 1


def _config_key(config: dict) -> str:
    # JSON text, not a tuple of items: list-valued fields (ViP's per-stage tuples, read back from JSON) must key too
    return json.dumps(config, sort_keys=True)


def header(result: dict) -> list[str]:
    d, v, s = result["device"], result["versions"], result["settings"]
    dev = f"{d['name']} ({d['type']}" + (f", sm {d['capability']}" if d["capability"] else "") + ")"
    lines = [
        "# threethings_fast profile",
        "",
        f"- device: {dev}; torch threads {d['threads']} of {d['cpu_count']} CPUs",
        f"- dtype {result['dtype']}; torch {v['torch']}; triton {v['triton'] or '—'}; CUDA {v['cuda'] or '—'}; "
        f"threethings_fast {v['threethings_fast']}; Python {v['python']}",
        f"- preset `{s['preset']}`: models {', '.join(s['models'])}; batches {', '.join(map(str, s['batches']))}; "
        f"{s['warmup']} warm-up + {s['reps']} timed rounds per batch (round-robin over all model × provider pairs)",
        f"- run {result['created']}, {result['wall_s']:.0f} s wall" if result["wall_s"] else
        f"- run {result['created']}",
    ]
    ran = {}   # what a fused provider resolved to where its name does not say (fused[auto])
    for model, info in result["models"].items():
        for provider, backend in info.get("fused_backends", {}).items():
            named = provider[provider.find("[") + 1:provider.find("]")].split("/")[0]
            if named != backend:
                ran.setdefault((provider, backend), []).append(model)
    for (provider, backend), models in ran.items():
        lines.append(f"- {provider} ran backend `{backend}` ({', '.join(models)})")
    for note in s.get("notes", []):
        lines.append(f"- {note}")
    if not s.get("triton_autotune", True):
        lines.append("- Triton autotuning OFF (TTF_TRITON_AUTOTUNE=0): each kernel ran the first config of its list, "
                     "untuned")
    peak = result.get("peak")
    if peak:
        mm, cp = peak["matmul"], peak["copy"]
        lines.append(f"- measured peak: matmul {mm['n']}³ {mm['dtype']} **{mm['tflops']:.2f} TFLOP/s** (median "
                     f"{mm['tflops_median']:.2f}); copy {cp['bytes'] / 2 ** 20:.0f} MiB **{cp['gbps']:.0f} GB/s** "
                     f"(read + write)")
    if result.get("interrupted"):
        lines.append("- **interrupted (Ctrl-C or a time limit): partial results — batches and rounds after the "
                     "interruption are missing**")
    if result["skipped_batches"]:
        lines.append(f"- **time budget reached: batches {result['skipped_batches']} not run**")
    return lines


def models_table(result: dict) -> list[str]:
    """One line per model: its family, K, parameters and the FLOPs its TFLOP/s figures are computed from."""
    lines = ["## Models", "", "| model | family | K | params (M) | GFLOP / image | GMACs / image |",
             "|---|---|---:|---:|---:|---:|"]
    for model, info in result["models"].items():
        f = info["flops_per_image"]
        lines.append(f"| {model} | {_family(info)} | {_k(info)} | {info['params'] / 1e6:.3g} | {f / 1e9:.3g} | "
                     f"{f / 2e9:.3g} |")
    lines += ["", "FLOPs = 2 · matmul MACs per image (`threethings_fast.macs`; each family's `count_macs`, norms not "
              "counted).", ""]
    return lines


def _best(result: dict, model: str, batch: int, prefix: str) -> Optional[dict]:
    rows = [r for r in result["results"] if r["model"] == model and r["batch"] == batch
            and r["provider"].startswith(prefix)]
    return max(rows, key=lambda r: r["images_per_s"]) if rows else None


def families_table(result: dict) -> list[str]:
    """The models of different families side by side, per batch: reference, timm's best, ours (best fused), the
    ratios, and ours relative to the run's first ViT on its best fused provider. Empty for a one-family run."""
    models = result["models"]
    if len({_family(info) for info in models.values()}) < 2 or not result["results"]:
        return []
    idx = _rows(result)
    vit = next((m for m, info in models.items() if _family(info) == "vit"), None)
    lines = ["## Families side by side", "",
             "Ours = the fastest fused provider at that batch; timm = the fastest timm provider (eager or "
             "compiled). " + (f"vs {vit} = ours / {vit}'s ours (images/s)." if vit else ""), "",
             "| batch | model | family | GFLOP / image | reference im/s | timm im/s | ours im/s | ours TFLOP/s | "
             "ours / reference | ours / timm |" + (f" vs {vit} |" if vit else ""),
             "|---:|---|---|---:|---:|---|---|---:|---:|---:|" + ("---:|" if vit else "")]
    for b in sorted({r["batch"] for r in result["results"]}):
        vit_best = best_fused(result, vit, b) if vit else None
        for model, info in models.items():
            if not any(r["model"] == model and r["batch"] == b for r in result["results"]):
                continue
            ours, timm = best_fused(result, model, b), _best(result, model, b, "timm")
            ref = _ips(idx, model, "reference", b)
            o, t = (ours or {}).get("images_per_s"), (timm or {}).get("images_per_s")
            cells = [str(b), model, _family(info), f"{info['flops_per_image'] / 1e9:.3g}", _fmt(ref),
                     f"{_fmt(t)} ({timm['provider']})" if timm else "—",
                     f"{_fmt(o)} ({ours['provider']})" if ours else "—", _fmt(ours and ours["tflops"], 3),
                     _fmt(_div(o, ref), 2, "×"), _fmt(_div(o, t), 2, "×")]
            if vit:
                cells.append(_fmt(_div(o, vit_best and vit_best["images_per_s"]), 2, "×"))
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "All numbers from the same interleaved rounds; the models differ in FLOPs (column 4), so compare "
              "TFLOP/s as well as images/s.", ""]
    return lines


def results_table(result: dict) -> list[str]:
    order = {p: i for i, p in enumerate(names())}
    models = {m: i for i, m in enumerate(result["settings"]["models"])}
    rows = sorted(result["results"], key=lambda r: (models.get(r["model"], 99), r["batch"],
                                                    order.get(r["provider"], 99)))
    lines = ["## Throughput and latency", "",
             "| model | provider | batch | images/s | median ms | p90 ms | TFLOP/s | % of peak | n |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['provider']} | {r['batch']} | {_fmt(r['images_per_s'])} | "
                     f"{_fmt(r['latency_ms'], 2)} | {_fmt(r['p90_ms'], 2)} | {_fmt(r['tflops'], 3)} | "
                     f"{_fmt(r['pct_peak'], 1, '%')} | {r['n']} |")
    lines += ["", "TFLOP/s = batch · forward_flops / median (2·matmul MACs per image, `threethings_fast.macs`); "
              "% of peak = TFLOP/s / the measured matmul peak above."]
    return lines


def speedup_tables(result: dict, x1_models: bool = True) -> list[str]:
    """Per xK model: its same-parameter x1 partner (par/seq), branch by branch (ViTs), reference and ours side by
    side. Per x1 model that is no xK model's partner (e.g. the report preset run on S36x1 alone), unless
    `x1_models` is False (the families table has those numbers): reference and ours."""
    idx = _rows(result)
    partners = {info["sequential_partner"] for info in result["models"].values()}
    lines = []
    for model, info in result["models"].items():
        xk = _k(info) > 1
        bbb_col = xk and _family(info) == "vit"   # branch by branch: a mode of the ViT reference only
        if not xk and (model in partners or not x1_models):
            continue   # its numbers are in its xK partner's table (or the families table)
        seq = info["sequential_partner"]
        batches = sorted({r["batch"] for r in result["results"] if r["model"] == model})
        if not batches:
            continue
        lines += [f"## Speed-ups of {model}" + (f" (vs {seq}, same parameters and FLOPs)" if seq else ""), ""]
        head = ["batch"]
        if seq:
            head += [f"{seq} ref im/s", f"{model} ref im/s", "par/seq ref"]
        else:
            head += [f"{model} ref im/s"]
        if bbb_col:
            head += [f"{model} branch-by-branch im/s"]
        head += ["ours (best fused)", "ours im/s"]
        if seq:
            head += [f"{seq} same provider im/s", "par/seq ours"]
        if bbb_col:
            head += ["ours / branch-by-branch"]
        head += ["ours / reference"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
        for b in batches:
            best = best_fused(result, model, b)
            prov = best["provider"] if best else None
            ours = best["images_per_s"] if best else None
            bbb = _ips(idx, model, "branch_by_branch", b)
            ref = _ips(idx, model, "reference", b)
            cells = [str(b)]
            if seq:
                seq_ref = _ips(idx, seq, "reference", b)
                cells += [_fmt(seq_ref), _fmt(ref), _fmt(_div(ref, seq_ref), 2, "×")]
            else:
                cells += [_fmt(ref)]
            if bbb_col:
                cells += [_fmt(bbb)]
            cells += [prov or "—", _fmt(ours)]
            if seq:
                seq_ours = _ips(idx, seq, prov, b) if prov else None
                cells += [_fmt(seq_ours), _fmt(_div(ours, seq_ours), 2, "×")]
            if bbb_col:
                cells += [_fmt(_div(ours, bbb), 2, "×")]
            cells += [_fmt(_div(ours, ref), 2, "×")]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""]
        if seq:
            lines += ["par/seq > 1: the parallel model is faster than the sequential one of equal parameters and "
                      "FLOPs. All ratios are of images/s from the same interleaved rounds.", ""]
        else:
            lines += ["Ratios are of images/s from the same interleaved rounds.", ""]
    return lines


def anchor_table(result: dict) -> list[str]:
    """The paper's Table 4 (V100) beside ours at the same batch sizes."""
    idx = _rows(result)
    by_config = {}
    for name, info in result["models"].items():
        by_config.setdefault(_config_key(info["config"]), name)
    lines = ["## Anchor: the paper's Table 4 (one V100, images/s)", "",
             "Paper: the x2 model with its branches run sequentially (seq) or in parallel (par). Ours: the same "
             "model run branch by branch (the paper's seq), our fused model (best provider at that batch), and "
             "the same-parameter x1 model on that provider. Different hardware and dtype: compare the ratios, "
             "not the absolute numbers.", "",
             "| model | batch | paper seq | paper par | paper par/seq | ours branch-by-branch | ours fused | "
             "ours fused / branch-by-branch | ours x1 model | ours par/seq |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for short, paper in PAPER_TABLE4.items():
        key = _config_key(dataclasses.asdict(from_name(short)))
        model = by_config.get(key)
        seq = result["models"][model]["sequential_partner"] if model else None
        for b in sorted(paper["seq"]):
            p_seq, p_par = paper["seq"][b], paper["par"][b]
            best = best_fused(result, model, b) if model else None
            ours = best["images_per_s"] if best else None
            bbb = _ips(idx, model, "branch_by_branch", b) if model else None
            x1 = _ips(idx, seq, best["provider"], b) if (seq and best) else None
            fused_cell = f"{_fmt(ours)} ({best['provider']})" if best else "—"
            lines.append(f"| {short} | {b} | {p_seq} | {p_par} | {p_par / p_seq:.2f}× | {_fmt(bbb)} | {fused_cell} | "
                         f"{_fmt(_div(ours, bbb), 2, '×')} | {_fmt(x1)} | {_fmt(_div(ours, x1), 2, '×')} |")
    return lines


def problems(result: dict) -> list[str]:
    lines = []
    if result["skipped"]:
        lines += ["## Providers not run here", ""]
        seen = set()
        for s in result["skipped"]:
            if (s["provider"], s["reason"]) in seen:
                continue
            seen.add((s["provider"], s["reason"]))
            lines.append(f"- {s['provider']}: {s['reason']}")
        lines.append("")
    if result["errors"]:
        lines += ["## Errors", ""]
        for e in result["errors"]:
            where = ":".join(str(x) for x in (e["model"], e["provider"], e["batch"]) if x is not None)
            lines.append(f"- {where}: `{e['error'].splitlines()[0][:300]}`")
        lines.append("")
    trace = result.get("trace")
    if trace:
        lines += ["## Trace", "",
                  f"- {trace['model']} {trace['provider']} batch {trace['batch']}: `{trace['file']}` "
                  f"({trace['iterations']} forwards); {trace['ops_per_forward']:.0f} outermost aten ops per forward"
                  + (f"; {trace['kernels_per_forward']:.0f} kernels per forward; device busy "
                     f"{100 * trace['device_busy_fraction']:.0f}% of the wall time"
                     if trace["kernels_per_forward"] is not None else ""), ""]
    return lines


def format_markdown(result: dict) -> str:
    families = families_table(result)
    parts = header(result) + [""] + models_table(result) + families + speedup_tables(result, not families) + \
        anchor_table(result) + [""] + results_table(result) + [""] + problems(result)
    return "\n".join(parts).rstrip() + "\n"
