"""Host (Python) time of the Triton path, per op call and per eager forward, measured on the CPU.

Every Triton kernel launch ends in a no-op that only counts it, so what is timed is everything a GPU run pays on
the host before Triton's own launcher: argument checks, torch.library dispatch, allocation of outputs,
launch-parameter computation, the forward's Python. Triton's launcher itself (binding the arguments, the driver
call: a few µs per launch on a fast host) is not included, and neither is anything the GPU does.

The kernels are imported under the Triton interpreter so CPU tensors pass the device checks; nothing interpreted
ever runs (the launch is the no-op).

    PYTHONPATH=. .venv/bin/python bench/host_overhead.py [--json out.json] [--reps 2000] [--model S18x2]

Output: median µs per op call (S18x2 shapes at batch 1) and per eager forward of the model at batch 1, with the
number of launches one forward makes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"   # before the first import of triton: CPU tensors pass the device checks

import torch  # noqa: E402

import threethings_fast as ttf  # noqa: E402
from threethings_fast import triton_kernels as tk  # noqa: E402

class _NoLaunch:
    """Counts the launches that reached Triton; stands in for the interpreter's run (the launch itself)."""

    count = 0

    @staticmethod
    def run(self, *args, **kwargs):
        _NoLaunch.count += 1


def disable_launches() -> None:
    """Make every Triton launch a counted no-op at the last step: ``kernel[grid](...)`` still goes through the
    launchers, `wrap_triton` and Triton's own ``__getitem__``; only the interpreter's run (which stands where the
    GPU launcher would) does nothing."""
    from triton.runtime.interpreter import InterpretedFunction
    InterpretedFunction.run = _NoLaunch.run


def median_us(fn, reps: int) -> float:
    for _ in range(min(50, reps)):
        fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1e3


def op_calls(dtype: torch.dtype) -> dict:
    """One call of each op at S18x2 batch-1 shapes: M = 197 tokens, D = 384, K = 2 branches of 6 heads."""
    m, d, f, heads = 197, 384, 3072, 12
    x = torch.randn(m, d, dtype=dtype)
    h = torch.randn(m, f, dtype=dtype)
    w_fc2 = torch.randn(d, f, dtype=dtype)
    w_qkv = torch.randn(3 * 2 * d, d, dtype=dtype)
    b = torch.randn(d)
    qkv = torch.randn(1, m, 3 * 2 * d, dtype=dtype)
    stats = tk.row_stats(x)
    colsum = tk.column_sums(w_qkv)
    return {
        "normalize": lambda: tk.normalize(x, 1e-6),
        "row_stats": lambda: tk.row_stats(x),
        "linear (fc2 + bias + residual)": lambda: tk.linear(h, w_fc2, b, residual=x),
        "linear (qkv, fused norm)": lambda: tk.linear(x, w_qkv, norm=stats, colsum=colsum),
        "attention": lambda: tk.attention(qkv, heads, 64, 1.0),
    }


def forward_call(model_name: str, dtype: torch.dtype, norm: str):
    model = ttf.create_model(model_name).eval()
    fused = ttf.convert(model, backend="triton", dtype=dtype, norm=norm)
    images = torch.randn(1, 3, 224, 224, dtype=dtype)
    return lambda: fused(images)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2000, help="calls per op (forwards: reps // 20)")
    ap.add_argument("--model", default="S18x2")
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(1)
    disable_launches()

    result = {"what": "host µs per call, Triton launches replaced by no-ops (CPU)", "torch": torch.__version__,
              "python": sys.version.split()[0], "dtype": args.dtype, "ops": {}, "forward": {}}
    for name, fn in op_calls(dtype).items():
        result["ops"][name] = round(median_us(fn, args.reps), 2)
    for norm in ("separate", "fused"):
        fn = forward_call(args.model, dtype, norm)
        _NoLaunch.count = 0
        fn()
        launches = _NoLaunch.count
        us = median_us(fn, max(20, args.reps // 20))
        result["forward"][f"{args.model} bs1 norm={norm}"] = {"us": round(us, 1), "launches": launches,
                                                               "us_per_launch": round(us / launches, 2)}
    width = max(map(len, result["ops"])) + 2
    print(f"host time per call ({args.dtype}, launches are no-ops; Triton's launcher not included)")
    for name, us in result["ops"].items():
        print(f"  {name:{width}s} {us:8.2f} µs")
    for name, r in result["forward"].items():
        print(f"  {name:{width}s} {r['us']:8.1f} µs  ({r['launches']} launches, {r['us_per_launch']:.1f} µs each)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
