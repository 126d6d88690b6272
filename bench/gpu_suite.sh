#!/usr/bin/env bash
# The Triton path's GPU run, in three tiers; each tier is one run that fits its own time budget.
#
#     bench/gpu_suite.sh TIER OUTDIR      # TIER 1, 2 or 3; on the GPU image (torch, triton, timm preinstalled;
#                                         # offline); make bench-gpu TIER=1 OUT=dir
#
# The interpreter is $TTF_PYTHON (default python3) with this tree on PYTHONPATH: nothing is installed or downloaded.
# Tier 1 comes first and its results are final when it ends, so a cut in tier 2 loses nothing of tier 1.
#
# Time model (an H200 machine: 16 cores; Triton compiles ~2-4 s per kernel variant on its host, the hMLP stem
# 10-50 s; Inductor ~30-45 s per timm compile). Expected times are estimates from those compile counts. A step is
# capped at min(its cap, budget left - 20 s), so the expected times of a tier add up to at most its budget - 20 s.
#   Tier 1 (budget TTF_SUITE_SECONDS, default 240 s), TTF_TRITON_AUTOTUNE=0 (one compile per kernel variant):
#     env       ~5 s     GPU, versions; stops the tier without CUDA (exit 3)                         cap  20 s
#     check     ~150 s   bench/gpu_check.py: S18x2, S36x1, B12x1, B18x2 at batch 1, 8, 64, 256; fused[torch],
#                        fused[triton], fused[triton/fusednorm] against float64 within 2x the reference's own
#                        bf16 error; CUDA-graph replay == eager. ~24 Triton variants (linear: 3 epilogues x 2 tile
#                        lists, fused-norm variants, split-K and its reduction; attention; normalize; row_stats;
#                        patch embed) ~75 s, the models' forwards and float64 references ~35 s. Then every fusable
#                        MLP family (mixer_b16_224, resmlp_24_224, gmlp_b16_224, vip_m7, ffonly_base) at batch 1
#                        and 64, fused[triton], fused[triton]+graph and fused[triton/fusednorm], same bound:
#                        ~14 new variants (token_linear epilogues and its normalising variant, normalize_tokens,
#                        stems without position embedding) ~40 s, five models built far from init in float64 and
#                        their forwards ~10 s (past the cap, gpu_check's deadline keeps what it checked) cap 175 s
#     headline  ~60 s    the profiler: S18x2 and S36x1 at batch 1, 64, 256: reference, fused[triton] eager and
#                        +graph, timm (kernels already compiled by check)                               cap  80 s
#   Tier 2 (budget 300 s), autotuning off:
#     env       ~5 s                                                                                      cap  20 s
#     tests     ~120 s   the tests of the Triton files not marked slow, fastest files first (on CUDA they run on
#                        the device); junit XML                                                          cap 130 s
#     tests_slow ~30 s   the tests marked slow (one cold compile per forced config), until the cap       cap  40 s
#     ops       ~60 s    pytest-benchmark per-op suite (bench/bench_ops.py, not compile)                cap  70 s
#     compile   ~45 s    the profiler: timm+compile (one Inductor compile), S18x2 at batch 1 (tier 1 held it
#                        until the family correctness rows took its time)                               cap  60 s
#   Tier 3 (budget 540 s), autotuning on (TTF_TRITON_AUTOTUNE=1, TRITON_CACHE_AUTOTUNING=1):
#     profile   ~290 s   the profiler --full, batches 1, 8, 64, 256, trace of S18x2 fused[triton] b1  cap 320 s
#     families  ~80 s    the profiler --preset families: B12x1 beside each fusable family's model at batch 1, 64,
#                        256: fused[triton], fused[triton]+graph, timm; autotuning off for this step (the families'
#                        GEMM shapes tuned would not fit), so it reads as the tiers 1-2 numbers      cap 100 s
#     compile3  ~150 s   the profiler: timm+compile and timm+compile[reduce-overhead], S18x2 and S36x1 at batch 1,
#                        64, 256 (the compile rows; S18x2 b1 timm+compile repeats tier 2's)             cap 160 s
# Tiers 1 + 2 are expected to take 5 + 150 + 60 + 5 + 120 + 30 + 60 + 45 = 475 s, under 9 minutes.
# Each step ends at its cap (SIGINT, then SIGKILL 20 s later) or when the tier's budget is spent; a failed step is
# recorded, the next one runs, and the tier exits 1.
# Files in OUTDIR (at most 8, summary.md first; every result file names device, versions, dtype, autotune setting
# and command): tier 1: summary.md, check.json, check.md, headline.json, headline.md, logs.tar.gz; tier 2:
# summary.md, tests.xml, tests_slow.xml, ops.json, compile.json, compile.md, logs.tar.gz; tier 3: summary.md,
# profile.json, profile.md, throughput.png, latency.png, families.json, compile3.json, logs.tar.gz (the markdown of
# families and compile3 is in summary.md and logs.tar.gz).
set -uo pipefail

