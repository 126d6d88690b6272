"""Benchmark of the fused stems (hMLP and linear) against PyTorch: setup × provider, CUDA-event timing.

    python bench/bench_stem.py bench/results/stem_<device>.json [--batch 64 256] [--dim 768] [--img 224]

Rows per batch (E = 768, bf16 weights and images, 224 px, batch 64 and 256 by default), each named by the provider
that runs it (the registry's names, threethings_fast.providers, as in every benchmark), the stem and the input:
    provider       what runs
    fused[triton]  the Triton stem kernel the fused model launches: hmlp_stem (one launch; BN folded, LN in-kernel)
                   or patch_embed (linear)
    reference      the reference model's stem module: 3 × (cuDNN conv + BN/LN (+ GELU)) in eval mode, or Conv2d
    compile        torch.compile(reference stem module)
    stem           hmlp_bn, hmlp_ln (hMLP with BatchNorm / LayerNorm2d) or linear (16×16 patch embedding)
    input          nchw; channels_last (strided loads); mae75 (MAE masking, 25 % of the patches visible, work ∝
                   visible; the reference gathers the visible 16×16 patches first); beit40 (BEiT masking, 40 %
                   masked: mask token written, visible computed; fused[triton] only)
Timing: triton.testing.do_bench (CUDA events, L2 flushed between reps), median and 20/80 % quantiles in ms.
Derived: TFLOP/s = 2·MACs / t with MACs = B·N·(2E² + 192E) for hMLP (B·N·768·E linear), counted on the
unpadded, visible work; GB/s = (image bytes + token bytes) / t.
Order: hmlp_bn and linear on nchw, fused[triton] then reference (the headline pairs), then the variants,
torch.compile last. The JSON ({"meta", "results"}) is rewritten after every row, so a run cut short by a time limit
keeps what it measured: meta.complete is true only for a finished run, meta.interrupted after SIGINT / Ctrl-C
(exit code 130). Typical GPU use: `--batch 64` (and `--no-compile` when little time is left).
Without CUDA it prints a message and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch


def _macs_hmlp(tokens: int, E: int) -> int:
    return tokens * (2 * E * E + 192 * E)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="JSON file to write (device, versions, raw timings)")
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--no-compile", action="store_true", help="skip the compile rows")
    args = ap.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench_stem: no CUDA device here; this benchmark runs on a GPU only (nothing written).")
        return 0

    import triton
    from triton.testing import do_bench

    from threethings_fast.stem_fold import fold_stem
    from threethings_fast.reference.stems import HMLPStem, PatchEmbed
    from threethings_fast.triton_kernels._common import autotune_enabled
    from threethings_fast.triton_kernels.hmlp_stem import hmlp_stem, prepare_hmlp_stem
    from threethings_fast.triton_kernels.patch_embed import patch_embed

    dev, dt, E, px = "cuda", torch.bfloat16, args.dim, args.img
    N = (px // 16) ** 2
    meta = {
        "device": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "embed_dim": E, "img": px, "dtype": str(dt), "batches": args.batch,
        "timing": "triton.testing.do_bench(warmup=25, rep=200), quantiles 0.5/0.2/0.8, ms",
        "complete": False, "interrupted": False,
        # TTF_TRITON_AUTOTUNE=0: each kernel ran the first config of its list, untuned (the GPU suite's quick mode)
        "triton_autotune": autotune_enabled(),
    }
    results = []

    def write():   # after every row: a run cut short (time limit, Ctrl-C) keeps every row measured so far
        tmp = args.out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=1)
        os.replace(tmp, args.out)

    write()
    try:
        torch.manual_seed(0)
        stems = {k: HMLPStem(3, E, norm=k).to(dev).eval() for k in ("bn", "ln")}
        prepared = {k: prepare_hmlp_stem(fold_stem(s), dt, dev) for k, s in stems.items()}
        stems_lp = {k: HMLPStem(3, E, norm=k).to(dev).eval() for k in ("bn", "ln")}
        for k in stems_lp:
            stems_lp[k].load_state_dict(stems[k].state_dict())
            stems_lp[k].to(dt)
        stem_cl = HMLPStem(3, E, norm="bn").to(dev).eval()
        stem_cl.load_state_dict(stems["bn"].state_dict())
        stem_cl = stem_cl.to(dt).to(memory_format=torch.channels_last)
        lin = PatchEmbed(16, 3, E).to(dev).eval().to(dt)
        lin_w = lin.proj.weight.detach().reshape(E, -1).contiguous()
        lin_b = lin.proj.bias.detach().float()
        compiled = {}
        if not args.no_compile:
            compiled = {k: torch.compile(stems_lp[k]) for k in ("bn", "ln")}

        for B in args.batch:
            x = torch.randn(B, 3, px, px, device=dev, dtype=dt)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            n_vis = N // 4
            idx = torch.rand(B, N, device=dev).argsort(1)[:, :n_vis].contiguous()
            beit_mask = torch.rand(B, N, device=dev) < 0.4
            token = torch.randn(E, device=dev, dtype=dt)
            img_bytes = x.numel() * x.element_size()
            tok_bytes = B * N * E * 2
            full_macs = _macs_hmlp(B * N, E)
            vis_macs, vis_bytes = _macs_hmlp(B * n_vis, E), (img_bytes + tok_bytes) // 4
            # The headline pairs first (a run cut short keeps them), then the variants, torch.compile last.
            full = (full_macs, img_bytes + tok_bytes)
            beit = (_macs_hmlp(int(B * N * 0.6), E), img_bytes * 6 // 10 + tok_bytes)
            rows = [   # (provider, stem, input, fn, macs, bytes)
                ("fused[triton]", "hmlp_bn", "nchw", lambda: hmlp_stem(x, prepared["bn"]), *full),
                ("reference", "hmlp_bn", "nchw", lambda: stems_lp["bn"](x), *full),
                ("fused[triton]", "linear", "nchw", lambda: patch_embed(x, lin_w, lin_b), B * N * 768 * E,
                 img_bytes + tok_bytes),
                ("reference", "linear", "nchw", lambda: lin(x), B * N * 768 * E, img_bytes + tok_bytes),
                ("fused[triton]", "hmlp_ln", "nchw", lambda: hmlp_stem(x, prepared["ln"]), *full),
                ("reference", "hmlp_ln", "nchw", lambda: stems_lp["ln"](x), *full),
                ("fused[triton]", "hmlp_bn", "channels_last", lambda: hmlp_stem(x_cl, prepared["bn"]), *full),
                ("reference", "hmlp_bn", "channels_last", lambda: stem_cl(x_cl), *full),
                ("fused[triton]", "hmlp_bn", "mae75", lambda: hmlp_stem(x, prepared["bn"], visible_idx=idx),
                 vis_macs, vis_bytes),
                ("reference", "hmlp_bn", "mae75", lambda: stems_lp["bn"].forward_masked(x, visible_idx=idx),
                 vis_macs, vis_bytes),
                ("fused[triton]", "hmlp_bn", "beit40",
                 lambda: hmlp_stem(x, prepared["bn"], mask=beit_mask, mask_token=token), *beit),
            ]
            for k, f in compiled.items():
                rows.append(("compile", f"hmlp_{k}", "nchw", (lambda f=f: f(x)), *full))
            for provider, stem, layout, fn, macs, nbytes in rows:
                what = {"batch": B, "provider": provider, "stem": stem, "input": layout}
                label = f"B={B:4d} {provider:14s} {stem:8s} {layout:13s}"
                with torch.no_grad():
                    try:
                        t0 = time.time()
                        fn()  # autotune / compile outside the timed region
                        torch.cuda.synchronize()
                        first_call_s = time.time() - t0
                        med, q20, q80 = do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.2, 0.8])
                    except Exception as exc:  # keep the other rows' numbers
                        print(f"{label} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                        results.append({**what, "error": f"{type(exc).__name__}: {exc}"})
                        write()
                        continue
                row = {**what, "ms_median": med, "ms_q20": q20, "ms_q80": q80, "macs": macs, "bytes": nbytes,
                       "tflops": 2 * macs / med / 1e9, "gbps": nbytes / med / 1e6, "first_call_s": first_call_s}
                results.append(row)
                write()
                print(f"{label} {med:8.4f} ms  [{q20:.4f}, {q80:.4f}]  {row['tflops']:7.1f} TFLOP/s  "
                      f"{row['gbps']:7.1f} GB/s", flush=True)
    except KeyboardInterrupt:   # SIGINT from `timeout -s INT` (bench/gpu_suite.sh) or Ctrl-C
        meta["interrupted"] = True
        write()
        print(f"bench_stem: interrupted; {len(results)} rows in {args.out}", file=sys.stderr)
        return 130
    meta["complete"] = True
    write()
    print(f"wrote {args.out}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
