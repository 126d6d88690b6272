"""One small forward through every kernel variant of the engine and of the Triton backend, for compute-sanitizer
(bench/engine_gpu.sh runs it under memcheck and racecheck, and the stems under initcheck, where the tool works:
Firecracker machines, not gVisor).

    compute-sanitizer --tool memcheck python bench/sanitize_engine.py [--stems-only] [--no-triton]

Small models (width 128, 2 heads of 64, 32x32 or 48x48 images) keep a sanitized run to seconds per variant:
linear / hMLP-BN / hMLP-LN stems, norm_pre with registers, average pooling, a distilled head; GEMMs in both tile
shapes (one large GEMM forces the 128x128 cooperative kernel); attention in both tile shapes needs two runs with
TTF_ATTENTION_ROWS=64 and =32 (read once per process).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import threethings_fast as ttf  # noqa: E402

VARIANTS = [
    ("linear", dict(stem="linear", img_size=32)),
    ("hmlp_bn", dict(stem="hmlp_bn", img_size=48)),
    ("hmlp_ln", dict(stem="hmlp_ln", img_size=48)),
    ("norm_pre+registers", dict(pre_norm=True, patch_bias=False, reg_tokens=2, img_size=32)),
    ("avg pooling", dict(class_token=False, global_pool="avg", img_size=32)),
    ("distilled", dict(distilled=True, img_size=32, num_classes=10)),
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stems-only", action="store_true")
    parser.add_argument("--no-triton", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("sanitize_engine.py needs a CUDA device", file=sys.stderr)
        return 2
    variants = VARIANTS[:3] if args.stems_only else VARIANTS
    backends = ["cuda"] + ([] if args.no_triton else ["triton"])
    for name, kw in variants:
        with torch.device("cuda"):
            model = ttf.create_model("S12x1", depth=1, embed_dim=128, num_heads=2, **kw).to(torch.bfloat16).eval()
        x = torch.randn(2, 3, model.config.img_size, model.config.img_size, device="cuda", dtype=torch.bfloat16)
        for backend in backends:
            fused = ttf.convert(model, backend=backend)
            out = fused(x) if not args.stems_only or backend != "cuda" else fused.ops.embed(x, fused.weights)
            torch.cuda.synchronize()
            print(f"{name:22s} {backend:7s} ok, finite={bool(torch.isfinite(out).all())}", flush=True)
    if not args.stems_only:
        a = torch.randn(1576, 384, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(3072, 384, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(3072, device="cuda", dtype=torch.bfloat16)
        torch.ops.ttf.engine_gemm(a, w, b, 1, 1)            # 128x128 cooperative tile
        torch.ops.ttf.engine_gemm(a[:197], w, b, 0, 1)      # 64x128 pingpong tile
        torch.cuda.synchronize()
        print("gemm tiles             cuda    ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
