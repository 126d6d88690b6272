"""The profiler's outputs on tiny models (CPU, a few seconds): JSON schema, markdown, PNGs, the Chrome trace.
Not the speed."""
import json
import os

import pytest

from threethings_fast.profile import SCHEMA_VERSION, main, validate
from threethings_fast.profile.report import PAPER_TABLE4

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# --device cpu: the test reads CPU defaults (float32, no Triton provider) on a CUDA machine too.
ARGS = ["--models", "tiny_2x2", "tiny_4x1", "--batches", "1", "2", "--reps", "2", "--warmup", "1", "--no-progress",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    assert main(ARGS + ["--out", str(out), "--trace", "tiny_2x2:fused[torch]:2"]) == 0
    with open(out / "profile.json") as f:
        return out, json.load(f)


def test_json_matches_schema(run):
    _, result = run
    assert validate(result) == []
    assert result["schema"] == SCHEMA_VERSION
    assert result["device"]["type"] == "cpu" and result["dtype"] == "float32"
    assert isinstance(result["versions"]["torch"], str)
    assert result["settings"]["batches"] == [1, 2] and result["settings"]["models"] == ["tiny_2x2", "tiny_4x1"]
    assert result["peak"]["matmul"]["tflops"] > 0 and result["peak"]["copy"]["gbps"] > 0
    assert result["errors"] == []


def test_every_config_timed(run):
    _, result = run
    got = {(r["model"], r["provider"], r["batch"]) for r in result["results"]}
    want = {(m, p, b) for b in (1, 2) for m, p in [("tiny_2x2", "reference"), ("tiny_2x2", "branch_by_branch"),
                                                   ("tiny_2x2", "fused[torch]"), ("tiny_4x1", "reference"),
                                                   ("tiny_4x1", "fused[torch]")]}
    assert got == want
    for r in result["results"]:
        assert r["n"] == 2 and len(r["raw_s"]) == 2 and all(t > 0 for t in r["raw_s"])
        assert r["p10_s"] <= r["median_s"] <= r["p90_s"]
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["median_s"])
        flops = result["models"][r["model"]]["flops_per_image"]
        assert r["tflops"] == pytest.approx(r["batch"] * flops / r["median_s"] / 1e12)
        assert r["pct_peak"] == pytest.approx(100 * r["tflops"] / result["peak"]["matmul"]["tflops"])
    # providers that cannot run on the CPU are listed, not silently dropped
    assert {s["provider"] for s in result["skipped"]} >= {"fused[triton]", "fused[triton]+graph",
                                                        "fused[triton/fusednorm]", "fused[triton/fusednorm]+graph"}


def test_ratios(run):
    _, result = run
    assert result["models"]["tiny_2x2"]["sequential_partner"] == "tiny_4x1"
    assert result["models"]["tiny_4x1"]["sequential_partner"] is None
    kinds = {(r["kind"], r["batch"], r["numerator"], r["denominator"]) for r in result["ratios"]}
    for b in (1, 2):
        assert ("par/seq", b, "tiny_2x2:reference", "tiny_4x1:reference") in kinds
        assert ("par/seq", b, "tiny_2x2:fused[torch]", "tiny_4x1:fused[torch]") in kinds
        assert ("fused/branch_by_branch", b, "tiny_2x2:fused[torch]", "tiny_2x2:branch_by_branch") in kinds
        assert ("fused/reference", b, "tiny_4x1:fused[torch]", "tiny_4x1:reference") in kinds
    rows = {(r["model"], r["provider"], r["batch"]): r for r in result["results"]}
    for r in result["ratios"]:
        num = rows[tuple(r["numerator"].split(":")) + (r["batch"],)]
        den = rows[tuple(r["denominator"].split(":")) + (r["batch"],)]
        assert r["value"] == pytest.approx(num["images_per_s"] / den["images_per_s"])


def test_markdown(run):
    out, result = run
    md = (out / result["files"]["markdown"]).read_text()
    assert md.startswith("# threethings_fast profile")
    assert "| model | provider | batch | images/s | median ms | p90 ms | TFLOP/s | % of peak | n |" in md
    assert "## Speed-ups of tiny_2x2 (vs tiny_4x1" in md
    assert "## Anchor: the paper's Table 4" in md
    for model, paper in PAPER_TABLE4.items():   # the paper's numbers are there even when the model is not run
        assert f"| {model} | 1 | {paper['seq'][1]} | {paper['par'][1]} |" in md
    assert md.count("| tiny_2x2 | fused[torch] |") == 2


