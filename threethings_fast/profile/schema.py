"""The profile JSON schema (``profile.json``), version ``threethings_fast.profile/1``.

Types: str, int, float, bool, None; "x|None" = may be null; [T] = list of T; {k: T} = dict. Times in seconds
unless the key says otherwise (``_ms``). Every field below is always present.

    schema        str     "threethings_fast.profile/1"
    created       str     ISO-8601 UTC time of the run
    argv          [str]   command-line arguments
    wall_s        float   wall time of the whole run
    dtype         str     run dtype ("float32", "bfloat16", ...)
    device        {type: "cpu"|"cuda", name: str, threads: int (torch CPU threads), cpu_count: int|None,
                   capability: str|None ("9.0"), memory_gb: float|None}
    versions      {python, torch: str, triton: str|None, threethings_fast: str, cuda: str|None}
    settings      {preset: "quick"|"full"|"report"|"families" (+ "+custom" when options changed it), models: [str],
                   batches: [int], providers: [str] (threethings_fast.providers names), warmup: int, reps: int,
                   min_seconds: float, time_budget_s: float|None, seed: int,
                   triton_autotune: bool (optional, read: true; false = first config of each kernel, untuned),
                   notes: [str] (optional: report header lines, e.g. models the families preset left out)}
    peak          None (--no-peak) or {matmul: {tflops: float (best), tflops_median: float, n: int, dtype: str,
                   raw_s: [float]}, copy: {gbps: float (best), gbps_median: float, bytes: int, raw_s: [float]}}
    models        {name: {config: {fields of the model's config: ViTConfig, MixerConfig, ...}, family: str
                   (optional: threethings_fast.models family, "vit", "mixer", ...; files before it: "vit"),
                   params: int, flops_per_image: int (2·matmul MACs, the family's count_macs),
                   build_s: float, sequential_partner: str|None (the same-parameter x1 model in this run),
                   fused_backends: {provider: str} (optional: the backend each fused provider ran, e.g.
                   fused[auto] -> "torch"; files written before this field existed lack it)}}
    results       [{model: str, provider: str, batch: int, raw_s: [float] (one per timed call, round-robin order),
                   median_s, p10_s, p90_s: float, n: int, images_per_s: float, latency_ms: float (median),
                   p90_ms: float, tflops: float (achieved, from flops_per_image), pct_peak: float|None}]
    ratios        [{kind: "par/seq"|"fused/branch_by_branch"|"fused/reference", model: str, batch: int,
                   numerator: "MODEL:PROVIDER", denominator: "MODEL:PROVIDER", value: float (im/s ratio)}]
    errors        [{model: str|None, provider: str|None, batch: int|None, error: str, traceback: str}]
    skipped       [{model: str, provider: str, reason: str}]    providers not run on this device
    skipped_batches [int]  batches dropped by --time-budget
    trace         None or {model, provider: str, batch: int, iterations: int, file: str, wall_s: float,
                   ops_per_forward: float, kernels_per_forward: float|None, device_busy_fraction: float|None}
    files         {json: str, markdown: str, plots: [str]}   paths written (relative to --out)
    interrupted   bool    the run was cut short (Ctrl-C / SIGINT, e.g. a time limit): results hold what was measured
                          until then. Optional: files written before this field existed lack it (read: false)
"""
from __future__ import annotations

SCHEMA_VERSION = "threethings_fast.profile/1"

NUM = (int, float)
OPT_NUM = (int, float, type(None))
OPT_STR = (str, type(None))

TOP = {"schema": str, "created": str, "argv": list, "wall_s": NUM, "dtype": str, "device": dict, "versions": dict,
       "settings": dict, "peak": (dict, type(None)), "models": dict, "results": list, "ratios": list, "errors": list,
       "skipped": list, "skipped_batches": list, "trace": (dict, type(None)), "files": dict}
DEVICE = {"type": str, "name": str, "threads": int, "cpu_count": (int, type(None)), "capability": OPT_STR,
          "memory_gb": OPT_NUM}
VERSIONS = {"python": str, "torch": str, "triton": OPT_STR, "threethings_fast": str, "cuda": OPT_STR}
SETTINGS = {"preset": str, "models": list, "batches": list, "providers": list, "warmup": int, "reps": int,
            "min_seconds": NUM, "time_budget_s": OPT_NUM, "seed": int}
