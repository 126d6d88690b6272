#!/usr/bin/env bash
# One-call GPU suite: build, GPU tests, profiler, pytest-benchmark suites, stem benchmark -> OUTDIR.
#
#     bench/gpu_suite.sh OUTDIR            # from a fresh copy of the repo; torch + triton preinstalled; offline
#
# TTF_SUITE_PYTHON: use this interpreter (package already installed) instead of building .venv.
# TTF_SUITE_PROFILE_ARGS: extra profiler arguments (later ones win), e.g. "--models S36x1 S18x2 --batches 1 64".
# Budget: TTF_SUITE_SECONDS (default 540 = 9 min) for everything; each step gets a share, capped by what is left,
# and is killed at its cap (`timeout`). A failing or killed step is logged and the next one runs. Steps:
#     env       scripts/env.sh with PIP_NO_INDEX=1 (a venv on top of the system torch/triton; nothing downloaded),
#               falling back to a plain `pip install --no-deps --no-build-isolation --no-index -e .`
#     tests     pytest -m gpu -q
#     profile   python -m threethings_fast.profile --full (time-budgeted) + a Chrome trace of S18x2 fused[triton] b1
#     bench     pytest bench/ -m "not compile" --benchmark-json   (ops + whole model, real shapes, bf16)
#     stem      python bench/bench_stem.py OUTDIR/stem.json       (if the script exists)
#     compile   pytest bench/ -m compile --benchmark-json         (torch.compile providers, whatever time is left)
# OUTDIR ends flat, 8 files: summary.md, profile.json, profile.md, throughput.png, latency.png, bench.json,
# stem.json, logs.tar.gz (every step's log, the Chrome trace, bench_compile.json, the GPU tests' junit XML).
set -uo pipefail

OUT="${1:?usage: bench/gpu_suite.sh OUTDIR}"
cd "$(dirname "$0")/.."
mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
LOGS="$OUT/logs"
TOTAL="${TTF_SUITE_SECONDS:-540}"
START=$(date +%s)
SUMMARY_ROWS=""
PY=""

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( TOTAL - $(elapsed) )); }

# step NAME CAP_SECONDS CMD...: run CMD with stdout+stderr to logs/NAME.log, killed after min(CAP, time left - 5).
step() {
  local name="$1" cap="$2"; shift 2
  local budget=$(( $(left) - 5 ))
  (( cap < budget )) && budget=$cap
  if (( budget < 10 )); then
    echo "[suite] $name: skipped, suite time budget spent" | tee -a "$LOGS/suite.log"
    SUMMARY_ROWS+="| $name | skipped (no time left) | 0 | — |"$'\n'
    return 0
  fi
  echo "[suite] $(elapsed)s: $name (cap ${budget}s): $*" | tee -a "$LOGS/suite.log"
  local t0=$(date +%s)
  timeout --kill-after=10 "$budget" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local status="ok"
  if (( rc == 124 || rc == 137 )); then status="killed at ${budget}s cap (rc $rc)"; elif (( rc != 0 )); then status="FAILED (rc $rc)"; fi
  echo "[suite] $name: $status in ${dt}s" | tee -a "$LOGS/suite.log"
  SUMMARY_ROWS+="| $name | $status | $dt | logs/$name.log |"$'\n'
  return $rc
}

finish() {
  trap - EXIT TERM INT
  {
    echo "# GPU suite summary"
    echo
    echo "- $(date -u +%Y-%m-%dT%H:%M:%SZ), $(elapsed) s of a ${TOTAL} s budget"
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
    [ -n "$PY" ] && echo "- $("$PY" -c 'import torch,triton,sys; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, triton {triton.__version__}")' 2>/dev/null)"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' + local changes')"
    echo
    echo "| step | status | seconds | log (in logs.tar.gz) |"
    echo "|---|---|---:|---|"
    printf "%s" "$SUMMARY_ROWS"
    echo
    if [ -f "$LOGS/tests.log" ]; then
      echo "## GPU tests"; echo; echo '```'; grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed|skipped|errors?)" "$LOGS/tests.log" | tail -30; echo '```'; echo
    fi
    for name in env tests profile bench stem compile; do
      if grep -q "^| $name | FAILED\|^| $name | killed" <<< "$SUMMARY_ROWS"; then
        echo "## $name: last lines of its log"; echo; echo '```'; tail -30 "$LOGS/$name.log"; echo '```'; echo
      fi
    done
    if [ -f "$OUT/profile.md" ]; then
      echo "## Profile (speed-ups; the full tables are in profile.md)"; echo
      sed -n '/^## Speed-ups/,/^## Throughput and latency/p' "$OUT/profile.md" | sed '$d'
    fi
  } > "$OUT/summary.md"
  # Everything that is not one of the 7 headline files goes into one archive (the device tool returns 8 files).
  mv "$OUT"/trace_*.json "$LOGS"/ 2>/dev/null
  [ -f "$OUT/bench_compile.json" ] && mv "$OUT/bench_compile.json" "$LOGS"/
  tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$LOGS"
  echo "[suite] done in $(elapsed)s; summary: $OUT/summary.md"
  ls -la "$OUT"
}
trap finish EXIT
trap 'exit 143' TERM INT

