"""The sweep: build models and providers, time every (model, provider) pair per batch size, derive the metrics.

Derived numbers, per (model, provider, batch), from the median of the raw per-call times t:
    images/s   = batch / t
    TFLOP/s    = batch · forward_flops(config) / t / 1e12     forward_flops = 2 · matmul MACs per image
                 (threethings_fast.macs, which counts any family's config with that family's count_macs;
                 norms, softmax and GELU not counted)
    % of peak  = TFLOP/s / peak matmul TFLOP/s measured on this device in the run dtype (timing.measure_peak_matmul)
Ratios: ratios.py. Providers (what each name runs, where it can run): threethings_fast.providers.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

import torch

from .. import __version__
from ..macs import forward_flops
from ..providers import ModelEntry, available, build, is_fused, model_of, prepare
from ..timing import device_name, measure_copy_bandwidth, measure_peak_matmul, summarize, sync, time_once
from .common import Settings
from .ratios import compute_ratios
from .schema import SCHEMA_VERSION
from .trace import record_trace


@dataclass
class SweepEntry(ModelEntry):
    """A model of the sweep: the providers' entry plus what the report says about it."""

    params: int = 0
    flops_per_image: int = 0
    build_s: float = 0.0
    sequential_partner: Optional[str] = None       # for an xK model: the same-parameter x1 model in the run


# ---------------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------------
def build_models(settings: Settings, device: torch.device) -> list[SweepEntry]:
    """The reference of every model, and each available provider's per-model object (conversions, compiled
    functions, timm's model): a provider whose object fails to build is skipped with the cause, not timed."""
    entries = []
    for i, name in enumerate(settings.models):
        t0 = time.perf_counter()
        entry = SweepEntry.create(name, device, settings.dtype, seed=settings.seed + i)
        entry.params = sum(p.numel() for p in entry.reference.parameters())
        entry.flops_per_image = forward_flops(entry.config)
        for provider in settings.providers:
            if available(provider, entry.config, device) is None:
                prepare(entry, provider)
        entry.build_s = time.perf_counter() - t0
        entries.append(entry)
    for entry in entries:
        entry.sequential_partner = sequential_partner(entry, entries)
    return entries


def sequential_partner(entry: SweepEntry, entries: list[SweepEntry]) -> Optional[str]:
    """Name of the x1 model in `entries` with the same parameters as the xK model `entry` (S36x1 for S18x2; the same
    for K-parallel Mixer / ResMLP). None for an x1 model or a family without parallel blocks."""
    cfg = entry.config
    if getattr(cfg, "num_parallel", 1) == 1:
        return None
    want = cfg.replace(depth=cfg.depth * cfg.num_parallel, num_parallel=1)
    for other in entries:
        if other.config == want:
            return other.name
    return None


# ---------------------------------------------------------------------------------------------------------------
# Device / environment description
# ---------------------------------------------------------------------------------------------------------------
def device_info(device: torch.device) -> dict:
    info = {"type": device.type, "name": device_name(device), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "capability": None, "memory_gb": None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["capability"] = f"{props.major}.{props.minor}"
        info["memory_gb"] = round(props.total_memory / 2 ** 30, 1)
    return info


def versions() -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"python": platform.python_version(), "torch": torch.__version__, "triton": triton_version,
            "threethings_fast": __version__, "cuda": torch.version.cuda}


