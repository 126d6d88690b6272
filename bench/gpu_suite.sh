#!/usr/bin/env bash
# One-call GPU suite: build, GPU tests, profiler, pytest-benchmark suites, stem benchmark -> OUTDIR.
#
#     bench/gpu_suite.sh OUTDIR            # from a fresh copy of the repo; torch + triton preinstalled; offline
#
# TTF_SUITE_PYTHON: use this interpreter (package already installed) instead of building .venv.
# TTF_SUITE_PROFILE_ARGS: extra profiler arguments (later ones win), e.g. "--models S36x1 S18x2 --batches 1 64".
# TTF_SUITE_AUTOTUNE: 0 (default) = every step runs the first config of each kernel's list, untuned: cold Triton
# compiles (10-50 s per hMLP config, one per config x shape class when tuning) would not fit every step into one
# call; 1 = profile, bench and stem autotune (give them the call to themselves with TTF_SUITE_PROFILE_ARGS). The
# setting is written into summary.md and stem.json.
# Budget: TTF_SUITE_SECONDS (default 540 = 9 min) for everything, set-up included. Each step gets a cap (below),
# bounded by what is left minus a reserve for the steps after it. At its cap a step gets SIGINT
# (`timeout -s INT --kill-after=30`): pytest, pytest-benchmark and the Python scripts stop on KeyboardInterrupt and
# still write their JSON / junit XML; SIGKILL follows 30 s later if it has not exited. A failing or stopped step is
# logged and the next one runs. Steps, in priority order:
#     env       scripts/env.sh with PIP_NO_INDEX=1 (a venv on top of the system torch/triton; nothing downloaded),
#               falling back to a plain `pip install --no-deps --no-build-isolation --no-index -e .`, then to the
#               source tree on PYTHONPATH; "working" = `import threethings_fast.triton_kernels` succeeds
#     tests     pytest -m "gpu and not slow", bf16 only (the fp16 duplicates are deselected here, not deleted), files
#               in a fixed order, TTF_TRITON_AUTOTUNE=0 (first config of each kernel: one compile per variant),
#               junit XML (counts in summary.md), the 15 slowest tests
#     profile   python -m threethings_fast.profile --full --batches 1 8 64 256 (time-budgeted: batch 1, 256, then
#               the middle) + a Chrome trace of S18x2 fused[triton] b1
#     bench     pytest bench/bench_model.py bench/bench_ops.py -m "not compile" --benchmark-json (whole model first,
#               then per op; TTF_BENCH_DEADLINE skips what would not fit)
#     stem      python bench/bench_stem.py OUTDIR/stem.json --batch 64 (JSON rewritten after every row)
#     compile   pytest bench/ -m compile --benchmark-json (torch.compile providers, only if >= 90 s are left)
# Triton: TRITON_CACHE_AUTOTUNING=1 (autotuning results persist on disk: the bench and stem steps reuse what the
# profile tuned; the kernel cache is shared by all steps) and TRITON_PRINT_AUTOTUNING=1 (chosen configs in the logs).
# OUTDIR ends flat, at most 8 files: summary.md, profile.json, profile.md, throughput.png, latency.png, bench.json,
# stem.json, logs.tar.gz (every step's log, the Chrome trace, bench_compile.json, the GPU tests' junit XML, anything
# else a step left in OUTDIR).
set -uo pipefail

