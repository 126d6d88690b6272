"""How the C++/CUDA engine extension (csrc/) is built: sources, flags and include directories, shared by setup.py
(ahead of time) and `threethings_fast.extension` (JIT on first use). No torch import at module level: setup.py
loads this file by path before deciding anything.

CPU build (torch without CUDA, or no nvcc / CUTLASS):  csrc/engine/*.cpp -> the ops with their CPU implementation
CUDA build (CUDA torch + nvcc + CUTLASS headers):      csrc/engine/*.cpp with TTF_WITH_CUDA (the CUDA forward) and
                                                       csrc/kernels/*.cu for sm_90a (TMA, WGMMA, programmatic
                                                       dependent launch)
"""
from __future__ import annotations

import glob
import importlib.util
import os
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")

# The GPU target: Hopper with its architecture-specific instructions (wgmma, setmaxnreg) — "9.0a".
CUDA_ARCH_LIST = "9.0a"
CXX_FLAGS = ["-O3", "-std=c++20"]
# -Xptxas=-v: the resource report (registers, shared memory, spills) that `make build-cuda` checks; it only shows in
# verbose builds (TTF_BUILD_VERBOSE=1).
NVCC_FLAGS = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-DCUTLASS_ENABLE_GDC_FOR_SM90", "-DNDEBUG",
              "-Xptxas=-v"]
CUDA_DEFINE = "-DTTF_WITH_CUDA"
# CUTLASS version the engine is written against (the nvidia-cutlass wheel, headers only).
CUTLASS_VERSION = "4.2.0.0"


def have_sources() -> bool:
    return os.path.isdir(os.path.join(CSRC, "engine"))


def cpp_sources() -> list[str]:
    return sorted(glob.glob(os.path.join(CSRC, "engine", "*.cpp")))


def fp16_kernels() -> bool:
    """TTF_ENGINE_NO_FP16=1 leaves the float16 GEMM kernels out of the build (half the CUTLASS compile time; they are
    the bf16 templates with another element type). CI's compile check uses it; real builds keep both."""
    return os.environ.get("TTF_ENGINE_NO_FP16") != "1"


def cuda_sources() -> list[str]:
    sources = sorted(glob.glob(os.path.join(CSRC, "kernels", "*.cu")))
    if not fp16_kernels():
        sources = [s for s in sources if not os.path.basename(s).startswith("gemm_sm90_fp16_")]
    return sources


def cutlass_include_dirs() -> Optional[list[str]]:
    """CUTLASS's include directories: $CUTLASS_DIR (a CUTLASS checkout), else the nvidia-cutlass wheel's headers
    (found without importing it: its Python part needs packages the headers do not). None when neither exists."""
    root = os.environ.get("CUTLASS_DIR")
    if root:
        candidates = [os.path.join(root, "include"), os.path.join(root, "tools", "util", "include")]
    else:
        spec = importlib.util.find_spec("cutlass_library")
        if spec is None or not spec.submodule_search_locations:
            return None
        base = os.path.join(list(spec.submodule_search_locations)[0], "source")
        candidates = [os.path.join(base, "include"), os.path.join(base, "tools", "util", "include")]
    if not os.path.isfile(os.path.join(candidates[0], "cutlass", "cutlass.h")):
        return None
    return candidates


def _toolkit_root() -> Optional[str]:
    """A CUDA toolkit root with nvcc and the runtime headers: $CUDA_HOME / $CUDA_PATH, else /usr/local/cuda."""
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.isfile(os.path.join(root, "include", "cuda_runtime_api.h")):
            return root
    return None


def prepare_environment() -> None:
    """Point torch's extension builder at a complete CUDA toolkit. torch derives CUDA_HOME from the nvcc on PATH,
    which on some machines is a wrapper outside the toolkit (its ../include has no CUDA headers); it reads the
    variable when torch.utils.cpp_extension is first imported, so this runs before that (and fixes the module's
    value when it was imported earlier)."""
    root = _toolkit_root()
    if root and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = root
    import sys
    module = sys.modules.get("torch.utils.cpp_extension")
    if module is not None and root and not (module.CUDA_HOME and os.path.isfile(
            os.path.join(module.CUDA_HOME, "include", "cuda_runtime_api.h"))):
        module.CUDA_HOME = root


def cuda_build_problem() -> Optional[str]:
    """None when the CUDA part can be built here, else why not (for messages)."""
    if os.environ.get("TTF_ENGINE_CUDA") == "0":
        return "TTF_ENGINE_CUDA=0"
    prepare_environment()
    import torch
    from torch.utils import cpp_extension
    if torch.version.cuda is None:
        return f"torch {torch.__version__} has no CUDA"
    if cpp_extension.CUDA_HOME is None or not os.path.isfile(
            os.path.join(cpp_extension.CUDA_HOME, "include", "cuda_runtime_api.h")):
        return "no CUDA toolkit (nvcc and its headers) found; set CUDA_HOME"
    if not cuda_sources():
        return "csrc/kernels has no CUDA sources"
    if cutlass_include_dirs() is None:
        return (f"no CUTLASS headers: pip install --no-deps nvidia-cutlass=={CUTLASS_VERSION}, or set CUTLASS_DIR "
                "to a CUTLASS checkout")
    return None


def cuda_library_include_dirs() -> list[str]:
    """Headers of the CUDA libraries that torch's CUDA headers include (cuBLAS, cuSPARSE, cuSOLVER). The CUDA wheels
    of torch ship them under site-packages/nvidia/cu*/include rather than in the toolkit; a minimal toolkit (nvcc
    and the runtime only) then needs these directories too."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return []
    site = os.path.dirname(os.path.dirname(spec.origin))
    return sorted(d for d in glob.glob(os.path.join(site, "nvidia", "cu*", "include"))
                  if os.path.isfile(os.path.join(d, "cusparse.h")))


def configure_arch() -> None:
    """torch's build adds one -gencode per entry of TORCH_CUDA_ARCH_LIST; without it, one per known architecture
    (the CUTLASS sm90a kernels compile for 9.0a only)."""
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", CUDA_ARCH_LIST)


def build_arguments(with_cuda: bool) -> dict:
    """sources / extra_compile_args / include_dirs for a torch extension (setup.py or cpp_extension.load)."""
    include = [os.path.join(CSRC, "engine"), os.path.join(CSRC, "kernels")]
    if not with_cuda:
        return {"sources": cpp_sources(), "include_dirs": include, "cxx": list(CXX_FLAGS), "nvcc": []}
    configure_arch()
    include += (cutlass_include_dirs() or []) + cuda_library_include_dirs()
    defines = [CUDA_DEFINE] + ([] if fp16_kernels() else ["-DTTF_ENGINE_NO_FP16"])
    return {"sources": cpp_sources() + cuda_sources(), "include_dirs": include,
            "cxx": CXX_FLAGS + defines, "nvcc": NVCC_FLAGS + defines}
