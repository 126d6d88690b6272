"""Compile every Triton kernel of the package for an H100 (sm_90) ahead of time, on a CPU-only host.

The rest of the CPU suite runs the kernels under the Triton interpreter, which never lowers them: it cannot see
``tl.dot`` shape/dtype rules, layout and shared-memory limits, constexpr errors or register pressure. Here a
representative variant of every kernel (first config of each autotune list, each dtype/epilogue flavour; the list
is in ``sm90_compile_check.build_variants``) goes through ``triton.compile`` down to a cubin with Triton's bundled
ptxas for ``GPUTarget("cuda", 90, 32)``.

Runs in a subprocess because conftest.py sets ``TRITON_INTERPRET=1`` for this process, which turns every
``@triton.jit`` function into an interpreter object. Skipped (with the reason) when CUDA is available (the GPU tests
compile and run the kernels for the real device), when Triton or its bundled ptxas is missing, or when the installed
Triton's AOT compile API is not the one the script was written against. About 1-1.5 min on 2 cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("sm90_compile_check.py")
#: H100: largest dynamic shared memory per block (opt-in), 227 KiB. A kernel above it fails at launch.
H100_MAX_SHARED = 227 * 1024
#: Per-thread spill stack above which a variant counts as a register overflow, not a tuning matter. (The worst
#: variant today spills ~2 KB per thread; spills below this are reported as warnings.)
MAX_SPILL_BYTES = 4096
TIMEOUT_S = 900

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(torch.cuda.is_available(),
                       reason="CUDA is available: the GPU tests compile and run the kernels for the real device"),
]


@pytest.fixture(scope="module")
def sm90(tmp_path_factory):
    """Run the compile script once for the module; returns (env line, {name: variant line})."""
    pytest.importorskip("triton", reason="triton is not installed")
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    # A fresh cache: every variant really goes through the compiler, and no stale binaries are read back.
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton_cache"))
    # The script imports the package from this checkout, installed or not (sys.path[0] would be tests/).
    root = str(SCRIPT.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    jobs = max(1, min(4, os.cpu_count() or 1))
    cmd = [sys.executable, str(SCRIPT), "--jobs", str(jobs)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
                             cwd=root)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} did not finish in {TIMEOUT_S} s; stderr tail:\n{_tail(exc.stderr)}")
    lines = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    skip = [ln for ln in lines if ln.get("event") == "skip"]
    if skip:
        pytest.skip(skip[0]["reason"])
    done = [ln for ln in lines if ln.get("event") == "done"]
    assert res.returncode == 0 and done, (
        f"{' '.join(cmd)} exited with {res.returncode} before finishing\nstdout:\n{_tail(res.stdout)}\n"
        f"stderr:\n{_tail(res.stderr)}")
    envline = next(ln for ln in lines if ln.get("event") == "env")
    variants = {ln["name"]: ln for ln in lines if ln.get("event") == "variant"}
    assert len(variants) == done[0]["n"] == envline["n"], "some variants produced no result line"
    print(f"\ntriton {envline['triton']}, ptxas {envline['ptxas']}, {len(variants)} variants, "
          f"{done[0]['wall_s']} s with {jobs} process(es)\n{_table(variants)}")
    return envline, variants


def _tail(text, n=4000):
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = text or ""
    return text if len(text) <= n else "[...]\n" + text[-n:]


def _table(variants) -> str:
    rows = [f"{'variant':60s} {'ok':>3s} {'shared':>8s} {'regs':>5s} {'spill':>6s} {'wgmma':>6s} {'mma':>5s} "
            f"{'time':>6s}"]
    for name in sorted(variants):
        v = variants[name]
        rows.append(f"{name:60s} {'yes' if v['ok'] else 'NO':>3s} {v['shared'] if v['shared'] is not None else '-':>8} "
                    f"{v['n_regs'] if v['n_regs'] is not None else '-':>5} "
                    f"{v['spill_bytes'] if v['spill_bytes'] is not None else '-':>6} {v['wgmma']:>6} "
                    f"{v['mma_sync']:>5} {v['compile_s']:>5}s")
    return "\n".join(rows)


def test_every_kernel_variant_compiles_for_sm90(sm90):
    _, variants = sm90
    failed = {n: v["error"] for n, v in variants.items() if not v["ok"]}
    assert not failed, "kernel variants that do not compile for sm_90:\n" + "\n\n".join(
        f"{n}:\n{e}" for n, e in sorted(failed.items()))


def test_shared_memory_fits_h100(sm90):
    _, variants = sm90
    over = {n: v["shared"] for n, v in variants.items() if v["ok"] and v["shared"] > H100_MAX_SHARED}
    assert not over, (f"shared memory above the H100 per-block limit of {H100_MAX_SHARED} B (the launch would fail "
                      f"with OutOfResources): {over}")


def test_16bit_dots_use_tensor_cores(sm90):
    """bf16/fp16 tl.dot must lower to Hopper wgmma or at least mma.sync; an FMA fallback would be ~10x slower."""
    _, variants = sm90
    expected = {n: v for n, v in variants.items() if v["ok"] and v["tensor_cores_expected"]}
    assert any(n.startswith("linear/bf16/") for n in expected) and any(n.startswith("attention/bf16/")
                                                                       for n in expected)
    missing = sorted(n for n, v in expected.items() if v["wgmma"] == 0 and v["mma_sync"] == 0)
    assert not missing, f"no wgmma.mma_async / mma.sync in the PTX of: {missing}"


def test_no_register_overflow(sm90):
    """Spills are reported (warnings); a tensor-core variant with a spill stack above MAX_SPILL_BYTES per thread
    fails."""
    _, variants = sm90
    known = {n: v["spill_bytes"] for n, v in variants.items() if v["ok"] and v["spill_bytes"] is not None}
    if not known:
        pytest.skip("cuobjdump unavailable: no register / spill figures")
    spilling = {n: s for n, s in known.items() if s > 0}
    if spilling:
        warnings.warn("sm_90 register spills (bytes of stack per thread): " + ", ".join(
            f"{n}: {s}" for n, s in sorted(spilling.items())), stacklevel=1)
    # The fp32 accuracy paths (IEEE dots on CUDA cores: the hMLP stem spills ~9 KB there) are exempt: they exist to
    # be exact, not fast, and the 16-bit paths are the ones a user runs for speed.
    overflow = {n: s for n, s in spilling.items()
                if s > MAX_SPILL_BYTES and variants[n]["tensor_cores_expected"]}
    assert not overflow, f"register overflow: spill stack above {MAX_SPILL_BYTES} B per thread: {overflow}"


def test_pdl_variants_wait_for_their_predecessor(sm90):
    """A kernel compiled with USE_PDL=True must hold griddepcontrol.wait (it reads what its predecessor wrote) and
    .launch_dependents; with USE_PDL=False neither may appear. Every Triton kernel module has a PDL variant."""
    _, variants = sm90
    ok = {n: v for n, v in variants.items() if v["ok"]}
    pdl = {n: v for n, v in ok.items() if v["pdl"]}
    modules = {n.split("/")[0] for n in pdl}
    assert {"linear", "linear-splitk", "linear-reduce", "attention", "normalize", "hmlp_stem",
            "patch_embed"} <= modules, modules
    missing = sorted(n for n, v in pdl.items() if v["gdc_wait"] == 0 or v["gdc_launch"] == 0)
    assert not missing, f"USE_PDL variants without griddepcontrol.wait / .launch_dependents: {missing}"
    stray = sorted(n for n, v in ok.items() if not v["pdl"] and (v["gdc_wait"] or v["gdc_launch"]))
    assert not stray, f"griddepcontrol in variants compiled without USE_PDL: {stray}"
