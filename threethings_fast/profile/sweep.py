"""The sweep: build models and providers, time every (model, provider) pair per batch size, derive the metrics.

Derived numbers, per (model, provider, batch), from the median of the raw per-call times t:
    images/s   = batch / t
    TFLOP/s    = batch · forward_flops(config) / t / 1e12     forward_flops = 2 · matmul MACs per image
                 (threethings_fast.macs; norms, softmax and GELU not counted)
    % of peak  = TFLOP/s / peak matmul TFLOP/s measured on this device in the run dtype (timing.measure_peak_matmul)
Ratios (all from im/s of runs interleaved in the same rounds, so machine noise hits both sides alike):
    par/seq                 x2 model / its same-parameter x1 model (S18x2 / S36x1), same provider
    fused/branch_by_branch  x2 model: fused provider / branches run one after another (the paper's Table 4)
    fused/reference         any model: fused provider / eager reference
"""
from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Optional

import torch

from .. import __version__
from ..api import create_model
from ..configs import ViTConfig, from_name
from ..convert import convert
from ..fused.backends import triton_available
from ..macs import forward_flops
from ..timing import device_name, measure_copy_bandwidth, measure_peak_matmul, summarize, sync, time_once
from .schema import SCHEMA_VERSION

PROVIDERS = ("reference", "branch_by_branch", "compile", "fused[torch]", "fused[triton]", "fused[triton]+graph",
             "fused[triton/fusednorm]", "fused[triton/fusednorm]+graph")
FUSED_PREFIX = "fused"


@dataclass
class ModelEntry:
    """One model of the sweep: its reference, its fused conversions (one per backend), what it costs."""

    name: str
    config: ViTConfig
    reference: torch.nn.Module
    fused: dict = field(default_factory=dict)      # backend -> FusedViT
    compiled: Optional[Callable] = None
    params: int = 0
    flops_per_image: int = 0
    build_s: float = 0.0
    sequential_partner: Optional[str] = None       # for an xK model: the same-parameter x1 model in the run
    failed: dict = field(default_factory=dict)     # backend -> why convert() failed (its providers are skipped)


@dataclass
class Settings:
    models: list
    batches: list
    providers: list
    device: str
    dtype: torch.dtype
    warmup: int
    reps: int
    min_seconds: float = 0.0
    time_budget_s: Optional[float] = None
    threads: Optional[int] = None
    preset: str = "custom"
    seed: int = 0
    measure_peak: bool = True
    progress: bool = True
    trace: Optional[str] = None                    # "MODEL:PROVIDER:BATCH", "auto" or None
    trace_dir: Optional[str] = None


# ---------------------------------------------------------------------------------------------------------------
# Providers
# ---------------------------------------------------------------------------------------------------------------
def provider_available(provider: str, cfg: ViTConfig, device: torch.device) -> Optional[str]:
    """None if `provider` can run `cfg` on `device`, else the reason it is skipped."""
    if provider not in PROVIDERS:
        return f"unknown provider (choose from {', '.join(PROVIDERS)})"
    if provider == "branch_by_branch" and cfg.num_parallel == 1:
        return "x1 model: branch by branch is the reference itself"
    if provider == "compile" and device.type != "cuda":
        return "torch.compile of the reference runs on CUDA only (compiling takes minutes on a small CPU)"
    if provider.startswith("fused[triton"):   # fused[triton], fused[triton/fusednorm], their +graph
        if device.type != "cuda":
            return "Triton runs on CUDA; on the CPU only the interpreter (timings meaningless)"
        if not triton_available():
            return "triton is not installed"
    if provider.endswith("+graph") and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    return None


def _backend_of(provider: str) -> Optional[str]:
    """The fused model a provider runs: "torch", "triton" or "triton/fusednorm" (also the key of entry.fused)."""
    if provider.startswith("fused["):
        return provider[len("fused["):provider.index("]")]
    return None


def _convert(model: torch.nn.Module, key: str):
    backend, _, variant = key.partition("/")
    return convert(model, backend=backend, norm="fused" if variant == "fusednorm" else "separate")