OUT="${1:?usage: bench/gpu_suite.sh OUTDIR}"
# OUTDIR is resolved against the caller's directory, and must be empty or new: at the end everything in it but the
# result files is archived into logs.tar.gz and deleted (so the repository itself, or a folder holding other work,
# would be swept away).
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
case "$REPO/" in "$OUT"/*) echo "gpu_suite.sh: OUTDIR $OUT contains the repository; give a new folder" >&2; exit 2;; esac
if [ -n "$(ls -A "$OUT")" ]; then
  echo "gpu_suite.sh: OUTDIR $OUT is not empty; give a new or empty folder" >&2; exit 2
fi
cd "$REPO"
mkdir -p "$OUT/logs"
LOGS="$OUT/logs"
TOTAL="${TTF_SUITE_SECONDS:-540}"
GRACE=30            # seconds between SIGINT at a step's cap and SIGKILL
START=$(date +%s)
SUMMARY_ROWS=""
PY=""
GPU_LINE=""
VERSIONS_LINE=""

export TRITON_CACHE_AUTOTUNING=1 TRITON_PRINT_AUTOTUNING=1 PYTHONUNBUFFERED=1
SUITE_AUTOTUNE="${TTF_SUITE_AUTOTUNE:-0}"
export TTF_TRITON_AUTOTUNE="$SUITE_AUTOTUNE"   # the tests step always turns it off

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( TOTAL - $(elapsed) )); }
clamp() { local v=$1 lo=$2 hi=$3; (( v < lo )) && v=$lo; (( v > hi )) && v=$hi; echo "$v"; }

# step NAME CAP_SECONDS CMD...: run CMD with stdout+stderr to logs/NAME.log; SIGINT at min(CAP, time left - GRACE -
# 5), SIGKILL GRACE seconds later — so even a step that ignores SIGINT ends inside the suite's budget.
step() {
  local name="$1" cap="$2"; shift 2
  local budget=$(( $(left) - GRACE - 5 ))
  (( cap < budget )) && budget=$cap
  if (( budget < 10 )); then
    echo "[suite] $name: skipped, suite time budget spent" | tee -a "$LOGS/suite.log"
    SUMMARY_ROWS+="| $name | skipped (no time left) | 0 | — |"$'\n'
    return 0
  fi
  echo "[suite] $(elapsed)s: $name (cap ${budget}s): $*" | tee -a "$LOGS/suite.log"
  local t0=$(date +%s)
  timeout -s INT --kill-after="$GRACE" "$budget" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local status="ok"
  if (( rc == 124 )); then status="stopped at its ${budget}s cap (SIGINT; partial output kept)"
  elif (( rc == 137 )); then status="KILLED at ${budget}s + ${GRACE}s (ignored SIGINT; output may be lost)"
  elif (( rc != 0 )); then status="FAILED (rc $rc)"; fi
  echo "[suite] $name: $status in ${dt}s" | tee -a "$LOGS/suite.log"
  SUMMARY_ROWS+="| $name | $status | $dt | logs/$name.log |"$'\n'
  return $rc
}

# junit_counts XML: "T tests: P passed, F failed, E errors, S skipped (X s)" and the failing tests' names.
junit_counts() {
  python3 - "$1" <<'PYEOF' 2>/dev/null || echo "(junit XML unreadable: $1)"
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
secs = sum(float(s.get("time", 0)) for s in suites)
passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
print(f"{n['tests']} tests: {passed} passed, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped "
      f"({secs:.0f} s)")
for s in suites:
    for case in s.iter("testcase"):
        for kind in ("failure", "error"):
            bad = case.find(kind)
            if bad is not None:
                msg = (bad.get("message") or "").splitlines()[0][:200] if bad.get("message") else ""
                print(f"  {kind.upper()}: {case.get('classname')}::{case.get('name')}: {msg}")
PYEOF
}

finish() {
  trap - EXIT TERM INT
  {
    echo "# GPU suite summary"
    echo
    echo "- $(date -u +%Y-%m-%dT%H:%M:%SZ), $(elapsed) s of a ${TOTAL} s budget"
    echo "- GPU: $GPU_LINE"
    [ -n "$VERSIONS_LINE" ] && echo "- $VERSIONS_LINE"
    if [ "$SUITE_AUTOTUNE" = "0" ]; then
      echo "- Triton autotuning OFF (TTF_SUITE_AUTOTUNE=0): first config of each kernel's list, untuned timings"
    else
      echo "- Triton autotuning on (profile, bench, stem)"
    fi
    if git rev-parse --git-dir > /dev/null 2>&1; then
      echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' + local changes')"
    else
      echo "- commit: unknown (no .git in this copy)"
    fi
    echo
    echo "| step | status | seconds | log (in logs.tar.gz) |"
    echo "|---|---|---:|---|"
    printf "%s" "$SUMMARY_ROWS"
    echo
    if [ -f "$LOGS/gpu_tests.xml" ] || [ -f "$LOGS/tests.log" ]; then
      echo "## GPU tests (TTF_TRITON_AUTOTUNE=0, bf16, not slow)"; echo; echo '```'
      [ -f "$LOGS/tests.log" ] && grep -m1 -oE "collected [0-9]+ items.*" "$LOGS/tests.log"
      if [ -f "$LOGS/gpu_tests.xml" ]; then junit_counts "$LOGS/gpu_tests.xml"; else echo "no junit XML written"; fi
      [ -f "$LOGS/tests.log" ] && grep -E "^(FAILED|ERROR) " "$LOGS/tests.log" | head -30
      if [ -f "$LOGS/tests.log" ]; then
        echo "slowest:"; grep -E "^[0-9.]+s (setup|call|teardown) " "$LOGS/tests.log" | head -15
      fi
      echo '```'; echo
    fi
    for name in env env_fallback tests profile bench stem compile; do
      if grep -q "^| $name | \(FAILED\|stopped\|KILLED\)" <<< "$SUMMARY_ROWS"; then
        echo "## $name: last lines of its log"; echo; echo '```'; tail -30 "$LOGS/$name.log"; echo '```'; echo
      fi
    done
    if [ -f "$OUT/bench.json" ]; then
      echo "## bench.json"; echo
      python3 -c 'import json,sys; b=json.load(open(sys.argv[1]))["benchmarks"]; print(f"{len(b)} benchmarks timed")' \
        "$OUT/bench.json" 2>/dev/null || echo "(unreadable)"
      [ -f "$LOGS/bench.log" ] && grep -E "^SKIPPED \[[0-9]+\].*TTF_BENCH_DEADLINE" "$LOGS/bench.log" \
        | sed -E 's/^SKIPPED \[([0-9]+)\].*/\1/' | awk '{n += $1} END {print "skipped at TTF_BENCH_DEADLINE: " n+0}'
      echo
    fi
    if [ -f "$OUT/profile.md" ]; then
      echo "## Profile (speed-ups; the full tables are in profile.md)"; echo
      grep -E "^- \*\*(interrupted|time budget)" "$OUT/profile.md" && echo
      sed -n '/^## Speed-ups/,/^## Throughput and latency/p' "$OUT/profile.md" | sed '$d'
    fi
  } > "$OUT/summary.md"
  # Everything but the 7 headline files goes into one archive (the device tool returns 8 files).
  local f
  for f in "$OUT"/* "$OUT"/.[!.]*; do
    [ -e "$f" ] || continue
    case "$(basename "$f")" in
      logs|summary.md|profile.json|profile.md|throughput.png|latency.png|bench.json|stem.json) ;;
      *) mv "$f" "$LOGS"/ ;;
    esac
  done
  tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$LOGS"
  echo "[suite] done in $(elapsed)s; summary: $OUT/summary.md"
  ls -la "$OUT"
}
trap finish EXIT
trap 'exit 143' TERM INT

timeout 20 nvidia-smi > "$LOGS/nvidia-smi.log" 2>&1
GPU_LINE="$(timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"

# 1. env ------------------------------------------------------------------------------------------------------------
# The venv is always this tree's own .venv (TTF_VENV is ignored: an editable install into a venv shared with another
# checkout would re-point that checkout's package here). TTF_SUITE_PYTHON skips this step and uses that interpreter.
# From / (not the repo root, which -c would put on sys.path): does the installed package (or PYTHONPATH) work?
works() { [ -n "$1" ] && (cd / && "$1" -c "import threethings_fast.triton_kernels") >> "$LOGS/suite.log" 2>&1; }
absolute() { case "$1" in /*|"") echo "$1" ;; */*) echo "$PWD/$1" ;; *) echo "$1" ;; esac; }   # env.sh prints .venv/bin/python
if [ -n "${TTF_SUITE_PYTHON:-}" ]; then
  PY="$(absolute "$TTF_SUITE_PYTHON")"
  SUMMARY_ROWS+="| env | skipped (TTF_SUITE_PYTHON=$PY) | 0 | — |"$'\n'
