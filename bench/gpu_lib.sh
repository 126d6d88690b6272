# Shared by the GPU device scripts (bench/gpu_suite.sh, bench/engine_gpu.sh); sourced, not run.
# The caller sets: OUT (result folder), PY (python), TOTAL (seconds of budget), START (date +%s), GRACE (seconds
# between SIGINT and SIGKILL at a cap), TAG (log prefix), and may set LOG per step (default $OUT/tests.log).
# Results accumulate in ROWS (markdown table rows: | step | result | seconds |).

ROWS="${ROWS:-}"
STEPS_FAILED=0      # set to 1 by any step that fails or is stopped

left() { echo $(( TOTAL - ($(date +%s) - START) )); }

# step NAME CAP CMD...: run CMD with stdout+stderr appended to LOG, stopped at min(CAP, budget left - GRACE) with
# SIGINT (pytest and the Python steps then still write their JSON / XML) and SIGKILL GRACE seconds later. A step
# that would get under 10 s is skipped. Returns CMD's status.
step() {
  local name="$1" cap="$2"; shift 2
  local budget=$(( $(left) - GRACE ))
  (( cap < budget )) && budget=$cap
  if (( budget < 10 )); then
    ROWS+="| $name | skipped: budget spent | 0 |"$'\n'; return 1
  fi
  local t0=$(date +%s)
  echo "[$TAG] $name (cap ${budget}s): $*"
  timeout -s INT --kill-after="$GRACE" "$budget" "$@" >> "${LOG:-$OUT/tests.log}" 2>&1
  local rc=$? seconds=$(( $(date +%s) - t0 ))
  local status="ok"
  (( rc == 124 || rc == 130 || rc == 137 )) && status="stopped at cap"
  (( rc != 0 )) && [ "$status" = ok ] && status="failed (rc $rc)"
  (( rc != 0 )) && STEPS_FAILED=1
  ROWS+="| $name | $status | $seconds |"$'\n'
  echo "[$TAG] $name: $status in ${seconds}s"
  return $rc
}

# gpu_env_line WHAT: prints "<GPU> (sm_XY), torch ..., CUDA ..., triton ..., timm ..." and succeeds, or prints why
# not ("no CUDA device: WHAT") and fails.
gpu_env_line() {
  timeout 20 "$PY" - "$1" <<'PYEOF' 2>&1 || { local rc=$?; (( rc == 124 )) && echo "the CUDA check hung for 20 s"; return $rc; }
import sys
try:
    import torch
except ImportError:
    raise SystemExit(f"{sys.executable} cannot import torch (set TTF_PYTHON to the interpreter that has it)")
if not torch.cuda.is_available():
    raise SystemExit(f"no CUDA device: {sys.argv[1]}")
import triton
cc = torch.cuda.get_device_capability()
try:
    import timm; tv = timm.__version__
except ImportError:
    tv = "absent"
print(f"{torch.cuda.get_device_name()} (sm_{cc[0]}{cc[1]}), torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"triton {triton.__version__}, timm {tv}")
PYEOF
}

# junit_line XML: one line of counts and the first failures of a pytest junit XML file.
junit_line() {
  "$PY" - "$1" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
s = ET.parse(sys.argv[1]).getroot()
suites = [s] if s.tag == "testsuite" else s.findall("testsuite")
n = {k: sum(int(x.get(k, 0)) for x in suites) for k in ("tests", "failures", "errors", "skipped")}
fails = [c.get("name") for x in suites for c in x.iter("testcase")
         if c.find("failure") is not None or c.find("error") is not None]
print(f"{sys.argv[1].rsplit('/', 1)[-1]}: {n['tests']} tests, {n['failures']} failures, {n['errors']} errors, "
      f"{n['skipped']} skipped" + (f"; first failures: {fails[:8]}" if fails else ""))
PYEOF
}