# ---------------------------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------------------------
def run_profile(settings: Settings, argv: Optional[list] = None) -> dict:
    """Run the sweep described by `settings`; return the result dict (see schema.py). Writes no files."""
    t_start = time.perf_counter()
    device = torch.device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    result = {
        "schema": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "device": device_info(device),
        "versions": versions(),
        "dtype": str(settings.dtype).replace("torch.", ""),
        "settings": {"preset": settings.preset, "models": list(settings.models), "batches": list(settings.batches),
                     "providers": list(settings.providers), "warmup": settings.warmup, "reps": settings.reps,
                     "min_seconds": settings.min_seconds, "time_budget_s": settings.time_budget_s,
                     "seed": settings.seed, "notes": list(settings.notes),
                     # TTF_TRITON_AUTOTUNE=0: the Triton providers ran the first config of each list, untuned
                     "triton_autotune": os.environ.get("TTF_TRITON_AUTOTUNE", "1") != "0"},
        "peak": None, "models": {}, "results": [], "ratios": [], "errors": [], "skipped": [],
        "skipped_batches": [], "trace": None, "wall_s": None, "files": {}, "interrupted": False,
    }
    # Ctrl-C, or SIGINT from `timeout -s INT` in bench/gpu_suite.sh: stop measuring, keep what was measured (the rows
    # of the batch under way included), and return it so the caller still writes profile.json / profile.md.
    state = {"entries": [], "plan": {}}
    try:
        _measure(settings, device, result, state, t_start)
    except KeyboardInterrupt:
        _mark_interrupted(result, "the sweep")
    peak = (result["peak"] or {}).get("matmul", {}).get("tflops")
    for row in result["results"]:
        _derive(row, result["models"][row["model"]]["flops_per_image"], peak)
    result["ratios"] = compute_ratios(result)
    if settings.trace and not result["interrupted"]:
        try:
            result["trace"] = record_trace(settings, device, state["entries"], state["plan"], result)
        except KeyboardInterrupt:
            _mark_interrupted(result, "the trace")
        except Exception as exc:  # noqa: BLE001 - the sweep's numbers matter more than the trace
            _record_error(result, None, None, None, exc)
    result["wall_s"] = round(time.perf_counter() - t_start, 2)
    return result


def _measure(settings: Settings, device, result: dict, state: dict, t_start: float):
    """Peak, models, plan, sweep: what a KeyboardInterrupt may cut short (run_profile keeps the partial result)."""
    if settings.measure_peak:
        try:
            result["peak"] = {"matmul": measure_peak_matmul(device, settings.dtype),
                              "copy": measure_copy_bandwidth(device)}
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: report without "% of peak"
            _record_error(result, None, None, None, exc)
    entries = state["entries"] = build_models(settings, device)
    plan = state["plan"]  # model -> providers it runs
    for entry in entries:
        result["models"][entry.name] = {
            "config": dataclasses.asdict(entry.config), "family": entry.family.name, "params": entry.params,
            "flops_per_image": entry.flops_per_image, "build_s": round(entry.build_s, 3),
            "sequential_partner": entry.sequential_partner}
        plan[entry.name] = []
        for provider in settings.providers:
            reason = available(provider, entry.config, device) or prepare(entry, provider)
            if reason:
                result["skipped"].append({"model": entry.name, "provider": provider, "reason": reason})
            else:
                plan[entry.name].append(provider)
        result["models"][entry.name]["fused_backends"] = {
            p: model_of(entry, p).backend for p in plan[entry.name] if is_fused(p)}
    _sweep(settings, device, entries, plan, result, t_start)


def _mark_interrupted(result: dict, during: str):
    result["interrupted"] = True
    print(f"profile: interrupted during {during}; keeping the {len(result['results'])} result rows measured so far",
          file=sys.stderr, flush=True)


class _NoBar:
    """Stand-in for tqdm where it is not installed (an offline GPU image): progress lines on stderr instead."""

    def __init__(self, total, disable=False, **_):
        self.n, self.total, self.disable, self.postfix = 0, total, disable, ""

    def update(self, n=1):
        self.n += n

    def set_postfix_str(self, text):
        self.postfix = text
        if not self.disable:
            print(f"profile: {text} ({self.n}/{self.total} rounds)", file=sys.stderr, flush=True)

    def write(self, text):
        print(text, file=sys.stderr, flush=True)

    def close(self):
        pass


def sweep_order(batches: list, budget: Optional[float]) -> list:
    """The order batches are run in. With a time budget: the smallest, then the largest, then the rest ascending —
    if the budget runs out, the middle of the range is lost, not its ends (batch 1 and the largest batch are what
    the speed-up questions are about). Without one: ascending."""
    b = sorted(batches)
    if budget is None or len(b) < 3:
        return b
    return [b[0], b[-1]] + b[1:-1]