else
  step env 120 env -u TTF_VENV PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 scripts/env.sh \
    && PY="$(absolute "$(tail -1 "$LOGS/env.log")")"
  if ! works "$PY"; then
    echo "[suite] scripts/env.sh gave no working environment; trying a plain editable install" | tee -a "$LOGS/suite.log"
    PY=""
    step env_fallback 90 bash -c 'python3 -m venv --system-site-packages --without-pip .venv-suite &&
      .venv-suite/bin/python -m pip install -q --no-deps --no-build-isolation --no-index -e . &&
      echo "$PWD/.venv-suite/bin/python"' && PY="$(absolute "$(tail -1 "$LOGS/env_fallback.log")")"
  fi
fi
if ! works "$PY"; then
  # Last resort: the source tree on PYTHONPATH (threethings_fast/__init__.py maps triton_kernels/ in), with the
  # first interpreter that then imports the kernels — a venv's (it has the test tools) before the system python3.
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  found=""
  for cand in "$PY" "$PWD/.venv/bin/python" "$PWD/.venv-suite/bin/python" python3; do
    if [ -n "$cand" ] && works "$cand"; then found="$cand"; break; fi
  done
  PY="${found:-${PY:-python3}}"   # none works: the steps fail and their logs say why
  echo "[suite] no installed package works; the remaining steps use $PY with PYTHONPATH=$PYTHONPATH" \
    | tee -a "$LOGS/suite.log"
  SUMMARY_ROWS+="| env | package not importable: steps run $PY with the source tree on PYTHONPATH | 0 | logs/suite.log |"$'\n'
