"""The provider registry (threethings_fast.providers): one name per provider, accepted alike by the profiler, its
trace and the benchmark suites; each provider runs on the CPU or says why not; unknown names list the valid ones;
the profiler's modules import without a cycle."""
import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ATOL
from threethings_fast.configs import from_name
from threethings_fast.profile.cli import parse_args
from threethings_fast.profile.trace import parse_trace_spec
from threethings_fast.providers import (ALIASES, ModelEntry, UnknownProvider, available, build, model_of, names,
                                        prepare, resolve)
from threethings_fast.providers.timm_model import timm_missing

ROOT = Path(__file__).resolve().parents[1]
# What each CPU-runnable provider runs must match the reference within float32 rounding (timm: where it imports).
CPU_RUNNABLE = ("reference", "branch_by_branch", "fused[auto]", "fused[torch]", "timm")
# Left out of bench/bench_model.py on purpose: their first call takes minutes (its docstring says where they are timed).
MODEL_SUITE_LEFT_OUT = {"fused[auto]", "fused[cuda]", "fused[cuda]+graph", "timm+compile[max-autotune]"}


@pytest.fixture(scope="module")
def tiny():
    entry = ModelEntry.create("tiny_2x2", "cpu", torch.float32, seed=0)
    images = torch.randn(2, 3, entry.config.img_size, entry.config.img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = entry.reference(images)
    return entry, images, expected


def test_one_naming_scheme():
    pattern = re.compile(r"^(reference|branch_by_branch|(timm\+)?compile(\[[a-z-]+\])?|timm"
                         r"|fused\[[a-z]+(/[a-z]+)?\](\+graph)?)$")
    assert len(set(names())) == len(names())
    assert [n for n in names() if not pattern.match(n)] == []
    for old, new in ALIASES.items():    # older spellings map onto registered names and never shadow one
        assert old not in names() and new in names() and resolve(old) == new


def test_profiler_and_trace_accept_exactly_the_registry(capsys):
    assert parse_args(["--providers", *names()]).providers == list(names())
    for name in names():
        assert parse_trace_spec(f"tiny_2x2:{name}:1") == ("tiny_2x2", name, "1")
    assert parse_args(["--providers", "triton_graph"]).providers == ["fused[triton]+graph"]
    assert "'triton_graph' is now called 'fused[triton]+graph'" in capsys.readouterr().err
    assert parse_args(["--trace", "tiny_2x2:engine+graph:1"]).trace == "tiny_2x2:fused[cuda]+graph:1"


def test_unknown_names_error_with_the_list(capsys):
    with pytest.raises(UnknownProvider, match=re.escape(", ".join(names()))):
        resolve("fused[cuda]+grpah")
    with pytest.raises(UnknownProvider, match="valid providers: reference, branch_by_branch"):
        available("triton_fused", None, "cpu")
    for argv in (["--providers", "reference", "nope"], ["--trace", "tiny_2x2:nope:1"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert "unknown provider 'nope'; valid providers: reference, branch_by_branch" in capsys.readouterr().err


def test_every_provider_runs_on_the_cpu_or_says_why(tiny):
    entry, _, _ = tiny
    runnable = {n for n in names() if available(n, entry.config, "cpu") is None}
    assert runnable == set(CPU_RUNNABLE) - ({"timm"} if timm_missing() else set())
    for name in set(names()) - runnable:
        reason = available(name, entry.config, "cpu")
        assert isinstance(reason, str) and len(reason) > 15, (name, reason)
    assert "x1 model" in available("branch_by_branch", from_name("tiny_2x1"), "cpu")


@pytest.mark.parametrize("name", CPU_RUNNABLE)
def test_cpu_providers_compute_the_reference(tiny, name):
    if name == "timm" and timm_missing():
        pytest.skip(timm_missing())
    entry, images, expected = tiny
    call, cleanup = build(entry, name, images)
    with torch.no_grad():
        out = call()
    cleanup()
    assert out.shape == expected.shape
    assert torch.allclose(out, expected, atol=ATOL[torch.float32], rtol=0)


def test_fused_triton_builders_under_the_interpreter():
    """The registry's Triton builders, bypassing the availability rule (the profiler skips the interpreter: its
    timings mean nothing). tests/conftest.py sets TRITON_INTERPRET=1 without a GPU."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton under the interpreter only (with a GPU, the profiler and GPU tests run it for real)")
    import threethings_fast as ttf
    torch.manual_seed(0)
    cfg = from_name("tiny_2x2").replace(depth=1)      # one block: the interpreter is slow
    entry = ModelEntry(name="tiny_1x2", config=cfg, reference=ttf.create_model(cfg).eval())
    images = torch.randn(1, 3, cfg.img_size, cfg.img_size)
    call, _ = build(entry, "fused[triton]", images)
    with torch.no_grad():
        assert torch.allclose(call(), entry.reference(images), atol=ATOL[torch.float32], rtol=0)
    # the fused-norm variant is built (not run: the same kernels, tested in test_fused_triton.py)
    assert "backend=triton, norm=fused" in repr(model_of(entry, "fused[triton/fusednorm]"))
    assert "backend=triton, norm=separate" in repr(model_of(entry, "fused[triton]"))


def test_a_failed_build_is_a_reason_not_a_crash():
    import threethings_fast as ttf
    cfg = from_name("tiny_2x2").replace(stem="hmlp_bn")
    entry = ModelEntry(name="tiny_2x2_hmlp", config=cfg, reference=ttf.create_model(cfg).eval())
    reason = prepare(entry, "timm")         # no timm here, or timm without an hMLP stem: either way a reason
    assert reason and reason.startswith("building timm failed: RuntimeError: ") and "timm" in reason[30:]
    assert prepare(entry, "timm") == reason and entry.failed == {"timm": reason}
    with pytest.raises(RuntimeError, match="timm"):
        build(entry, "timm", torch.zeros(1, 3, 32, 32))


def test_plots_colour_every_provider():
    from threethings_fast.profile.plots import COLORS
    assert set(COLORS) == set(names())


def _load(path: Path, name: str, monkeypatch):
    """The script or suite at `path` as module `name` (in sys.modules for this test only: dataclasses need it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def _parametrised(providers: list) -> list:
    return [p.values[0] if hasattr(p, "values") else p for p in providers]


def test_bench_suites_use_registry_names(monkeypatch, pytestconfig):
    """Every provider the pytest-benchmark suites parametrise is a registered name; the whole-model suite takes all
    of them but the slow-to-start ones; the engine script's defaults are registered too."""
    # The suites import their own conftest by that name: give them bench/conftest.py, not this directory's; and
    # their `compile` marker, registered in bench/pytest.ini (this session's --strict-markers would refuse it).
    pytestconfig.addinivalue_line("markers", "compile: torch.compile providers (bench/pytest.ini)")
    monkeypatch.setitem(sys.modules, "conftest", _load(ROOT / "bench" / "conftest.py", "bench_conftest", monkeypatch))
    model = _load(ROOT / "bench" / "bench_model.py", "bench_model_suite", monkeypatch)
    ops = _load(ROOT / "bench" / "bench_ops.py", "bench_ops_suite", monkeypatch)
    assert _parametrised(model.PROVIDERS) == [n for n in names() if n not in MODEL_SUITE_LEFT_OUT]
    assert set(model.LEFT_OUT) == MODEL_SUITE_LEFT_OUT
    assert _parametrised(ops.PROVIDERS) == ["reference", "compile", "fused[torch]", "fused[triton]"]
    compile_marked = [p.values[0] for p in model.PROVIDERS + ops.PROVIDERS if hasattr(p, "values")
                      and any(m.name == "compile" for m in p.marks)]
    assert compile_marked == [n for n in _parametrised(model.PROVIDERS) if "compile" in n] + ["compile"]
    engine = _load(ROOT / "bench" / "bench_engine.py", "bench_engine_script", monkeypatch)
    assert [resolve(p) for p in engine.DEFAULT_PROVIDERS] == engine.DEFAULT_PROVIDERS
    assert set(engine.TIMM_PROVIDERS) <= set(names())


def test_trace_imports_alone_and_the_modules_have_no_cycle():
    run = subprocess.run([sys.executable, "-c", "import threethings_fast.profile.trace"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    # Every import between the profiler's and the registry's modules, function-level ones included, forms no cycle.
    graph = {}
    for package in ("profile", "providers"):
        for path in (ROOT / "threethings_fast" / package).glob("*.py"):
            is_init = path.stem == "__init__"
            module = f"threethings_fast.{package}" + ("" if is_init else f".{path.stem}")
            parent = module if is_init else module.rsplit(".", 1)[0]
            graph[module] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = parent.rsplit(".", node.level - 1)[0] if node.level > 1 else parent
                    target = f"{base}.{node.module}" if node.module else base
                    graph[module].update({target} | {f"{target}.{a.name}" for a in node.names})
    graph = {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}
    # the edges this test exists for are seen (sweep imports the trace; the trace, the registry)
    assert "threethings_fast.profile.trace" in graph["threethings_fast.profile.sweep"]
    assert "threethings_fast.providers" in graph["threethings_fast.profile.trace"]
    visiting, done = set(), set()

    def visit(m, path):
        assert m not in visiting, f"import cycle: {' -> '.join(path + [m])}"
        if m in done:
            return
        visiting.add(m)
        for t in graph[m]:
            visit(t, path + [m])
        visiting.discard(m)
        done.add(m)

    for m in graph:
        visit(m, [])


# ---------------------------------------------------------------------------------------------------------------
# The other families (threethings_fast.models): the same names, a reason where a provider cannot run them
# ---------------------------------------------------------------------------------------------------------------
FAMILY_TINY = ("mixer_tiny_2x1", "resmlp_tiny_2x1", "gmlp_tiny_2")


@pytest.mark.parametrize("name", FAMILY_TINY)
def test_family_entries_run_the_cpu_providers(name):
    from threethings_fast.models import family_of
    entry = ModelEntry.create(name, "cpu", torch.float32, seed=0)
    assert entry.family is family_of(entry.config) and entry.family.name == name.split("_")[0]
    images = torch.randn(2, 3, entry.config.img_size, entry.config.img_size)
    with torch.no_grad():
        expected = entry.reference(images)
    runnable = [n for n in names() if available(n, entry.config, "cpu") is None]
    assert runnable == ["reference"] + ([] if timm_missing() else ["timm"]) + ["fused[auto]", "fused[torch]"]
    for provider in runnable:
        call, cleanup = build(entry, provider, images)
        with torch.no_grad():
            out = call()
        cleanup()
        assert torch.allclose(out, expected, atol=ATOL[torch.float32], rtol=0), provider
    if not timm_missing():    # timm's MlpMixer, built from the config (no timm name for a tiny model)
        assert type(model_of(entry, "timm")).__name__ == "MlpMixer"


def test_family_availability_reasons():
    cfg = {n: ModelEntry.create(n, "cpu", torch.float32, seed=0).config for n in ("mixer_tiny_2x2", "vip_test_a")}
    mixer, vip = cfg["mixer_tiny_2x2"], cfg["vip_test_a"]
    assert "ViT reference only" in available("branch_by_branch", mixer, "cpu")
    for name in ("fused[triton/fusednorm]", "fused[triton/fusednorm]+graph"):   # every fusable family, on CUDA
        assert available(name, mixer, "cpu").startswith("Triton runs on CUDA")
    for name in ("fused[cuda]", "fused[cuda]+graph"):
        assert available(name, mixer, "cuda").startswith("the C++ engine runs ViTs only")
    assert available("fused[triton]", mixer, "cpu").startswith("Triton runs on CUDA")   # fusable: the device rule
    assert available("compile", mixer, "cpu").startswith("torch.compile providers run on CUDA only")
    if not timm_missing():
        assert "K = 2" in available("timm", mixer, "cpu")
        assert available("timm", vip, "cpu") == "timm has no Vision Permutator model"
    from threethings_fast.providers.timm_model import timm_unsupported
    assert "K = 2" in timm_unsupported(mixer) and timm_unsupported(vip) == "timm has no Vision Permutator model"
    assert "hMLP stem" in timm_unsupported(mixer.replace(num_parallel=1, stem="hmlp_bn", img_size=48,
                                                         patch_size=16))


def test_a_family_without_a_fused_path_is_a_reason(monkeypatch):
    """`Family.fusable` is read when asked: a family without fold / forward gets "no fused path yet" from every
    fused provider, before any device rule."""
    import dataclasses
    from threethings_fast.models import FAMILIES
    monkeypatch.setitem(FAMILIES, "vip", dataclasses.replace(FAMILIES["vip"], fold=None, forward=None))
    cfg = ModelEntry.create("vip_test_a", "cpu", torch.float32, seed=0).config
    for name in ("fused[auto]", "fused[torch]", "fused[triton]", "fused[triton]+graph"):
        assert available(name, cfg, "cpu") == ("Vision Permutator: no fused path yet (reference model only; "
                                               "convert() raises NotImplementedError)"), name
    assert available("reference", cfg, "cpu") is None


def test_family_flops_are_the_family_count_macs():
    import importlib
    from threethings_fast.macs import count_macs, forward_flops
    from threethings_fast.models import FAMILIES, family_of, resolve_any
    for family in FAMILIES.values():
        for name in family.names()[:2]:
            cfg = resolve_any(name)
            if family.name == "vit":
                continue
            own = importlib.import_module(f"threethings_fast.models.{family_of(cfg).name}").count_macs
            assert forward_flops(cfg) == 2 * own(cfg, count_norms=False).total, name
            assert count_macs(cfg) == own(cfg)
    assert forward_flops(from_name("S12x1")) == 2 * count_macs(from_name("S12x1"), count_norms=False).total


def test_list_providers_takes_a_family_model():
    from threethings_fast.profile.cli import format_provider_list
    text = format_provider_list(torch.device("cpu"), "gmlp_tiny_2")
    assert text.startswith("providers (on cpu, for gmlp_tiny_2):")
    assert "skipped here: the C++ engine runs ViTs only; gMLP models run fused[triton] or fused[torch]" in text
    with pytest.raises(KeyError, match="unknown model name 'nope'"):
        format_provider_list(torch.device("cpu"), "nope")
