"""Loading the C++/CUDA engine extension (csrc/): the one built by setup.py (`threethings_fast._C`), or a JIT build
from the source checkout on first use (torch.utils.cpp_extension.load with ninja, cached under
TORCH_EXTENSIONS_DIR; it prints what it does, takes about a minute for the CPU part and a few minutes for the CUDA
part, and names the cause when it cannot build).

    load_engine()        -> the ops are registered under torch.ops.ttf (vit_forward, vit_embed, vit_plan, engine_info)
    engine_capabilities() -> {"cpu": True, "cuda": bool}, or raises RuntimeError saying why the engine is missing
"""
from __future__ import annotations

import os
import sys
import threading

import torch

_lock = threading.Lock()
_error: str | None = None


def _registered() -> bool:
    try:
        torch.ops.ttf.engine_info
    except (AttributeError, RuntimeError):
        return False
    return True


def _jit_build() -> None:
    from . import _build as build
    build.prepare_environment()
    from torch.utils import cpp_extension
    if not build.have_sources():
        raise RuntimeError("the C++ engine is not built and its sources (csrc/) are not here: reinstall "
                           "threethings_fast from a source checkout with torch importable (pip install "
                           "--no-build-isolation .)")
    problem = build.cuda_build_problem()
    with_cuda = problem is None and os.environ.get("TTF_ENGINE_CUDA") != "0"
    args = build.build_arguments(with_cuda)
    what = "CPU and CUDA (sm_90a) parts" if with_cuda else f"CPU part only: {problem}"
    cache = os.environ.get("TORCH_EXTENSIONS_DIR", "~/.cache/torch_extensions")
    print(f"threethings_fast: loading the C++ engine extension ({what}); it is compiled on first use (a minute "
          f"or more) and cached under {cache} ...", file=sys.stderr, flush=True)
    try:
        cpp_extension.load(
            name="threethings_fast_engine", sources=args["sources"], extra_include_paths=args["include_dirs"],
            extra_cflags=args["cxx"], extra_cuda_cflags=args["nvcc"] or None, with_cuda=with_cuda,
            is_python_module=False, verbose=os.environ.get("TTF_BUILD_VERBOSE") == "1")
    except Exception as exc:  # compiler missing, compile error, ninja missing: say so once, keep the cause
        raise RuntimeError(f"building the C++ engine extension failed ({type(exc).__name__}): {exc}. "
                           "Set TTF_BUILD_VERBOSE=1 for the compiler output; backend='torch' / 'triton' need no "
                           "build") from exc
    print("threethings_fast: C++ engine extension ready.", file=sys.stderr, flush=True)


def load_engine() -> None:
    """Register the engine ops, building the extension if needed. Raises RuntimeError naming the cause."""
    global _error
    if _registered():
        return
    with _lock:
        if _registered():
            return
        if _error is not None:
            raise RuntimeError(_error)
        try:
            import threethings_fast._C  # noqa: F401  (built by setup.py; registers the ops)
        except ImportError:
            if os.environ.get("TTF_NO_JIT") == "1":
                _error = ("the C++ engine extension (threethings_fast._C) is not built and TTF_NO_JIT=1 forbids "
                          "building it now")
                raise RuntimeError(_error) from None
            try:
                _jit_build()
            except RuntimeError as exc:
                _error = str(exc)
                raise
        if not _registered():
            _error = "the C++ engine extension loaded but registered no torch.ops.ttf.engine_info"
            raise RuntimeError(_error)


def engine_capabilities() -> dict:
    """What the loaded engine can run: {"cpu": True, "cuda": bool}."""
    load_engine()
    info = torch.ops.ttf.engine_info()
    return {"cpu": "cpu" in info, "cuda": "cuda" in info}