# The time budget's cost model (see _sweep). A round at a batch not yet run costs at most the measured round of the
# next smaller batch plus the matmul FLOPs added at this fraction of the measured peak (pessimistic: a whole eager
# ViT reaches more than this at large batch on a GPU), and at most that round scaled linearly with the batch.
BUDGET_PEAK_FRACTION = 0.2


def estimate_round_s(measured: dict, batch: int, flops_per_round_image: float = 0.0,
                     peak_tflops: Optional[float] = None) -> float:
    """Estimated seconds of one round (every planned pair once) at `batch`, from `measured` {batch: seconds per
    round}: between two measured batches the affine interpolation; above the largest measured batch b0 (time t0)
    min(t0·batch/b0, t0 + batch·flops_per_round_image / (BUDGET_PEAK_FRACTION·peak)), at least t0 — linear
    scaling alone would charge a launch-bound GPU batch 1 ×256 for batch 256; below every measured batch, the
    smallest measured round (an upper bound)."""
    lower = [b for b in measured if b <= batch]
    upper = [b for b in measured if b >= batch]
    if lower and upper:
        lo, hi = max(lower), min(upper)
        if lo == hi:
            return measured[lo]
        return measured[lo] + (measured[hi] - measured[lo]) * (batch - lo) / (hi - lo)
    if upper:
        return measured[min(upper)]
    b0 = max(lower)
    t0 = measured[b0]
    linear = t0 * batch / b0
    if peak_tflops and flops_per_round_image > 0:
        compute = batch * flops_per_round_image / (BUDGET_PEAK_FRACTION * peak_tflops * 1e12)
        return max(t0, min(linear, t0 + compute))
    return linear


