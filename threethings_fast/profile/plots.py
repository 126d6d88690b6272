"""PNG plots of a profile result (matplotlib, Agg backend: no display needed).

One panel per model family: an xK model drawn solid with its same-parameter x1 partner dashed (S18x2 vs S36x1),
one colour per provider, so "parallel beats sequential" and "fused beats reference" read off the same panel.
    throughput.png   images/s vs batch size, log-log axes
    latency.png      median latency (ms) per forward vs batch size, log-log, p10-p90 band
"""
from __future__ import annotations

import os

# One colour per registered provider (tests/test_providers.py checks that none is missing).
COLORS = {
    "reference": "#1f77b4",
    "branch_by_branch": "#ff7f0e",
    "compile": "#9467bd",
    "compile[reduce-overhead]": "#c5b0d5",
    "timm": "#7f7f7f",
    "timm+compile": "#dbdb8d",
    "timm+compile[reduce-overhead]": "#bcbd22",
    "timm+compile[max-autotune]": "#17becf",
    "fused[auto]": "#e377c2",
    "fused[torch]": "#2ca02c",
    "fused[triton]": "#d62728",
    "fused[triton]+graph": "#8c564b",
    "fused[triton/fusednorm]": "#ff7f0e",
    "fused[triton/fusednorm]+graph": "#9467bd",
    "fused[cuda]": "#393b79",
    "fused[cuda]+graph": "#637939",
}


def _panels(result: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(title, [(model, linestyle), ...])]: each xK model with its x1 partner; unpaired models alone."""
    partners = {m: info["sequential_partner"] for m, info in result["models"].items()}
    paired = {p for p in partners.values() if p}
    panels = []
    for model in result["settings"]["models"]:
        if model not in result["models"] or model in paired:
            continue
        seq = partners.get(model)
        if seq:
            panels.append((f"{model} (solid) vs {seq} (dashed)", [(model, "-"), (seq, "--")]))
        else:
            panels.append((model, [(model, "-")]))
    return panels


def _series(result: dict, model: str):
    out = {}
    for r in result["results"]:
        if r["model"] == model:
            out.setdefault(r["provider"], []).append(r)
    return {p: sorted(rows, key=lambda r: r["batch"]) for p, rows in out.items()}


def _subtitle(result: dict) -> str:
    d, v = result["device"], result["versions"]
    threads = f", {d['threads']} threads" if d["type"] == "cpu" else ""
    return f"{d['name']}{threads} · {result['dtype']} · torch {v['torch']}" + \
        (f" · triton {v['triton']}" if v["triton"] else "")


def plot_profile(result: dict, out_dir: str) -> list[str]:
    """Write throughput.png and latency.png into out_dir; return their paths (empty if nothing was measured)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, LogLocator, NullFormatter, NullLocator, ScalarFormatter

    panels = _panels(result)
    if not panels or not result["results"]:
        return []
    batches = sorted({r["batch"] for r in result["results"]})
    paths = []
    for kind in ("throughput", "latency"):
        ncols = min(2, len(panels))
        nrows = (len(panels) + ncols - 1) // ncols
        fig, axes = plt.subplots(nrows, ncols, figsize=(6.6 * ncols, 5.4 * nrows), squeeze=False)
        for ax, (title, members) in zip(axes.flat, panels):
            for model, style in members:
                for provider, rows in _series(result, model).items():
                    xs = [r["batch"] for r in rows]
                    color = COLORS.get(provider, None)
                    label = f"{model} {provider}"
                    if kind == "throughput":
                        ax.plot(xs, [r["images_per_s"] for r in rows], style, marker="o", ms=4, color=color,
                                label=label)
                    else:
                        ax.plot(xs, [r["latency_ms"] for r in rows], style, marker="o", ms=4, color=color,
                                label=label)
                        ax.fill_between(xs, [r["p10_s"] * 1e3 for r in rows], [r["p90_s"] * 1e3 for r in rows],
                                        color=color, alpha=0.12, linewidth=0)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(FixedLocator(batches))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(ScalarFormatter())
            lo, hi = ax.get_ylim()
            # Less than a decade on the axis: label more than 1-2-5, or there may be a single tick label.
            subs = (1.0, 2.0, 5.0) if hi / lo > 10 else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("batch size (images per forward)")
            ax.set_ylabel("throughput (images/s)" if kind == "throughput" else "median latency per forward (ms)")
            ax.set_title(title, fontsize=11)
            ax.grid(True, which="both", alpha=0.3)
            # Below the axes: inside, the legend would hide the small-batch points.
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        what = "Throughput" if kind == "throughput" else "Latency (band: p10–p90)"
        fig.suptitle(f"{what}\n{_subtitle(result)}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{kind}.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
