"""Launcher plumbing shared by the Triton ops (no kernel runs here)."""
import importlib

import pytest

pytest.importorskip("triton")
common = importlib.import_module("threethings_fast.triton_kernels._common")
linear_mod = importlib.import_module("threethings_fast.triton_kernels.linear")


def test_tuned_or_first_uses_the_autotuner_by_default(monkeypatch):
    monkeypatch.delenv("TTF_TRITON_AUTOTUNE", raising=False)
    kernel, meta = common.tuned_or_first(linear_mod._linear_kernel_large)
    assert kernel is linear_mod._linear_kernel_large and meta == {}


def test_tuned_or_first_without_autotuning_takes_the_first_config(monkeypatch):
    monkeypatch.setenv("TTF_TRITON_AUTOTUNE", "0")
    tuned = linear_mod._linear_kernel_large
    kernel, meta = common.tuned_or_first(tuned)
    first = linear_mod._CONFIGS_LARGE_M[0]
    assert kernel is tuned.fn
    assert meta == {**first.kwargs, "num_warps": first.num_warps, "num_stages": first.num_stages}


def test_launch_choice_one_rule_for_every_op(monkeypatch):
    tuned, plain = linear_mod._linear_kernel_large, linear_mod._linear_kernel
    small, fp32 = {"BLOCK_M": 16}, {"BLOCK_M": 64, "num_warps": 4}
    monkeypatch.delenv("TTF_TRITON_AUTOTUNE", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")      # the interpreter wins, even for fp32
    assert common.launch_choice(plain, tuned, interpreter_meta=small, fp32_meta=fp32, fp32=True) == (plain, small)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    kernel, meta = common.launch_choice(plain, tuned, interpreter_meta=small, fp32_meta=fp32, fp32=True)
    assert kernel is plain and meta == fp32 and meta is not fp32  # a copy: launchers may not edit the table
    assert common.launch_choice(plain, tuned, interpreter_meta=small, fp32_meta=fp32, fp32=False) == (tuned, {})
    assert common.launch_choice(plain, tuned, interpreter_meta=small, fp32=True) == (tuned, {})   # no fp32 path


def test_linear_autotune_key_separates_epilogue_variants():
    """Triton keys a tuned config by the listed arguments and the dtypes only, not the constexpr flags: the epilogue
    variant must be an argument of the key, or the fused-norm GEMM inherits the separate one's tile."""
    for tuned in (linear_mod._linear_kernel_small, linear_mod._linear_kernel_large):
        assert "EPILOGUE" in tuned.keys
    variants = {linear_mod._epilogue_key(b, r, a, n, s, t) for b in (0, 1) for r in (0, 1) for a in (0, 1)
                for n in (0, 1) for s in (0, 1) for t in (0, 1)}
    assert len(variants) == 64
