"""Compare two profile runs, config by config.

    python -m threethings_fast.profile.compare OLD/profile.json NEW/profile.json [--min-change 5]

For every (model, provider, batch) measured in both runs: images/s before and after, new/old, and whether the
change is outside the noise: "yes" when the two runs' p10-p90 latency intervals do not overlap. Also the
Table-4-style ratios (par/seq, fused/branch_by_branch, fused/reference) side by side — ratios are measured within
one run, so they compare across machines better than absolute numbers do. Warns when the device, dtype or
versions differ.
"""
from __future__ import annotations

import argparse
import json
import sys


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def differences(old: dict, new: dict) -> list[str]:
    notes = []
    for key in ("name", "type", "threads"):
        if old["device"][key] != new["device"][key]:
            notes.append(f"device {key}: {old['device'][key]} -> {new['device'][key]}")
    if old["dtype"] != new["dtype"]:
        notes.append(f"dtype: {old['dtype']} -> {new['dtype']}")
    for key in ("torch", "triton", "threethings_fast"):
        if old["versions"].get(key) != new["versions"].get(key):
            notes.append(f"{key}: {old['versions'].get(key)} -> {new['versions'].get(key)}")
    return notes


def compare_results(old: dict, new: dict) -> list[dict]:
    a = {(r["model"], r["provider"], r["batch"]): r for r in old["results"]}
    rows = []
    for r in new["results"]:
        key = (r["model"], r["provider"], r["batch"])
        if key not in a:
            continue
        o = a[key]
        separated = r["p90_s"] < o["p10_s"] or o["p90_s"] < r["p10_s"]
        rows.append({"model": key[0], "provider": key[1], "batch": key[2], "old": o["images_per_s"],
                     "new": r["images_per_s"], "change": r["images_per_s"] / o["images_per_s"],
                     "significant": separated})
    return rows


def compare_ratios(old: dict, new: dict) -> list[dict]:
    a = {(r["kind"], r["batch"], r["numerator"], r["denominator"]): r["value"] for r in old["ratios"]}
    return [{"kind": r["kind"], "batch": r["batch"], "numerator": r["numerator"], "denominator": r["denominator"],
             "old": a[k], "new": r["value"]}
            for r in new["ratios"] if (k := (r["kind"], r["batch"], r["numerator"], r["denominator"])) in a]


def format_comparison(old: dict, new: dict, min_change: float = 0.0) -> str:
    lines = ["# Profile comparison", "", f"- old: {old['created']} {old['device']['name']} {old['dtype']}",
             f"- new: {new['created']} {new['device']['name']} {new['dtype']}"]
    lines += [f"- **differs**: {d}" for d in differences(old, new)]
    lines += ["", "| model | provider | batch | old im/s | new im/s | new/old | outside noise |",
              "|---|---|---:|---:|---:|---:|---|"]
    for r in compare_results(old, new):
        if abs(r["change"] - 1) * 100 < min_change:
            continue
        lines.append(f"| {r['model']} | {r['provider']} | {r['batch']} | {r['old']:.1f} | {r['new']:.1f} | "
                     f"{r['change']:.3f}× | {'yes' if r['significant'] else 'no'} |")
    lines += ["", "| ratio | batch | numerator / denominator | old | new |", "|---|---:|---|---:|---:|"]
    for r in compare_ratios(old, new):
        lines.append(f"| {r['kind']} | {r['batch']} | {r['numerator']} / {r['denominator']} | {r['old']:.2f}× | "
                     f"{r['new']:.2f}× |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m threethings_fast.profile.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--min-change", type=float, default=0.0, help="hide configs that changed by less (percent)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    print(format_comparison(_load(args.old), _load(args.new), args.min_change))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
