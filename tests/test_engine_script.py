"""The engine's GPU run dry-runs on the CPU: it must stop at once, clearly, without CUDA, and its time model must fit
the 6 minutes it promises."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "engine_gpu.sh"

pytestmark = [pytest.mark.scripts,
              pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is for machines without CUDA")]


@pytest.mark.parametrize("mode", [[], ["sanitize"]])
def test_gpu_script_stops_clearly_without_cuda(tmp_path, mode):
    run = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")] + mode, capture_output=True, text=True,
                         timeout=120, env={"PATH": "/usr/bin:/bin", "TTF_PYTHON": sys.executable, "HOME": str(tmp_path)})
    assert run.returncode == 3, run.stdout + run.stderr
    assert "no CUDA device" in run.stderr
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| env | failed: no CUDA |" in summary
    assert not (tmp_path / "out" / "build.log").exists()     # nothing built on a machine that cannot run it


def test_gpu_script_time_model_fits_six_minutes():
    header = SCRIPT.read_text().split("set -uo pipefail")[0]
    caps = [int(c) for c in re.findall(r"cap\s+(\d+) s", header)]
    budget = int(re.search(r"TTF_ENGINE_GPU_SECONDS, default (\d+) s", header).group(1))
    assert len(caps) == 5 and max(caps) < budget <= 6 * 60, (caps, budget)   # the budget bounds the sum
    expected = [int(t) for t in re.findall(r"~(\d+) s", header)]
    assert sum(expected) <= budget, f"expected step times {expected} exceed the {budget} s budget"


@pytest.mark.parametrize("script", ["bench_engine.py", "sanitize_engine.py"])
def test_gpu_python_steps_refuse_without_cuda(script, tmp_path):
    args = [sys.executable, str(ROOT / "bench" / script)] + (["--out", str(tmp_path / "x.json")]
                                                              if script == "bench_engine.py" else [])
    run = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "CUDA" in run.stderr
