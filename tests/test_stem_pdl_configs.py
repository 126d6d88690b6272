"""The hMLP stem's autotune configs one by one, and the programmatic-dependent-launch (PDL) path of the stems and
of normalize / row_stats.

Configs: the autotuner picks one config per shape on the GPU, so a config that is wrong for some shape may never run
in a test. Here every config of `_CONFIGS_LARGE` and `_CONFIGS_SMALL` is forced (`hmlp_stem._FORCED_CONFIG`) and
checked as tests/test_stem.py checks the default one: NaN-poisoned output, fp32 / fp16 against the float64
reference, ``max|f − r64| <= 2·max|r_lowp − r64| + atol``. E = 96 (C4 = 24: both hidden tiles carry channels) so
BLOCK_E = 64 takes the several-chunk paths (LN: two passes) and BLOCK_E = 128 the single-chunk ones.

PDL: `gdc_wait` / `gdc_launch_dependents` are GPU instructions; the interpreter cannot run them, and `pdl_enabled`
keeps them off there. What the CPU can check: that the launchers pass ``USE_PDL=False`` (and no ``launch_pdl``) on
the CPU even with TTF_TRITON_PDL=1; that the USE_PDL=True variants compile for sm_90 with ``griddepcontrol.wait``
and ``.launch_dependents`` in their PTX (and the others without) is checked with every other variant in
tests/test_sm90_compile.py.
"""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the import of the kernels

triton = pytest.importorskip("triton", reason="triton is not installed")

from threethings_fast.stem_fold import fold_stem  # noqa: E402
from threethings_fast.reference.stems import mask_to_indices  # noqa: E402

from test_stem import (DEVICE, check, fixed_count_mask, hs, images, make_stem, needs_kernels,  # noqa: E402
                       pe, run_hmlp)

nrm = importlib.import_module("threethings_fast.triton_kernels.normalize")
common = importlib.import_module("threethings_fast.triton_kernels._common")

CHECK_SCRIPT = Path(__file__).with_name("sm90_compile_check.py")
ROOT = CHECK_SCRIPT.parent.parent

CONFIGS = [pytest.param(name, i, id=f"{name}{i}-P{c.kwargs['BLOCK_P']}xE{c.kwargs['BLOCK_E']}w{c.num_warps}")
           for name, configs in (("large", hs._CONFIGS_LARGE), ("small", hs._CONFIGS_SMALL))
           for i, c in enumerate(configs)]


def config_of(name, i):
    return {"large": hs._CONFIGS_LARGE, "small": hs._CONFIGS_SMALL}[name][i]


class LaunchSpy:
    """Stands in for a @triton.jit kernel in its module: records the meta-parameters of every launch, then launches
    the real kernel (wrap_triton hands interpreted kernels through as they are)."""

    KEYS = ("BLOCK_P", "BLOCK_E", "BLOCK_M", "num_warps", "num_stages", "USE_PDL", "launch_pdl")

    def __init__(self, kernel):
        self.kernel = kernel
        self.calls = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append({k: kwargs[k] for k in self.KEYS if k in kwargs})
            return self.kernel[grid](*args, **kwargs)
        return launch


def spy_on(monkeypatch, module, name):
    spy = LaunchSpy(getattr(module, name))
    monkeypatch.setattr(module, name, spy)
    return spy


