"""The per-sample vs batched profiler: ``python -m threethings_fast.profile`` (see ``cli`` for the options).

Sweeps batch sizes for a set of models and providers, timing every (model, provider) pair of a batch
round-robin in one process (threethings_fast.timing.time_interleaved), and writes into ``--out``:

    profile.json         raw timings + metadata (schema: threethings_fast.profile.schema, bench/README.md)
    profile.md           throughput / latency / TFLOP/s table, Table-4-style speed-ups, the paper's anchor
    throughput.png       images/s vs batch (log-x), one line per provider, one panel per model family
    latency.png          median latency vs batch (p10-p90 band)
    trace_<config>.json  with --trace: a torch.profiler Chrome trace of one config (chrome://tracing, Perfetto)

Providers (names as they appear in every output):
    reference              the reference model, eager (parallel branches summed inside each block)
    branch_by_branch       the same x2 model, branches run one after another (the paper's "sequential" execution)
    compile                torch.compile of the reference (CUDA only, opt-in: --compile)
    fused[torch]           convert(model, backend="torch"): folded weights, plain torch ops (the CPU path)
    fused[triton]          convert(model, backend="triton"): the Triton kernels, eager launches (CUDA)
    fused[triton]+graph    the same captured in one CUDA graph per batch size (threethings_fast.fused.graphs)
    fused[triton/fusednorm](+graph)  convert(..., norm="fused"): LayerNorms applied in the GEMM epilogues from
                           row statistics the residual GEMMs write (5 launches per block instead of 7)
"""
from .cli import main, parse_args
from .schema import SCHEMA_VERSION, validate
from .sweep import PROVIDERS, run_profile

__all__ = ["main", "parse_args", "run_profile", "validate", "SCHEMA_VERSION", "PROVIDERS"]