TIER="${1:?usage: bench/gpu_suite.sh TIER OUTDIR   (TIER 1, 2 or 3)}"
OUT="${2:?usage: bench/gpu_suite.sh TIER OUTDIR   (TIER 1, 2 or 3)}"
case "$TIER" in 1|2|3) ;; *) echo "gpu_suite.sh: TIER must be 1, 2 or 3, got '$TIER'" >&2; exit 2;; esac
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
case "$REPO/" in "$OUT"/*) echo "gpu_suite.sh: OUTDIR $OUT contains the repository; give a new folder" >&2; exit 2;; esac
if [ -n "$(ls -A "$OUT")" ]; then
  echo "gpu_suite.sh: OUTDIR $OUT is not empty; give a new or empty folder (its contents are archived at the end)" >&2
  exit 2
fi
cd "$REPO"
case "$TIER" in 1) DEFAULT_BUDGET=240;; 2) DEFAULT_BUDGET=300;; 3) DEFAULT_BUDGET=540;; esac
TOTAL="${TTF_SUITE_SECONDS:-$DEFAULT_BUDGET}"
GRACE=20
START=$(date +%s)
PY="${TTF_PYTHON:-python3}"
TAG="gpu_suite tier $TIER"
mkdir -p "$OUT/logs"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_PRINT_AUTOTUNING=1
if [ "$TIER" = 3 ]; then
  export TTF_TRITON_AUTOTUNE=1 TRITON_CACHE_AUTOTUNING=1
else
  export TTF_TRITON_AUTOTUNE=0
fi
LOG="$OUT/logs/steps.log"
source "$REPO/bench/gpu_lib.sh"
ENV_LINE=""
KEEP="summary.md"

# Provider names are the profiler's (threethings_fast.profile --list-providers).
HEADLINE_PROVIDERS=(reference "fused[triton]" "fused[triton]+graph" timm)

# profile NAME CAP BUDGET PROFILER-ARGS...: a profiler run into logs/NAME/, its JSON and markdown kept as NAME.*
# (PROFILE_KEEP="json": the markdown goes into summary.md and logs.tar.gz only; PROFILE_ENV: env assignments)
profile() {
  local name="$1" cap="$2" budget="$3"; shift 3
  step "$name" "$cap" env ${PROFILE_ENV:-} "$PY" -m threethings_fast.profile --out "$OUT/logs/$name" --no-progress \
    --time-budget "$budget" "$@"
  local rc=$?
  [ -f "$OUT/logs/$name/profile.json" ] && cp "$OUT/logs/$name/profile.json" "$OUT/$name.json"
  [ -f "$OUT/logs/$name/profile.md" ] && cp "$OUT/logs/$name/profile.md" "$OUT/$name.md"
  if [ "${PROFILE_KEEP:-json md}" = json ]; then KEEP+=" $name.json"; else KEEP+=" $name.json $name.md"; fi
  return $rc
}

finish() {
  trap - EXIT
  {
    echo "# GPU suite, tier $TIER"
    echo
    echo "$ENV_LINE"
    echo
    echo "- $(date -u +%Y-%m-%dT%H:%M:%SZ), $(( $(date +%s) - START )) s of a $TOTAL s budget;" \
      "TTF_TRITON_AUTOTUNE=$TTF_TRITON_AUTOTUNE; bf16; command: bench/gpu_suite.sh $TIER OUTDIR"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo 'unknown (no .git in this copy)')"
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---:|"
    printf "%s" "$ROWS"
    for xml in tests tests_slow; do
      [ -f "$OUT/$xml.xml" ] && { echo; junit_line "$OUT/$xml.xml"; }
    done
    for md in check.md headline.md compile.md compile3.md families.md profile.md; do
      [ -f "$OUT/$md" ] && { echo; echo "## $md"; echo; sed -n '1,60p' "$OUT/$md"; }
    done
  } > "$OUT/summary.md"
  local f
  for f in "$OUT"/*; do
    case " $KEEP logs " in *" $(basename "$f") "*) ;; *) mv "$f" "$OUT/logs/" ;; esac
  done
  tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
  echo "[$TAG] done in $(( $(date +%s) - START ))s; summary: $OUT/summary.md"
}
trap finish EXIT

# ---- env
ENV_LINE="$(gpu_env_line "bench/gpu_suite.sh runs the Triton kernels on a CUDA GPU (an H100 / H200 for the numbers)")"
if (( $? != 0 )); then
  ROWS+="| env | failed: no CUDA | 0 |"$'\n'
  echo "gpu_suite.sh: $ENV_LINE" >&2
  exit 3
fi
ROWS+="| env | ok | $(( $(date +%s) - START )) |"$'\n'
timeout 20 nvidia-smi > "$OUT/logs/nvidia-smi.log" 2>&1

case "$TIER" in
1)
  KEEP+=" check.json check.md"
  step check 175 "$PY" bench/gpu_check.py --out "$OUT/check.json" --deadline 150
  profile headline 80 60 --models S18x2 S36x1 --batches 1 64 256 --providers "${HEADLINE_PROVIDERS[@]}"
  ;;
2)
  KEEP+=" tests.xml tests_slow.xml ops.json"
  # Fastest files first. On CUDA the tests that run under the interpreter on a CPU run on the device (split-K,
  # attention tails, every forced stem config); the slow ones (a cold compile per forced config) run after.
  GPU_TEST_FILES=(tests/test_triton_common.py tests/test_linear_splitk.py tests/test_attention_tail.py
    tests/test_triton_ops.py tests/test_fused_triton.py tests/test_checkpoint.py tests/test_reliability.py
    tests/test_stem.py tests/test_stem_pdl_configs.py)
  step tests 130 "$PY" -m pytest -p no:cacheprovider -q -rfE --durations=15 --junitxml="$OUT/tests.xml" \
    -m "not slow" -k "not fp16 and not torch.float16" "${GPU_TEST_FILES[@]}"
  step tests_slow 40 "$PY" -m pytest -p no:cacheprovider -q -rfE --junitxml="$OUT/tests_slow.xml" \
    -m "slow" -k "not fp16 and not torch.float16" "${GPU_TEST_FILES[@]}"
  step ops 70 env TTF_BENCH_DEADLINE=55 "$PY" -m pytest -c bench/pytest.ini bench/bench_ops.py -m "not compile" -q \
    -p no:cacheprovider --benchmark-json="$OUT/ops.json"
  # One Inductor compile per call: the profiler warms every (model, provider) of a batch before timing any.
  profile compile 60 45 --models S18x2 --batches 1 --warmup 1 --no-peak --providers "timm+compile"
  ;;
3)
  KEEP+=" profile.json profile.md throughput.png latency.png"
  step profile 320 "$PY" -m threethings_fast.profile --full --batches 1 8 64 256 --time-budget 270 --out "$OUT" \
    --no-progress --trace "S18x2:fused[triton]:1"
  # The families preset's CUDA models (those with a fused path at run time), without its timm+compile rows (one
  # Inductor compile per model and batch); untuned, like tiers 1 and 2.
  PROFILE_KEEP=json PROFILE_ENV="TTF_TRITON_AUTOTUNE=0" profile families 100 70 --preset families \
    --providers "fused[triton]" "fused[triton]+graph" timm
  PROFILE_KEEP=json profile compile3 160 120 --models S18x2 S36x1 --batches 1 64 256 --warmup 1 --no-peak \
    --providers "timm+compile" "timm+compile[reduce-overhead]"
  ;;
esac
exit $(( STEPS_FAILED ? 1 : 0 ))