def test_pngs(run):
    out, result = run
    assert sorted(result["files"]["plots"]) == ["latency.png", "throughput.png"]
    for name in result["files"]["plots"]:
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data[:8] == PNG_MAGIC


def test_chrome_trace(run):
    out, result = run
    trace = result["trace"]
    assert (trace["model"], trace["provider"], trace["batch"]) == ("tiny_2x2", "fused[torch]", 2)
    assert trace["ops_per_forward"] > 0 and trace["kernels_per_forward"] is None
    with open(out / trace["file"]) as f:
        events = json.load(f)["traceEvents"]
    assert any(e.get("name", "").startswith("forward#") for e in events)


def test_time_budget_skips_middle_batches_keeps_the_largest(tmp_path):
    args = ["--models", "tiny_2x1", "--batches", "1", "2", "4", "--reps", "3", "--warmup", "0", "--no-progress",
            "--no-peak", "--no-plots", "--time-budget", "1e-6", "--providers", "reference", "--out", str(tmp_path)]
    assert main(args) == 0
    result = json.loads((tmp_path / "profile.json").read_text())
    assert validate(result) == [] and result["interrupted"] is False
    # batch 1 runs (nothing measured yet), the largest always runs with 2 rounds, the middle is dropped
    assert result["skipped_batches"] == [2] and {r["batch"] for r in result["results"]} == {1, 4}
    assert [r["n"] for r in result["results"] if r["batch"] == 4] == [2]
    assert result["peak"] is None and result["files"]["plots"] == []
    assert os.path.exists(tmp_path / "profile.md")


def test_budget_cost_model():
    from threethings_fast.profile.sweep import Settings, estimate_round_s, plan_reps
    # affine between measured batches, the next smaller round below them, linear above without a peak
    assert estimate_round_s({1: 1.0, 9: 5.0}, 5) == pytest.approx(3.0)
    assert estimate_round_s({4: 2.0}, 1) == 2.0
    assert estimate_round_s({1: 0.1}, 256) == pytest.approx(25.6)
    # with a peak: launch-bound batch 1 (0.1 s for 1 GFLOP at 100 TFLOP/s) is not scaled ×256
    est = estimate_round_s({1: 0.1}, 256, flops_per_round_image=1e9, peak_tflops=100.0)
    assert est == pytest.approx(0.1 + 256 * 1e9 / (0.2 * 100e12))
    # CPU-like: compute-bound at batch 1, linear is the smaller estimate
    assert estimate_round_s({1: 0.1}, 8, flops_per_round_image=1e9, peak_tflops=0.01) == pytest.approx(0.8)

    s = Settings(models=[], batches=[1, 8, 64, 256], providers=[], device="cpu", dtype=None, warmup=3, reps=20)
    # batch 1 spent 120 s compiling: later batches pay the smallest set-up seen, not batch 1's compiles again
    measured, excess = {1: 0.1, 256: 1.0}, {1: 120.0, 256: 4.0}
    assert plan_reps(measured, excess, 64, False, s, 30.0) == 20
    assert plan_reps(measured, excess, 64, False, s, 4.5) == 0            # does not fit: skipped
    assert plan_reps({1: 0.1}, {1: 120.0}, 256, True, s, 5.0) == 2       # the largest always runs, 2 rounds
    assert plan_reps({}, {}, 1, False, s, 0.0) == 20                      # nothing measured yet


def test_interrupt_still_writes_the_partial_profile(tmp_path, monkeypatch):
    import threethings_fast.profile.sweep as sweep
    real, calls = sweep.time_once, {"n": 0}

    def interrupted_after_a_few(*a, **kw):
        calls["n"] += 1
        if calls["n"] > 5:   # batch 1: 2 rounds × 2 providers, then the first call of batch 2
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(sweep, "time_once", interrupted_after_a_few)
    args = ["--models", "tiny_2x1", "--batches", "1", "2", "--reps", "2", "--warmup", "0", "--no-progress",
            "--no-peak", "--no-plots", "--providers", "reference", "fused[torch]", "--trace", "--out", str(tmp_path)]
    assert main(args) == 130
    result = json.loads((tmp_path / "profile.json").read_text())
    assert validate(result) == [] and result["interrupted"] is True and result["trace"] is None
    rows = {(r["provider"], r["batch"]): r["n"] for r in result["results"]}
    assert rows == {("reference", 1): 2, ("fused[torch]", 1): 2, ("reference", 2): 1}   # batch 2's sample is kept
    assert "interrupted" in (tmp_path / "profile.md").read_text()


