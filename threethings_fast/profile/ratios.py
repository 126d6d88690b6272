"""Speed-up ratios of a profile result, all from im/s of runs interleaved in the same rounds (machine noise hits
both sides alike):
    par/seq                 xK model / its same-parameter x1 model (S18x2 / S36x1), same provider
    fused/branch_by_branch  xK model: fused provider / branches run one after another (the paper's Table 4)
    fused/reference         any model: fused provider / eager reference
"""
from __future__ import annotations

from typing import Optional

from ..providers import is_fused


def best_fused(result: dict, model: str, batch: int) -> Optional[dict]:
    """The fastest fused[...] row of `model` at `batch` (ours, whichever backend/graph mode wins there)."""
    rows = [r for r in result["results"] if r["model"] == model and r["batch"] == batch and is_fused(r["provider"])]
    return max(rows, key=lambda r: r["images_per_s"]) if rows else None


def compute_ratios(result: dict) -> list[dict]:
    """Speed-up records {kind, model, batch, numerator, denominator, value}; numerator/denominator are
    "MODEL:PROVIDER", value = im/s(numerator) / im/s(denominator)."""
    idx = {(r["model"], r["provider"], r["batch"]): r for r in result["results"]}
    out = []

    def add(kind, model, batch, num, den):
        if num and den and den["images_per_s"] > 0:
            out.append({"kind": kind, "model": model, "batch": batch,
                        "numerator": f"{num['model']}:{num['provider']}",
                        "denominator": f"{den['model']}:{den['provider']}",
                        "value": num["images_per_s"] / den["images_per_s"]})

    for (model, provider, batch), row in sorted(idx.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        partner = result["models"][model]["sequential_partner"]
        if partner and provider != "branch_by_branch":
            add("par/seq", model, batch, row, idx.get((partner, provider, batch)))
        if is_fused(provider):
            add("fused/branch_by_branch", model, batch, row, idx.get((model, "branch_by_branch", batch)))
            add("fused/reference", model, batch, row, idx.get((model, "reference", batch)))
    return out
