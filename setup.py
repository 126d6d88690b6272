"""Build hook for the optional C++/CUDA extension in csrc/.

All package metadata lives in pyproject.toml. This file exists only because torch's BuildExtension (ninja) is driven
from setup.py. The extension is built when csrc/ holds sources *and* torch is importable at build time; otherwise
the pure-Python package (reference model, torch backend, Triton kernels) installs alone and this says why.
"""
import glob
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _extension_kwargs():
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    if not sources and not cuda_sources:
        print("threethings_fast: csrc/ has no C++/CUDA sources yet; building the pure-Python package only.",
              file=sys.stderr)
        return {}
    if os.environ.get("TTF_NO_EXTENSION") == "1":
        print("threethings_fast: TTF_NO_EXTENSION=1, skipping the C++/CUDA extension.", file=sys.stderr)
        return {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("threethings_fast: torch is not importable at build time (build isolation?); "
              "skipping the C++/CUDA extension. Install with --no-build-isolation to build it.", file=sys.stderr)
        return {}
    use_cuda = bool(cuda_sources) and cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None
    if use_cuda:
        ext = cpp_extension.CUDAExtension(
            "threethings_fast._C", sources + cuda_sources,
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-gencode=arch=compute_90a,code=sm_90a",
                                                         "-gencode=arch=compute_80,code=sm_80"]})
    else:
        if cuda_sources:
            print("threethings_fast: torch has no CUDA here; building the CPU part of the extension only.",
                  file=sys.stderr)
        ext = cpp_extension.CppExtension("threethings_fast._C", sources, extra_compile_args=["-O3"])
    return {"ext_modules": [ext], "cmdclass": {"build_ext": cpp_extension.BuildExtension}}


setup(**_extension_kwargs())