def test_validate_reports_problems(run):
    _, result = run
    broken = json.loads(json.dumps(result))
    del broken["results"][0]["median_s"]
    broken["ratios"][0]["kind"] = "nonsense"
    broken["device"]["threads"] = "2"
    errors = validate(broken)
    assert any("results[0].median_s: missing" in e for e in errors)
    assert any("ratios[0].kind" in e for e in errors)
    assert any("device.threads" in e for e in errors)


def test_compare_two_runs(run, capsys):
    from threethings_fast.profile.compare import compare_results, main as compare_main
    out, result = run
    rows = compare_results(result, result)
    assert len(rows) == len(result["results"])
    assert all(r["change"] == pytest.approx(1.0) and not r["significant"] for r in rows)
    path = str(out / "profile.json")
    assert compare_main([path, path]) == 0
    text = capsys.readouterr().out
    assert "| tiny_2x2 | fused[torch] | 1 |" in text and "| par/seq | 1 |" in text


def test_sweep_order_keeps_the_ends_under_a_budget():
    from threethings_fast.profile.sweep import sweep_order
    assert sweep_order([1, 2, 4, 8], None) == [1, 2, 4, 8]
    assert sweep_order([1, 2, 4, 8], 120.0) == [1, 8, 2, 4]
    assert sweep_order([1, 2], 120.0) == [1, 2]


def test_report_preset_settings():
    from threethings_fast.profile.cli import default_out, parse_args, settings_from_args
    s = settings_from_args(parse_args(["--preset", "report", "--device", "cpu"]))
    assert (s.models, s.batches, s.warmup, s.reps, s.time_budget_s, s.preset) == (["S18x2"], [1, 16], 1, 5, None,
                                                                                   "report")
    assert s.providers == ["reference", "branch_by_branch", "fused[auto]"]
    # a report does not overwrite the main job's profile
    assert default_out("cpu", s.preset) == os.path.join("bench", "results", "report_cpu")
    assert default_out("cpu", "quick") == os.path.join("bench", "results", "profile_cpu")


def test_report_alias_runs_the_preset(tmp_path, capsys):
    """`python -m threethings_fast.bench` (make report) is the profiler's report preset; its old options still work
    and what it printed — each provider's median, p90 and im/s per batch, the fused speed-ups — is in profile.md."""
    from threethings_fast.bench import main as report_main, translate
    args = ["--models", "tiny_2x2", "tiny_2x1", "--batches", "1", "--reps", "2", "--device", "cpu", "--no-peak",
            "--no-plots", "--no-progress", "--out", str(tmp_path / "r"), "--json", str(tmp_path / "raw.json")]
    assert report_main(args) == 0
    result = json.loads((tmp_path / "raw.json").read_text())
    assert validate(result) == [] and result["settings"]["preset"] == "report+custom"
    assert result == json.loads((tmp_path / "r" / "profile.json").read_text())
    assert {(r["model"], r["provider"]) for r in result["results"]} == {
        ("tiny_2x2", "reference"), ("tiny_2x2", "branch_by_branch"), ("tiny_2x2", "fused[auto]"),
        ("tiny_2x1", "reference"), ("tiny_2x1", "fused[auto]")}
    out = capsys.readouterr().out
    assert "| model | provider | batch | images/s | median ms | p90 ms |" in out
    assert "| tiny_2x2 | fused[auto] | 1 |" in out
    assert "## Speed-ups of tiny_2x2" in out and "ours / branch-by-branch | ours / reference |" in out
    assert "## Speed-ups of tiny_2x1" in out    # an x1 model on its own: reference vs ours
    assert {(r["model"], r["kind"]) for r in result["ratios"]} == {
        ("tiny_2x2", "fused/reference"), ("tiny_2x2", "fused/branch_by_branch"), ("tiny_2x1", "fused/reference")}
    assert translate(["--model", "S36x1", "--backend", "torch", "--reps", "3", "--json", "x.json"]) == (
        ["--preset", "report", "--models", "S36x1", "--providers", "reference", "branch_by_branch", "fused[torch]",
         "--reps", "3"], "x.json")