fi

VERSIONS_LINE="$(timeout 60 "$PY" -c 'import torch,triton,sys; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, triton {triton.__version__}")' 2>/dev/null)"

# 2. GPU tests --------------------------------------------------------------------------------------------------------
# Cold Triton compiles dominate: autotuning off (one config per kernel variant), bf16 only, slow tests out. The cap
# leaves ~330 s for profile + bench + stem.
step tests "$(clamp $(( $(left) - 330 )) 60 180)" env TTF_TRITON_AUTOTUNE=0 "$PY" -m pytest \
  -m "gpu and not slow" -k "not fp16 and not torch.float16" -v -rfE --durations=15 -p no:cacheprovider \
  --junitxml="$LOGS/gpu_tests.xml" \
  tests/test_triton_ops.py tests/test_fused_triton.py tests/test_checkpoint.py tests/test_stem.py

# 3. profiler (its own budget orders and trims batches; the cap leaves it time to start, trace and write) -------------
PROFILE_BUDGET=$(clamp $(( $(left) - 190 )) 45 160)
step profile $(( PROFILE_BUDGET + 45 )) "$PY" -m threethings_fast.profile --full --batches 1 8 64 256 \
  --reps 20 --warmup 3 --time-budget "$PROFILE_BUDGET" --trace "S18x2:fused[triton]:1" --out "$OUT" --no-progress \
  ${TTF_SUITE_PROFILE_ARGS:-}

# 4. pytest-benchmark suites (without torch.compile): the whole model first, then per op (the hMLP op compiles
# longest and comes last) -----------------------------------------------------------------------------------------
BENCH_DEADLINE=$(clamp $(( $(left) - 95 )) 20 100)
step bench $(( BENCH_DEADLINE + 35 )) env TTF_BENCH_DEADLINE="$BENCH_DEADLINE" \
  "$PY" -m pytest bench/bench_model.py bench/bench_ops.py -m "not compile" -q -p no:cacheprovider \
  --benchmark-json="$OUT/bench.json"

# 5. the stem benchmark of bench/bench_stem.py -------------------------------------------------------------------------
if [ -f bench/bench_stem.py ]; then
  STEM_ARGS=(--batch 64); (( $(left) < 120 )) && STEM_ARGS+=(--no-compile)
  step stem 90 "$PY" bench/bench_stem.py "$OUT/stem.json" "${STEM_ARGS[@]}"
fi

# 6. torch.compile providers with whatever is left ---------------------------------------------------------------------
if (( $(left) >= 90 )); then
  COMPILE_DEADLINE=$(( $(left) - GRACE - 5 - 40 ))
  step compile $(( COMPILE_DEADLINE + 35 )) env TTF_BENCH_DEADLINE="$COMPILE_DEADLINE" \
    "$PY" -m pytest bench/bench_ops.py bench/bench_model.py -m compile -q -p no:cacheprovider \
    --benchmark-json="$OUT/bench_compile.json"
else
  SUMMARY_ROWS+="| compile | skipped (under 90 s left) | 0 | — |"$'\n'
fi
exit 0
