#!/usr/bin/env bash
# The C++ engine's one prepared GPU run (make engine-gpu OUT=dir): build, kernel tests, model tests, latency.
#
#     bench/engine_gpu.sh OUTDIR            # on the GPU image (torch, triton, timm preinstalled; offline)
#     bench/engine_gpu.sh OUTDIR sanitize   # env + build, then compute-sanitizer over every kernel variant
#
# CUTLASS headers: $CUTLASS_DIR, an installed nvidia-cutlass, or the wheel carried in .whl/ (fetch it beforehand on a
# machine with PyPI: pip download --no-deps nvidia-cutlass==4.2.0.0 -d .whl), unpacked into build/cutlass.
#
# Time model (an H200 machine: 16 cores, 128 GB; total budget TTF_ENGINE_GPU_SECONDS, default 360 s):
#   env       ~5 s     GPU, versions, CUTLASS                                          cap  20 s
#   build     ~150 s   12 CUTLASS GEMM TUs (about 90 s each on one core, in parallel), attention, row kernels and
#                      the 5 torch-facing C++ files; MAX_JOBS=12 (3.5 GB per CUTLASS nvcc)                  cap 200 s
#   kernels   ~30 s    each kernel alone against float64 (GEMM epilogues and splits, attention N = 1..577,
#                      head_dim 32..128), NaN-poisoned outputs                                               cap  60 s
#   models    ~60 s    stems, S18x2 / S36x1 / B12x1 / B18x2 at batch 1, 2, 4, 8 against the reference's own bf16
#                      error, variants, CUDA-graph replay == eager, determinism                             cap  90 s
#   latency   ~90 s    bench/bench_engine.py: fused[cuda], fused[cuda]+graph, fused[triton]+graph, timm,
#                      timm+compile[reduce-overhead]; S18x2, S36x1, B12x1 at batch 1 and 8; 200 calls each  cap 120 s
# Each step ends at its cap (SIGINT, then SIGKILL 20 s later) or when the budget is spent; a failed step is
# recorded and the next one runs (latency needs the build, nothing else). Without CUDA the env step stops the run
# at once, with exit status 3.
# Files in OUTDIR (at most 8): summary.md (first), build.log, kernels.xml, models.xml, tests.log, latency.json,
# latency.md.
# Mode "sanitize" (its own call): after env and build, bench/sanitize_engine.py under compute-sanitizer memcheck
# (both attention tile shapes: TTF_ATTENTION_ROWS=64, 32), racecheck, and initcheck on the stems, each capped at
# 90 s; only where the tool works: it does on Firecracker machines, not on gVisor (detected with a probe and
# reported with the kernel release). Files: summary.md, build.log, sanitize.log.
set -uo pipefail

OUT="${1:?usage: bench/engine_gpu.sh OUTDIR [sanitize]}"
MODE="${2:-run}"
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
TOTAL="${TTF_ENGINE_GPU_SECONDS:-360}"
GRACE=20
START=$(date +%s)
PY="${TTF_PYTHON:-python3}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR="$REPO/build/torch_extensions" TTF_BUILD_VERBOSE=1 MAX_JOBS="${MAX_JOBS:-12}"
SUMMARY="$OUT/summary.md"
ROWS=""

TAG=engine_gpu
source "$REPO/bench/gpu_lib.sh"

write_summary() {
  {
    echo "# Engine GPU run"
    echo
    echo "$ENV_LINE"
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---:|"
    printf "%s" "$ROWS"
    for xml in kernels models; do
      [ -f "$OUT/$xml.xml" ] && { echo; junit_line "$OUT/$xml.xml"; }
    done
    [ -f "$OUT/latency.md" ] && { echo; cat "$OUT/latency.md"; }
  } > "$SUMMARY"
}
trap write_summary EXIT

# ---- env: a CUDA GPU of compute capability 9.0, versions, CUTLASS
ENV_LINE="$(gpu_env_line "bench/engine_gpu.sh runs the engine's kernels on an sm_90 GPU (H100 / H200)")"
ENV_RC=$?
echo "[engine_gpu] $ENV_LINE"
if (( ENV_RC != 0 )); then
  ROWS+="| env | failed: no CUDA | 0 |"$'\n'
  echo "engine_gpu.sh: $ENV_LINE" >&2
  exit 3
fi
if [ -z "${CUTLASS_DIR:-}" ] && ! "$PY" -c "import importlib.util as u; assert u.find_spec('cutlass_library')" 2>/dev/null; then
  WHEEL="$(ls .whl/nvidia_cutlass-*.whl 2>/dev/null | head -1)"
  if [ -n "$WHEEL" ]; then
    rm -rf build/cutlass && mkdir -p build/cutlass && "$PY" -m zipfile -e "$WHEEL" build/cutlass
    export CUTLASS_DIR="$REPO/build/cutlass/cutlass_library/source"
  fi
fi
ROWS+="| env | ok | 0 |"$'\n'

# ---- build
if LOG="$OUT/build.log" step build 200 "$PY" -c \
    "from threethings_fast.extension import engine_capabilities as c; caps = c(); assert caps['cuda'], caps; print(caps)"; then
  BUILT=1
else
  BUILT=0
  grep -i -m 20 "error" "$OUT/build.log" >&2
fi

# ---- compute-sanitizer (mode "sanitize")
if [ "$MODE" = sanitize ]; then
  (( BUILT )) || exit 4
  TOOL="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
  RUNTIME="kernel $(uname -r)"
  if [ -z "$TOOL" ]; then
    ROWS+="| sanitize | skipped: compute-sanitizer not installed ($RUNTIME) | 0 |"$'\n'
  elif ! "$TOOL" --tool memcheck "$PY" -c "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()" \
      > "$OUT/sanitize.log" 2>&1 || grep -q "not supported" "$OUT/sanitize.log"; then
    ROWS+="| sanitize | skipped: compute-sanitizer does not work here ($RUNTIME; gVisor?) | 0 |"$'\n'
  else
    ENV_LINE+=" · compute-sanitizer works ($RUNTIME)"
    for rows in 64 32; do
      TTF_ATTENTION_ROWS=$rows LOG="$OUT/sanitize.log" step "memcheck-rows$rows" 90 \
        "$TOOL" --tool memcheck --error-exitcode 9 "$PY" bench/sanitize_engine.py
    done
    LOG="$OUT/sanitize.log" step racecheck 90 "$TOOL" --tool racecheck --error-exitcode 9 "$PY" \
      bench/sanitize_engine.py --no-triton
    LOG="$OUT/sanitize.log" step initcheck-stems 90 "$TOOL" --tool initcheck --error-exitcode 9 "$PY" \
      bench/sanitize_engine.py --stems-only
  fi
  exit 0
fi

# ---- tests: kernels alone first, then stems and whole models
if (( BUILT )); then
  step kernels 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_engine_gpu.py \
    -k "gemm_kernel or attention_kernel or large_logits" --junitxml="$OUT/kernels.xml"
  step models 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_engine_gpu.py \
    -k "not gemm_kernel and not attention_kernel and not large_logits" --junitxml="$OUT/models.xml"
  step latency 120 "$PY" bench/bench_engine.py --out "$OUT/latency.json" --models S18x2 S36x1 B12x1 --batches 1 8
fi
echo "[engine_gpu] done in $(( $(date +%s) - START ))s; summary in $SUMMARY"