def compile_env():
    """Environment for a subprocess that compiles for sm_90: no interpreter, this checkout importable."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


# ---------------------------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------------------------
def test_config_lists():
    """Non-empty lists; every BLOCK_P a tl.dot M (16, 32, 64) and BLOCK_E a power of two >= 16."""
    for configs in (hs._CONFIGS_LARGE, hs._CONFIGS_SMALL):
        assert configs
        for c in configs:
            assert c.kwargs["BLOCK_P"] in (16, 32, 64), c
            be = c.kwargs["BLOCK_E"]
            assert be >= 16 and be & (be - 1) == 0, c


@pytest.mark.slow
def test_compile_check_covers_every_config():
    """tests/sm90_compile_check.py has a BN and an LN variant of every config of both lists (so a spill or shared
    memory regression of any of them shows up there), and one USE_PDL variant per kernel of this group."""
    res = subprocess.run([sys.executable, str(CHECK_SCRIPT), "--list", "--only", "hmlp_stem/", "--only",
                          "patch_embed/", "--only", "normalize/"],
                         capture_output=True, text=True, timeout=300, env=compile_env(), cwd=str(ROOT))
    lines = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    if any(ln.get("event") == "skip" for ln in lines):
        pytest.skip(next(ln["reason"] for ln in lines if ln.get("event") == "skip"))
    assert res.returncode == 0, res.stderr[-4000:]
    names = [ln["name"] for ln in lines if ln.get("event") == "list"]
    for name, configs in (("large", hs._CONFIGS_LARGE), ("small", hs._CONFIGS_SMALL)):
        for i, c in enumerate(configs):
            shape = f":P{c.kwargs['BLOCK_P']}xE{c.kwargs['BLOCK_E']}w{c.num_warps}"
            for norm in ("bn", "ln"):
                assert any(n.startswith(f"hmlp_stem/{norm}/") and n.endswith(shape)
                           and f"{name}{i}" in n.rsplit("/", 1)[1].split(":")[0].split(",") for n in names), (
                    norm, name, i, names)
    for prefix in ("hmlp_stem/", "patch_embed/", "normalize/"):
        assert any(n.startswith(prefix) and "+pdl" in n for n in names), (prefix, names)


@needs_kernels
@pytest.mark.interpreter
@pytest.mark.parametrize("name, i", CONFIGS)
def test_hmlp_each_config_bn_fp32(name, i, monkeypatch):
    """BN, fp32, position embedding and class token; the launch uses exactly the forced config."""
    cfg = config_of(name, i)
    monkeypatch.setattr(hs, "_FORCED_CONFIG", cfg)
    spy = spy_on(monkeypatch, hs, "_hmlp_stem_kernel")
    E = 96
    folded = fold_stem(make_stem("bn", E))
    x = images(2, 32, 48)                                   # 2×3 patches, R = 12 rows: one program
    pos, cls = torch.randn(6, E, device=DEVICE), torch.randn(E, device=DEVICE)
    out, ref_lowp, ref64 = run_hmlp(x, folded, torch.float32, pos=pos, cls=cls)
    check(out, ref_lowp, ref64, torch.float32)
    assert len(spy.calls) == 1
    call = spy.calls[0]
    assert {k: call[k] for k in ("BLOCK_P", "BLOCK_E", "num_warps", "num_stages")} == dict(
        cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    assert call["USE_PDL"] is common.pdl_enabled(x)


@needs_kernels
@pytest.mark.interpreter
@pytest.mark.parametrize("name, i", CONFIGS)
def test_hmlp_each_config_ln_fp16_masked(name, i, monkeypatch):
    """LN, fp16, BEiT masking (mask-token rows, a fully masked sample) and MAE (row gather)."""
    monkeypatch.setattr(hs, "_FORCED_CONFIG", config_of(name, i))
    E, B, N = 96, 3, 6
    folded = fold_stem(make_stem("ln", E))
    x = images(B, 32, 48, channels_last=True)
    pos, cls, token = (torch.randn(N, E, device=DEVICE), torch.randn(E, device=DEVICE),
                       torch.randn(E, device=DEVICE))
    mask = torch.rand(B, N, device=DEVICE) < 0.4
    mask[0] = True
    out, ref_lowp, ref64 = run_hmlp(x, folded, torch.float16, mask=mask, mask_token=token, pos=pos, cls=cls)
    assert out.shape == (B, 1 + N, E)
    check(out, ref_lowp, ref64, torch.float16)
    idx = mask_to_indices(fixed_count_mask(B, N, 0.5, device=DEVICE))
    out, ref_lowp, ref64 = run_hmlp(x, folded, torch.float16, visible_idx=idx, cls=cls)
    check(out, ref_lowp, ref64, torch.float16)


# ---------------------------------------------------------------------------------------------------------------
# PDL
# ---------------------------------------------------------------------------------------------------------------
def test_pdl_off_without_a_gpu(monkeypatch):
    """PDL is off by default, and TTF_TRITON_PDL=1 does not turn it on under the interpreter or for a tensor that is
    not on a CUDA device; off means no launch option."""
    t = torch.zeros(1)
    monkeypatch.delenv("TTF_TRITON_PDL", raising=False)
    assert common.pdl_enabled(t) is False
    monkeypatch.setenv("TTF_TRITON_PDL", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert common.interpreter_active() and common.pdl_enabled(t) is False
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not common.interpreter_active()
    assert common.pdl_enabled(t) is False and common.pdl_enabled(torch.zeros(1, device="meta")) is False
    assert common.pdl_launch_kwargs(False) == {}
    assert common.pdl_launch_kwargs(True) == {"launch_pdl": True}


@needs_kernels
@pytest.mark.interpreter
@pytest.mark.skipif(HAS_CUDA, reason="on a CUDA device of compute capability >= 9.0 TTF_TRITON_PDL=1 turns PDL on")
def test_launchers_pass_use_pdl_false_on_cpu(monkeypatch):
    """Every launcher of this group passes USE_PDL=False and no launch_pdl here, even with TTF_TRITON_PDL=1."""
    monkeypatch.setenv("TTF_TRITON_PDL", "1")
    spies = [spy_on(monkeypatch, hs, "_hmlp_stem_kernel"), spy_on(monkeypatch, pe, "_patch_embed_kernel"),
             spy_on(monkeypatch, nrm, "_normalize_kernel")]
    E = 32
    p = hs.prepare_hmlp_stem(fold_stem(make_stem("bn", E)), torch.float32, DEVICE)
    x = images(1, 16, 32)
    hs.hmlp_stem(x, p, cls=torch.zeros(E, device=DEVICE))
    pe.patch_embed(x, torch.randn(E, 768, device=DEVICE))
    t = torch.randn(3, 40, device=DEVICE)
    nrm.normalize(t)
    nrm.row_stats(t)
    calls = [c for s in spies for c in s.calls]
    assert len(calls) == 4 and all(c["USE_PDL"] is False and "launch_pdl" not in c for c in calls), calls