def make_call(entry: ModelEntry, provider: str, images: torch.Tensor) -> tuple[Callable[[], object], Callable]:
    """(fn, cleanup): fn() runs one forward of `entry` by `provider` on `images`; cleanup() frees per-batch state."""
    nothing = lambda: None  # noqa: E731
    if provider == "reference":
        return (lambda: entry.reference(images)), nothing
    if provider == "branch_by_branch":
        return (lambda: entry.reference(images, branch_by_branch=True)), nothing
    if provider == "compile":
        if entry.compiled is None:
            _raise_recompile_limit()
            entry.compiled = torch.compile(entry.reference, dynamic=False)
        compiled = entry.compiled
        return (lambda: compiled(images)), nothing
    backend = _backend_of(provider)
    fused = entry.fused.get(backend)
    if fused is None:
        fused = entry.fused[backend] = _convert(entry.reference, backend)
    if provider.endswith("+graph"):
        from ..fused.graphs import capture
        holder = {"runner": capture(fused, [images.shape[0]])}

        def cleanup():
            holder.pop("runner", None)
        return (lambda: holder["runner"](images)), cleanup
    return (lambda: fused(images)), nothing


def _raise_recompile_limit():
    # One compiled graph per batch size (dynamic=False): the sweep's 9 sizes exceed dynamo's default limit of 8.
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(64, getattr(cfg, name)))


# ---------------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------------
def build_models(settings: Settings, device: torch.device) -> list[ModelEntry]:
    entries = []
    for i, name in enumerate(settings.models):
        t0 = time.perf_counter()
        torch.manual_seed(settings.seed + i)
        cfg = from_name(name)
        model = create_model(cfg).to(device=device, dtype=settings.dtype).eval()
        entry = ModelEntry(name=name, config=cfg, reference=model,
                           params=sum(p.numel() for p in model.parameters()), flops_per_image=forward_flops(cfg))
        for provider in settings.providers:
            backend = _backend_of(provider)
            if backend and backend not in entry.fused and backend not in entry.failed and \
                    provider_available(provider, cfg, device) is None:
                try:
                    entry.fused[backend] = _convert(model, backend)
                except Exception as exc:  # noqa: BLE001 - the other providers still run
                    entry.failed[backend] = f"convert({backend!r}) failed: {type(exc).__name__}: {exc}"
        entry.build_s = time.perf_counter() - t0
        entries.append(entry)
    for entry in entries:
        entry.sequential_partner = sequential_partner(entry, entries)
    return entries


def sequential_partner(entry: ModelEntry, entries: list[ModelEntry]) -> Optional[str]:
    """Name of the x1 model in `entries` with the same parameters as the xK model `entry` (S36x1 for S18x2)."""
    cfg = entry.config
    if cfg.num_parallel == 1:
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
                     "seed": settings.seed,
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
        from .trace import record_trace
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
            "config": dataclasses.asdict(entry.config), "params": entry.params,
            "flops_per_image": entry.flops_per_image, "build_s": round(entry.build_s, 3),
            "sequential_partner": entry.sequential_partner}
        plan[entry.name] = []
        for provider in settings.providers:
            reason = provider_available(provider, entry.config, device) or entry.failed.get(_backend_of(provider))
            if reason:
                result["skipped"].append({"model": entry.name, "provider": provider, "reason": reason})
            else:
                plan[entry.name].append(provider)
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
                        fn, cleanup = make_call(entry, provider, images)
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


# ---------------------------------------------------------------------------------------------------------------
# Ratios
# ---------------------------------------------------------------------------------------------------------------
def _index(result: dict) -> dict:
    return {(r["model"], r["provider"], r["batch"]): r for r in result["results"]}


def best_fused(result: dict, model: str, batch: int) -> Optional[dict]:
    """The fastest fused[...] row of `model` at `batch` (ours, whichever backend/graph mode wins there)."""
    rows = [r for r in result["results"] if r["model"] == model and r["batch"] == batch
            and r["provider"].startswith(FUSED_PREFIX)]
    return max(rows, key=lambda r: r["images_per_s"]) if rows else None


def compute_ratios(result: dict) -> list[dict]:
    """Speed-up records {kind, model, batch, numerator, denominator, value}; numerator/denominator are
    "MODEL:PROVIDER", value = im/s(numerator) / im/s(denominator)."""
    idx = _index(result)
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
        if provider.startswith(FUSED_PREFIX):
            add("fused/branch_by_branch", model, batch, row, idx.get((model, "branch_by_branch", batch)))
            add("fused/reference", model, batch, row, idx.get((model, "reference", batch)))
    return out


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")

