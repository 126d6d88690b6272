"""Backend selection for the fused model: "torch" (plain torch ops, any device), "triton" (Triton kernels, CUDA or
the CPU interpreter), "cuda" (C++/CUDA extension for small batches, when built)."""
from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "torch", "triton", "cuda")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        from .. import triton_kernels  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(name: str, device: torch.device) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if name == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"backend='triton' runs on CUDA devices (got {device}); on the CPU set "
                               "TRITON_INTERPRET=1 before importing triton (slow, for testing) or use backend='torch'")
    if name == "cuda":
        raise RuntimeError("backend='cuda' (the C++/CUDA small-batch extension) is not built in this installation; "
                           "use backend='triton' or 'torch'")
    return name


def make_ops(name: str, norm: str = "separate"):
    """The ops object of backend `name`. norm: "separate" (a normalisation kernel writes x̂) or, Triton only,
    "fused" (the GEMMs exchange row statistics and normalise in their epilogue)."""
    if norm not in ("separate", "fused"):
        raise ValueError(f"norm must be 'separate' or 'fused', got {norm!r}")
    if name == "torch":
        if norm != "separate":
            raise ValueError("norm='fused' needs the Triton backend (backend='triton', or 'auto' on CUDA)")
        from .ops_torch import TorchOps
        return TorchOps()
    if name == "triton":
        from .ops_triton import TritonOps
        return TritonOps(norm)
    raise RuntimeError(f"no ops for backend {name!r}")
