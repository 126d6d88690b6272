"""Backend selection for the fused model: "torch" (plain torch ops, any device), "triton" (Triton kernels, CUDA or
the CPU interpreter), "cuda" (the C++ engine: one op per forward; CUDA kernels on sm_90, its ATen implementation on
the CPU)."""
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


def engine_usable(device: torch.device) -> bool:
    """Whether backend='auto' may use the C++ engine on `device`: an sm_90 GPU and an engine built with its CUDA
    part (building it on first use). False, quietly, wherever it cannot run."""
    if device.type != "cuda" or os.environ.get("TTF_AUTO_ENGINE") == "0":
        return False
    try:
        check_engine(device)
    except RuntimeError:
        return False
    return True


def resolve_backend(name: str, device: torch.device) -> str:
    """The backend to build: "torch", "triton", "cuda", or "hybrid" (auto on sm_90: the engine for small batches,
    Triton above)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        if device.type != "cuda" or not triton_available():
            return "torch"
        return "hybrid" if engine_usable(device) else "triton"
    if name == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"backend='triton' runs on CUDA devices (got {device}); on the CPU set "
                               "TRITON_INTERPRET=1 before importing triton (slow, for testing) or use backend='torch'")
    if name == "cuda":
        check_engine(device)
    return name


def check_engine(device: torch.device) -> None:
    """Raise RuntimeError unless the C++ engine can run on `device` (building the extension on first use)."""
    from ..extension import engine_capabilities
    try:
        caps = engine_capabilities()
    except RuntimeError as exc:
        raise RuntimeError(f"backend='cuda' needs the C++ engine extension: {exc}") from exc
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise RuntimeError(f"backend='cuda' runs on CUDA devices (and its ATen implementation on the CPU), got "
                           f"{device}")
    if not caps["cuda"]:
        raise RuntimeError("backend='cuda': the C++ engine was built without its CUDA part (torch without CUDA, or "
                           "no nvcc / CUTLASS headers at build time); use backend='triton'")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) != (9, 0):
        raise RuntimeError(f"backend='cuda': the engine's kernels are built for sm_90a (H100 / H200); this GPU is "
                           f"sm_{major}{minor}. Use backend='triton'")


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
    if name == "cuda":
        if norm != "separate":
            raise ValueError("norm= selects the Triton backend's LayerNorm placement; the C++ engine always "
                             "normalises in the row kernel that owns each residual row")
        from .ops_engine import EngineOps
        return EngineOps()
    if name == "hybrid":
        from .ops_engine import EngineOps
        from .ops_hybrid import HybridOps
        from .ops_triton import TritonOps
        return HybridOps(EngineOps(), TritonOps(norm))
    raise RuntimeError(f"no ops for backend {name!r}")
