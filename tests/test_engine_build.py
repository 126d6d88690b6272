"""The engine's CUDA build for sm_90a, checked without a GPU (`make build-cuda`): the extension loads and registers
its CUDA kernels, fake tensors trace it, the machine code holds the instructions the design needs, and the
compiler's resource report stays inside the stated limits.

Limits (also in bench/notes/engine.md):
- every kernel: 0 bytes of spill stores and loads, at most 255 registers, at most 227 KB of static shared memory;
- every engine kernel waits on its predecessor (griddepcontrol.wait = ACQBULK) and lets its successor launch early
  (griddepcontrol.launch_dependents = PREEXIT): programmatic dependent launch is wired everywhere;
- GEMMs: warpgroup MMAs (HGMMA) fed by the tensor memory accelerator (UTMALDG);
- attention: tensor-core MMAs (HMMA.16816.F32) fed by ldmatrix (LDSM) and cp.async (LDGSTS);
- the row kernels that prefetch weights do it with the L2 bulk prefetch (UBLKPF.L2).
"""
import glob
import os
import re
import shutil
import subprocess

import pytest
import torch

LOG = os.environ.get("TTF_ENGINE_BUILD_LOG")
pytestmark = pytest.mark.skipif(not LOG, reason="run by `make build-cuda` (needs the CUDA torch build and its log)")

MAX_REGISTERS = 255
MAX_STATIC_SMEM = 227 * 1024
ATTENTION_KERNELS = 20         # head_dim 32/64/80/96/128 x bf16/fp16 x two tile shapes
ROW_KERNELS = 10               # im2col, embed_finish, bias_ln_gelu, residual_ln, head_features x bf16/fp16


def gemm_kernels() -> int:
    """2 tiles x 3 epilogues per dtype; fp16 is left out of builds with TTF_ENGINE_NO_FP16=1."""
    return 12 if "fp16" in torch.ops.ttf.engine_info() else 6


@pytest.fixture(scope="module")
def library() -> str:
    from threethings_fast.extension import load_engine
    load_engine()
    root = os.environ.get("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/torch_extensions"))
    found = glob.glob(os.path.join(root, "**", "threethings_fast_engine*.so"), recursive=True)
    assert found, f"no built engine library under {root}"
    return found[0]


def _cuobjdump() -> str:
    import triton
    candidate = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    tool = candidate if os.path.exists(candidate) else shutil.which("cuobjdump")
    assert tool, "cuobjdump not found (it ships with triton and with the CUDA toolkit)"
    return tool


@pytest.fixture(scope="module")
def sass(library) -> dict[str, str]:
    """Demangled-enough kernel name -> its SASS."""
    text = subprocess.run([_cuobjdump(), "--dump-sass", library], check=True, capture_output=True, text=True).stdout
    kernels, name, body = {}, None, []
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            if name:
                kernels[name] = "\n".join(body)
            name, body = m.group(1), []
        elif name:
            body.append(line)
    if name:
        kernels[name] = "\n".join(body)
    return kernels


def _ours(kernels: dict, *fragments) -> dict:
    return {k: v for k, v in kernels.items() if any(f in k for f in fragments)}


def test_extension_loads_with_its_cuda_part():
    from threethings_fast.extension import engine_capabilities
    assert engine_capabilities() == {"cpu": True, "cuda": True}
    for op in ("vit_forward", "vit_embed", "engine_gemm", "engine_attention"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ttf::{op}", "CUDA"), op
    for op in ("vit_forward", "vit_embed"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ttf::{op}", "Meta"), op


def test_meta_tensors_trace_the_paper_models():
    import threethings_fast as ttf
    from threethings_fast.fused.ops_engine import engine_config, pack_stem
    from threethings_fast.models.vit.folding import fold_model
    with torch.device("meta"):
        model = ttf.create_model("S18x2")
    folded = fold_model(model)
    from threethings_fast.fused.weights import FusedWeights, cast_common
    weights = FusedWeights(config=model.config, stem=None, **cast_common(folded, torch.bfloat16, "meta"))
    stem = pack_stem(folded["stem"], torch.bfloat16, "meta")
    ints, eps = engine_config(weights, folded["stem"])
    assert torch.ops.ttf.engine_cuda_problem(ints, eps, torch.bfloat16) == ""
    assert "bfloat16 or float16" in torch.ops.ttf.engine_cuda_problem(ints, eps, torch.float32)
    tensors = stem + [weights.prefix, weights.pos_patches]
    for blk in weights.blocks:
        tensors += [blk.w_qkv, blk.b_qkv, blk.w_proj, blk.b_proj, blk.w_fc1, blk.b_fc1, blk.w_fc2, blk.b_fc2]
    tensors += [weights.head_w, weights.head_b]
    images = torch.empty(8, 3, 224, 224, dtype=torch.bfloat16, device="meta")
    out = torch.ops.ttf.vit_forward(images, tensors, ints, eps)
    assert out.shape == (8, 1000) and out.dtype == torch.bfloat16


def test_resource_report_within_limits(library):
    text = open(LOG).read()
    entries = re.findall(r"Compiling entry function '(\S+)' for 'sm_90a'\s*\n"
                         r"(?:ptxas info\s*: Function properties for \S+\s*\n)?"
                         r"\s*(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads\s*\n"
                         r"ptxas info\s*: Used (\d+) registers(?:, used \d+ barriers)?(?:, (\d+) bytes smem)?", text)
    expected = ATTENTION_KERNELS + ROW_KERNELS + gemm_kernels()
    assert len(entries) == expected, f"{len(entries)} ptxas reports in {LOG}, expected {expected}: was the build " \
                                     "verbose and fresh?"
    problems = []
    for name, stack, spill_st, spill_ld, regs, smem in entries:
        if int(spill_st) or int(spill_ld):
            problems.append(f"{name}: spills {spill_st}/{spill_ld} bytes")
        if int(regs) > MAX_REGISTERS:
            problems.append(f"{name}: {regs} registers")
        if smem and int(smem) > MAX_STATIC_SMEM:
            problems.append(f"{name}: {smem} bytes of static shared memory")
    assert not problems, problems


def test_every_engine_kernel_uses_programmatic_dependent_launch(sass):
    engine = _ours(sass, "ttf6engine", "cutlass")
    assert len(engine) == ATTENTION_KERNELS + ROW_KERNELS + gemm_kernels(), sorted(engine)
    missing = [k for k, body in engine.items() if "ACQBULK" not in body or "PREEXIT" not in body]
    assert not missing, f"kernels without griddepcontrol.wait / launch_dependents: {missing}"


def test_gemms_use_wgmma_and_tma(sass):
    gemms = _ours(sass, "cutlass")
    assert len(gemms) == gemm_kernels(), sorted(gemms)
    for name, body in gemms.items():
        assert "HGMMA" in body, f"{name}: no warpgroup MMA"
        assert "UTMALDG" in body, f"{name}: no TMA load"


def test_attention_uses_tensor_cores_ldmatrix_and_cp_async(sass):
    kernels = _ours(sass, "attention")
    assert len(kernels) == ATTENTION_KERNELS, sorted(kernels)
    for name, body in kernels.items():
        assert "HMMA.16816.F32" in body and "LDSM" in body and "LDGSTS" in body, name
        assert "LDL" not in body and "STL" not in body, f"{name}: local memory"


def test_weight_prefetch_into_l2(sass):
    for fragment in ("residual_ln", "embed_finish", "head_features", "attention"):
        kernels = _ours(sass, fragment)
        assert kernels and all("UBLKPF.L2" in body for body in kernels.values()), fragment