nvidia-smi > "$LOGS/nvidia-smi.log" 2>&1

# 1. env ------------------------------------------------------------------------------------------------------------
# The venv is always this tree's own .venv (TTF_VENV is ignored: an editable install into a venv shared with another
# checkout would re-point that checkout's package here). TTF_SUITE_PYTHON skips this step and uses that interpreter.
if [ -n "${TTF_SUITE_PYTHON:-}" ]; then
  PY="$TTF_SUITE_PYTHON"
  SUMMARY_ROWS+="| env | skipped (TTF_SUITE_PYTHON=$PY) | 0 | — |"$'\n'
elif step env 240 env -u TTF_VENV PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 scripts/env.sh; then
  PY="$(tail -1 "$LOGS/env.log")"
else
  echo "[suite] scripts/env.sh failed; trying a plain editable install" | tee -a "$LOGS/suite.log"
  step env_fallback 180 bash -c 'python3 -m venv --system-site-packages .venv-suite &&
    .venv-suite/bin/python -m pip install -q --no-deps --no-build-isolation --no-index -e . &&
    echo "$PWD/.venv-suite/bin/python"' && PY="$(tail -1 "$LOGS/env_fallback.log")"
fi
if [ -z "$PY" ] || ! "$PY" -c "import threethings_fast" >> "$LOGS/suite.log" 2>&1; then
  echo "[suite] no working environment; the remaining steps use python3 with the repo on PYTHONPATH" \
    | tee -a "$LOGS/suite.log"
  PY="python3"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

# 2. GPU tests --------------------------------------------------------------------------------------------------------
step tests 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$LOGS/gpu_tests.xml"

# 3. profiler (its own budget trims batches; the hard cap leaves it time to write its files) -------------------------
PROFILE_BUDGET=$(( $(left) - 200 )); (( PROFILE_BUDGET > 200 )) && PROFILE_BUDGET=200; (( PROFILE_BUDGET < 30 )) && PROFILE_BUDGET=30
step profile $(( PROFILE_BUDGET + 60 )) "$PY" -m threethings_fast.profile --full --reps 20 --warmup 3 \
  --time-budget "$PROFILE_BUDGET" --trace "S18x2:fused[triton]:1" --out "$OUT" --no-progress \
  ${TTF_SUITE_PROFILE_ARGS:-}

# 4. pytest-benchmark suites (without torch.compile) ------------------------------------------------------------------
BENCH_DEADLINE=$(( $(left) - 120 )); (( BENCH_DEADLINE > 110 )) && BENCH_DEADLINE=110; (( BENCH_DEADLINE < 20 )) && BENCH_DEADLINE=20
step bench $(( BENCH_DEADLINE + 60 )) env TTF_BENCH_DEADLINE="$BENCH_DEADLINE" \
  "$PY" -m pytest bench/ -m "not compile" -q -p no:cacheprovider --benchmark-json="$OUT/bench.json"

# 5. the stem benchmark of bench/bench_stem.py -------------------------------------------------------------------------
if [ -f bench/bench_stem.py ]; then
  STEM_ARGS=(); (( $(left) < 150 )) && STEM_ARGS=(--no-compile)
  step stem 90 "$PY" bench/bench_stem.py "$OUT/stem.json" "${STEM_ARGS[@]}"
fi

# 6. torch.compile providers with whatever is left ---------------------------------------------------------------------
COMPILE_DEADLINE=$(( $(left) - 45 ))
if (( COMPILE_DEADLINE >= 30 )); then
  step compile $(( COMPILE_DEADLINE + 35 )) env TTF_BENCH_DEADLINE="$COMPILE_DEADLINE" \
    "$PY" -m pytest bench/ -m compile -q -p no:cacheprovider --benchmark-json="$OUT/bench_compile.json"
else
  SUMMARY_ROWS+="| compile | skipped (no time left) | 0 | — |"$'\n'
fi
exit 0