# ---------------------------------------------------------------------------------------------------------------
# The other families through the profiler (tiny models, CPU)
# ---------------------------------------------------------------------------------------------------------------
def test_families_through_the_profiler(tmp_path):
    import importlib
    from threethings_fast.models import resolve_any
    args = ["--models", "tiny_2x1", "mixer_tiny_2x2", "gmlp_tiny_2", "--batches", "1", "2", "--reps", "1",
            "--warmup", "0", "--providers", "reference", "branch_by_branch", "fused[auto]", "fused[cuda]",
            "--no-progress", "--no-peak", "--no-plots", "--device", "cpu", "--out", str(tmp_path)]
    assert main(args) == 0
    result = json.loads((tmp_path / "profile.json").read_text())
    assert validate(result) == [] and result["errors"] == []
    models = result["models"]
    assert [models[m]["family"] for m in models] == ["vit", "mixer", "gmlp"]
    for name in ("mixer_tiny_2x2", "gmlp_tiny_2"):   # TFLOP/s from the family's own MAC count
        cfg = resolve_any(name)
        own = importlib.import_module(f"threethings_fast.models.{models[name]['family']}").count_macs
        assert models[name]["flops_per_image"] == 2 * own(cfg, count_norms=False).total
        assert models[name]["sequential_partner"] is None
    got = {(r["model"], r["provider"]) for r in result["results"]}
    assert got == {(m, p) for m in models for p in ("reference", "fused[auto]")}
    reasons = {(s["model"], s["provider"]): s["reason"] for s in result["skipped"]}
    assert "ViT reference only" in reasons[("mixer_tiny_2x2", "branch_by_branch")]
    assert "x1 model" in reasons[("tiny_2x1", "branch_by_branch")]
    assert reasons[("gmlp_tiny_2", "fused[cuda]")].startswith("the C++ engine runs ViTs only")
    assert "CUDA" in reasons[("tiny_2x1", "fused[cuda]")]
    md = (tmp_path / "profile.md").read_text()
    assert "| mixer_tiny_2x2 | mixer | 2 |" in md and "| gmlp_tiny_2 | gmlp | 1 |" in md      # the models table
    assert "## Families side by side" in md and "| 2 | gmlp_tiny_2 | gmlp |" in md
    assert "## Speed-ups of mixer_tiny_2x2" in md                # an xK model keeps its table...
    assert "branch-by-branch" not in md.split("## Speed-ups of mixer_tiny_2x2")[1].split("##")[0]   # ...ViT-only col
    assert "## Speed-ups of gmlp_tiny_2" not in md               # x1 models: in the families table


def test_families_preset(monkeypatch):
    import dataclasses
    from threethings_fast.models import FAMILIES
    from threethings_fast.profile.cli import default_out, family_peers, parse_args, settings_from_args
    s = settings_from_args(parse_args(["--preset", "families", "--device", "cpu"]))
    fusable = [f for f in FAMILIES if f != "vit" and FAMILIES[f].fusable]
    assert s.models[:4] == ["S12x1", "mixer_s16_224", "resmlp_12_224", "gmlp_s16_224"][:1 + len(fusable[:3])]
    assert len(s.models) == 1 + len(fusable) and s.notes == []
    assert (s.batches, s.providers, s.preset) == ([1, 16], ["reference", "fused[auto]", "timm"], "families")
    assert default_out("cpu", s.preset) == os.path.join("bench", "results", "families_cpu")
    models, _ = family_peers("cuda")
    assert models[:4] == ["B12x1", "mixer_b16_224", "resmlp_24_224", "gmlp_b16_224"]
    from threethings_fast.profile.cli import PRESETS
    cuda = PRESETS[("cuda", "families")]
    assert cuda["batches"] == [1, 64, 256]
    assert cuda["providers"] == ["fused[triton]", "fused[triton]+graph", "timm", "timm+compile"]
    # a family without a fused path at run time is left out, with a note in the report's header
    monkeypatch.setitem(FAMILIES, "vip", dataclasses.replace(FAMILIES["vip"], fold=None, forward=None))
    s = settings_from_args(parse_args(["--preset", "families", "--device", "cpu"]))
    assert "vip_s7" not in s.models and s.notes == ["vip_s7 (Vision Permutator) left out: no fused path yet"]
    # explicit --models replace the preset's models and its notes
    s = settings_from_args(parse_args(["--preset", "families", "--device", "cpu", "--models", "gmlp_tiny_2"]))
    assert (s.models, s.notes, s.preset) == (["gmlp_tiny_2"], [], "families+custom")
