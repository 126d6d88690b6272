"""Build hook for the C++/CUDA engine extension in csrc/ (`threethings_fast._C`, ops under torch.ops.ttf).

All package metadata lives in pyproject.toml. This file exists only because torch's BuildExtension (ninja) is driven
from setup.py. What is built (threethings_fast/_build.py holds the sources and flags, shared with the JIT build):
- torch with CUDA, nvcc and the CUTLASS headers present: the CUDA build for sm_90a (TORCH_CUDA_ARCH_LIST=9.0a);
- otherwise the CPU build (the engine's CPU implementation), and this says why;
- TTF_NO_EXTENSION=1, or torch not importable at build time: the pure-Python package alone; the extension is then
  JIT-built on first use of backend='cuda' (threethings_fast.extension).
"""
import importlib.util
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _build_config():
    spec = importlib.util.spec_from_file_location("_ttf_build", os.path.join(HERE, "threethings_fast", "_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extension_kwargs():
    build = _build_config()
    if not build.have_sources():
        print("threethings_fast: csrc/ has no engine sources; building the pure-Python package only.", file=sys.stderr)
        return {}
    if os.environ.get("TTF_NO_EXTENSION") == "1":
        print("threethings_fast: TTF_NO_EXTENSION=1, skipping the C++/CUDA extension (JIT-built on first use).",
              file=sys.stderr)
        return {}
    build.prepare_environment()
    try:
        from torch.utils import cpp_extension
    except ImportError:
        print("threethings_fast: torch is not importable at build time (build isolation?); skipping the C++/CUDA "
              "extension. Install with --no-build-isolation to build it, or let it JIT-build on first use.",
              file=sys.stderr)
        return {}
    problem = build.cuda_build_problem()
    with_cuda = problem is None
    if not with_cuda:
        print(f"threethings_fast: building the CPU part of the engine only ({problem}).", file=sys.stderr)
    args = build.build_arguments(with_cuda)
    ext_type = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    extra = {"cxx": args["cxx"], "nvcc": args["nvcc"]} if with_cuda else args["cxx"]
    sources = [os.path.relpath(s, HERE) for s in args["sources"]]
    ext = ext_type("threethings_fast._C", sources, include_dirs=args["include_dirs"], extra_compile_args=extra)
    return {"ext_modules": [ext], "cmdclass": {"build_ext": cpp_extension.BuildExtension}}


setup(**_extension_kwargs())
