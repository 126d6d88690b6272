"""The Triton path's tiered GPU run dry-runs on the CPU: each tier stops at once, clearly, without CUDA, and the time
model in its header adds up to what the tiers promise (tier 1 <= 4 min, tier 2 <= 5 min, tiers 1 + 2 <= 9 min)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_suite.sh"

pytestmark = [pytest.mark.scripts,
              pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is for machines without CUDA")]


def _run(args, tmp_path):
    return subprocess.run(["bash", str(SCRIPT)] + args, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "TTF_PYTHON": sys.executable, "HOME": str(tmp_path)})


@pytest.mark.parametrize("tier", ["1", "2", "3"])
def test_each_tier_stops_clearly_without_cuda(tmp_path, tier):
    out = tmp_path / "out"
    run = _run([tier, str(out)], tmp_path)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "no CUDA device" in run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "summary.md"]
    summary = (out / "summary.md").read_text()
    assert summary.startswith(f"# GPU suite, tier {tier}") and "| env | failed: no CUDA |" in summary
    assert "TTF_TRITON_AUTOTUNE=" + ("1" if tier == "3" else "0") in summary


def test_bad_arguments_are_refused(tmp_path):
    assert _run(["4", str(tmp_path / "o")], tmp_path).returncode == 2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    run = _run(["1", str(tmp_path / "full")], tmp_path)
    assert run.returncode == 2 and "not empty" in run.stderr
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def _tier_steps(header: str, tier: int) -> list[tuple[int, int]]:
    """(expected seconds, cap seconds) of each step listed under 'Tier N' in the script's header."""
    part = re.split(r"#   Tier (\d)", header)
    sections = {int(part[i]): part[i + 1] for i in range(1, len(part), 2)}
    steps = []
    for line in sections[tier].splitlines():
        m = re.match(r"#\s+\S+\s+~(\d+) s\b", line)
        if m:
            steps.append([int(m.group(1)), None])
        cap = re.search(r"cap\s+(\d+) s\s*$", line)
        if cap and steps:
            steps[-1][1] = int(cap.group(1))
    return [tuple(s) for s in steps]


def test_time_model_adds_up():
    """Each step is capped at min(cap, budget left - GRACE): a tier's expected times must fit its budget - GRACE."""
    header = SCRIPT.read_text().split("set -uo pipefail")[0]
    grace = int(re.search(r"^GRACE=(\d+)", SCRIPT.read_text(), re.M).group(1))
    assert f"budget left - {grace} s" in header
    budgets = {1: 240, 2: 300, 3: 540}
    for tier, budget in budgets.items():
        steps = _tier_steps(header, tier)
        assert steps and all(cap is not None and expected <= cap for expected, cap in steps), steps
        assert sum(e for e, _ in steps) <= budget - grace, (tier, steps)
        assert f"{budget}" in header
    total = sum(e for t in (1, 2) for e, _ in _tier_steps(header, t))
    assert total <= 9 * 60
    stated = re.search(r"Tiers 1 \+ 2 are expected to take ([\d +]+)= (\d+) s", header)
    assert stated and sum(int(x) for x in stated.group(1).split("+")) == int(stated.group(2)) == total


def test_gpu_check_refuses_without_cuda(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(tmp_path / "c.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no CUDA device" in run.stderr


def _gpu_check_module(monkeypatch):
    import importlib.util
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    spec = importlib.util.spec_from_file_location("gpu_check_script", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_logic_on_the_cpu(tmp_path, monkeypatch):
    """The correctness step's own logic (bounds, rows, files) on tiny models, fused[torch] on the CPU: the ViTs, then
    by default the tiny test model of every family with a fused path (MLP-Mixer, ResMLP, gMLP, ...)."""
    import json
    out = tmp_path / "c.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(out), "--cpu-dry-run",
                          "--models", "tiny_2x2", "tiny_4x1", "--batches", "1", "3"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    record = json.loads(out.read_text())
    assert record["env"]["dtype"] == "bfloat16" and "command" in record["env"]
    rows = record["rows"]
    families = _gpu_check_module(monkeypatch).default_families(dry_run=True)
    assert {"mixer_tiny_2x2", "resmlp_tiny_2x2", "gmlp_tiny_2"} <= set(families)
    assert [(r["model"], r["batch"], r["provider"]) for r in rows] == [
        (m, b, "fused[torch]") for m in ("tiny_2x2", "tiny_4x1", *families) for b in (1, 3)]
    assert all(r["ok"] and r["err"] <= r["bound"] for r in rows)
    md = out.with_suffix(".md").read_text()
    assert "| tiny_2x2 | 1 | fused[torch] |" in md and "| mixer_tiny_2x2 | 3 | fused[torch] |" in md


def test_gpu_check_family_rows_and_their_graph_row(monkeypatch):
    """On the GPU the families get a fused[triton] row, a fused[triton]+graph row (the replay against float64
    and == eager) and a fused[triton/fusednorm] row. Here the same logic with fused[torch] and a stand-in replay;
    the GPU run's default family models are each fusable family's CUDA model of the profiler's families preset."""
    gc = _gpu_check_module(monkeypatch)
    from threethings_fast.fused.model import FusedModel
    from threethings_fast.models import FAMILIES
    defaults = gc.default_families(dry_run=False)
    assert defaults[:3] == ["mixer_b16_224", "resmlp_24_224", "gmlp_b16_224"]
    assert len(defaults) == sum(f.fusable for name, f in FAMILIES.items() if name != "vit")
    assert gc.FAMILY_BACKENDS == ("fused[triton]", "fused[triton]+graph", "fused[triton/fusednorm]")
    captured = []

    def capture(self, batch_sizes):       # a replay that recomputes: equal to eager, bitwise, on the CPU
        captured.append(list(batch_sizes))
        return lambda x: self(x)

    monkeypatch.setattr(FusedModel, "capture", capture)
    rows = []
    gc.check_model("resmlp_tiny_2x1", [1, 2], ["fused[torch]", "fused[torch]+graph"], rows, lambda: None,
                   float("inf"), torch.device("cpu"))
    assert [(r["provider"], r["batch"]) for r in rows] == [("fused[torch]", 1), ("fused[torch]+graph", 1),
                                                           ("fused[torch]", 2), ("fused[torch]+graph", 2)]
    assert captured == [[1], [2]]
    assert all(r["ok"] and r["err"] <= r["bound"] for r in rows)
    assert [r.get("graph_equal") for r in rows] == [None, True, None, True]