PEAK_MATMUL = {"tflops": NUM, "tflops_median": NUM, "n": int, "dtype": str, "raw_s": list}
PEAK_COPY = {"gbps": NUM, "gbps_median": NUM, "bytes": int, "raw_s": list}
MODEL = {"config": dict, "params": int, "flops_per_image": int, "build_s": NUM, "sequential_partner": OPT_STR}
RESULT = {"model": str, "provider": str, "batch": int, "raw_s": list, "median_s": NUM, "p10_s": NUM, "p90_s": NUM,
          "n": int, "images_per_s": NUM, "latency_ms": NUM, "p90_ms": NUM, "tflops": NUM, "pct_peak": OPT_NUM}
RATIO = {"kind": str, "model": str, "batch": int, "numerator": str, "denominator": str, "value": NUM}
ERROR = {"model": OPT_STR, "provider": OPT_STR, "batch": (int, type(None)), "error": str, "traceback": str}
SKIPPED = {"model": str, "provider": str, "reason": str}
TRACE = {"model": str, "provider": str, "batch": int, "iterations": int, "file": str, "wall_s": NUM,
         "ops_per_forward": NUM, "kernels_per_forward": OPT_NUM, "device_busy_fraction": OPT_NUM}
FILES = {"json": str, "markdown": str, "plots": list}
RATIO_KINDS = ("par/seq", "fused/branch_by_branch", "fused/reference")


def _check(obj, spec: dict, where: str, errors: list):
    if not isinstance(obj, dict):
        errors.append(f"{where}: expected a dict, got {type(obj).__name__}")
        return
    for key, types in spec.items():
        if key not in obj:
            errors.append(f"{where}.{key}: missing")
        elif isinstance(obj[key], bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            errors.append(f"{where}.{key}: bool where {types} expected")
        elif not isinstance(obj[key], types):
            errors.append(f"{where}.{key}: expected {types}, got {type(obj[key]).__name__}")


def validate(result: dict) -> list[str]:
    """Schema errors of a profile result (loaded JSON or the dict in memory); empty list = valid."""
    errors: list[str] = []
    _check(result, TOP, "$", errors)
    if errors:
        return errors
    if result["schema"] != SCHEMA_VERSION:
        errors.append(f"$.schema: {result['schema']!r} != {SCHEMA_VERSION!r}")
    _check(result["device"], DEVICE, "$.device", errors)
    _check(result["versions"], VERSIONS, "$.versions", errors)
    _check(result["settings"], SETTINGS, "$.settings", errors)
    if result["peak"] is not None:
        _check(result["peak"].get("matmul"), PEAK_MATMUL, "$.peak.matmul", errors)
        _check(result["peak"].get("copy"), PEAK_COPY, "$.peak.copy", errors)
    for name, m in result["models"].items():
        _check(m, MODEL, f"$.models[{name}]", errors)
    for i, r in enumerate(result["results"]):
        _check(r, RESULT, f"$.results[{i}]", errors)
        if isinstance(r, dict) and r.get("model") not in result["models"]:
            errors.append(f"$.results[{i}].model: {r.get('model')!r} not in $.models")
        if isinstance(r, dict) and isinstance(r.get("raw_s"), list) and (
                len(r["raw_s"]) != r.get("n") or not all(isinstance(t, NUM) and t > 0 for t in r["raw_s"])):
            errors.append(f"$.results[{i}].raw_s: expected n positive numbers")
    for i, r in enumerate(result["ratios"]):
        _check(r, RATIO, f"$.ratios[{i}]", errors)
        if isinstance(r, dict) and r.get("kind") not in RATIO_KINDS:
            errors.append(f"$.ratios[{i}].kind: {r.get('kind')!r} not in {RATIO_KINDS}")
    for i, r in enumerate(result["errors"]):
        _check(r, ERROR, f"$.errors[{i}]", errors)
    for i, r in enumerate(result["skipped"]):
        _check(r, SKIPPED, f"$.skipped[{i}]", errors)
    if not all(isinstance(b, int) for b in result["skipped_batches"]):
        errors.append("$.skipped_batches: expected ints")
    if result["trace"] is not None:
        _check(result["trace"], TRACE, "$.trace", errors)
    _check(result["files"], FILES, "$.files", errors)
    if not isinstance(result.get("interrupted", False), bool):
        errors.append("$.interrupted: expected a bool")
    return errors