def plan_reps(measured: dict, setup_excess: dict, batch: int, is_largest: bool, settings: Settings,
              seconds_left: float, flops_per_round_image: float = 0.0,
              peak_tflops: Optional[float] = None) -> int:
    """Timed rounds to run at `batch` within `seconds_left` (0 = skip it). Cost = one-time set-up + (warm-up +
    reps) rounds. The one-time set-up (inputs, graph capture, autotuning at the new shapes, first-call compiles)
    is the smallest measured so far beyond each batch's warm-up rounds: batch 1 pays every compile of the run,
    and charging that again to each later batch would drop the large batches for nothing. The largest batch always
    runs, with at least min(2, reps) rounds: it answers the large-batch questions."""
    floor = min(2, settings.reps)
    if not measured:
        return settings.reps
    per_round = estimate_round_s(measured, batch, flops_per_round_image, peak_tflops)
    setup = min(setup_excess.values()) if setup_excess else 0.0
    left = seconds_left - setup - settings.warmup * per_round
    affordable = int(left // per_round) if per_round > 0 else settings.reps
    if affordable < floor:
        return floor if is_largest else 0
    return min(settings.reps, affordable)


def _sweep(settings: Settings, device, entries, plan, result, t_start):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = _NoBar

    rounds_per_batch = settings.warmup + settings.reps
    bar = tqdm(total=len(settings.batches) * rounds_per_batch, desc="profile", unit="round",
               disable=not settings.progress, file=sys.stderr, dynamic_ncols=True)
    budget = settings.time_budget_s
    measured, setup_excess = {}, {}   # batch -> seconds per round / set-up seconds beyond the warm-up rounds
    flops_per_round_image = sum(e.flops_per_image * len(plan[e.name]) for e in entries)
    peak_tflops = ((result.get("peak") or {}).get("matmul") or {}).get("tflops")
    largest = max(settings.batches)
    try:
        for batch in sweep_order(settings.batches, budget):
            reps = settings.reps
            if budget is not None:
                left = budget - (time.perf_counter() - t_start)
                reps = plan_reps(measured, setup_excess, batch, batch == largest, settings, left,
                                 flops_per_round_image, peak_tflops)
                if reps == 0:
                    result["skipped_batches"] = sorted(result["skipped_batches"] + [batch])
                    bar.write(f"profile: batch {batch} skipped: it would not fit the {budget:.0f} s time budget")
                    bar.update(rounds_per_batch)
                    continue
            bar.set_postfix_str(f"batch {batch}")
            deadline = t_start + budget if budget is not None else None
            per_round, setup_s = _run_batch(settings, device, entries, plan, batch, reps, result, bar, deadline)
            bar.update(settings.reps - reps)
            if per_round:
                measured[batch] = per_round
                setup_excess[batch] = max(0.0, setup_s - settings.warmup * per_round)
    finally:
        bar.close()


def _record_error(result, model, provider, batch, exc):
    msg = f"{type(exc).__name__}: {exc}"
    result["errors"].append({"model": model, "provider": provider, "batch": batch, "error": msg[:2000],
                             "traceback": traceback.format_exc()[-4000:]})


def _run_batch(settings, device, entries, plan, batch, reps, result, bar,
               deadline: Optional[float] = None) -> tuple[float, float]:
    """Time every planned (model, provider) at `batch`; append rows to result["results"]. Returns the summed median
    seconds of one round (all providers once) and the seconds spent before the timed rounds (inputs, graph capture,
    warm-up): the time budget's cost model. On KeyboardInterrupt the rows of what was timed are appended, then
    the interrupt goes on."""
    t_enter = time.perf_counter()
    calls, cleanups, raw = {}, [], {}
    t_batch = None
    try:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(settings.seed + batch)
            for entry in entries:
                cfg = entry.config
                images = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=gen)
                images = images.to(device=device, dtype=settings.dtype)
                for provider in plan[entry.name]:
                    try:
                        fn, cleanup = build(entry, provider, images)
                        calls[(entry.name, provider)] = fn
                        cleanups.append(cleanup)
                    except Exception as exc:  # noqa: BLE001 - one provider's failure must not end the sweep
                        _record_error(result, entry.name, provider, batch, exc)
            # Warm-up, one provider at a time so a failure (out of memory, a kernel that does not compile) is
            # attributed.
            for _ in range(settings.warmup):
                for key in list(calls):
                    try:
                        calls[key]()
                        sync(device)
                    except Exception as exc:  # noqa: BLE001
                        _record_error(result, key[0], key[1], batch, exc)
                        del calls[key]
                        _free(device)
                bar.update(1)
            raw = {key: [] for key in calls}
            t_batch = time.perf_counter()
            rounds = 0
            while calls and (rounds < reps or (time.perf_counter() - t_batch < settings.min_seconds
                                               and rounds < 50 * reps)):
                for key in list(calls):  # round-robin: every provider once per round
                    try:
                        raw[key].append(time_once(calls[key], device))
                    except Exception as exc:  # noqa: BLE001
                        _record_error(result, key[0], key[1], batch, exc)
                        del calls[key]
                        raw.pop(key)
                rounds += 1
                if rounds <= reps:
                    bar.update(1)
                if deadline is not None and time.perf_counter() > deadline and rounds >= min(2, reps):
                    bar.update(max(0, reps - rounds))
                    break   # the machine got slower than the estimate: keep what was measured, stop here
    finally:
        for cleanup in cleanups:
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - e.g. interrupted in the middle of a graph capture
                pass
        try:
            _free(device)
        except Exception:  # noqa: BLE001
            pass
        per_round = _append_rows(result, batch, raw)
    setup_s = (t_batch if t_batch is not None else time.perf_counter()) - t_enter
    return per_round, setup_s


def _append_rows(result: dict, batch: int, raw: dict) -> float:
    per_round = 0.0
    for (model, provider), samples in raw.items():
        if not samples:
            continue
        s = summarize(samples)
        per_round += s["median"]
        result["results"].append({"model": model, "provider": provider, "batch": batch, "raw_s": list(samples),
                                  "median_s": s["median"], "p10_s": s["p10"], "p90_s": s["p90"], "n": s["n"]})
    return per_round


def _free(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _derive(row: dict, flops_per_image: int, peak_tflops: Optional[float]):
    t = row["median_s"]
    row["images_per_s"] = row["batch"] / t
    row["latency_ms"] = t * 1e3
    row["p90_ms"] = row["p90_s"] * 1e3
    row["tflops"] = row["batch"] * flops_per_image / t / 1e12
    row["pct_peak"] = 100.0 * row["tflops"] / peak_tflops if peak_tflops else None
