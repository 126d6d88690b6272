"""The per-sample vs batched profiler: ``python -m threethings_fast.profile`` (see ``cli`` for the options).

Sweeps batch sizes for a set of models and providers, timing every (model, provider) pair of a batch
round-robin in one process (threethings_fast.timing.time_interleaved), and writes into ``--out``:

    profile.json         raw timings + metadata (schema: threethings_fast.profile.schema, bench/README.md)
    profile.md           throughput / latency / TFLOP/s table, Table-4-style speed-ups, the paper's anchor
    throughput.png       images/s vs batch (log-x), one line per provider, one panel per model family
    latency.png          median latency vs batch (p10-p90 band)
    trace_<config>.json  with --trace: a torch.profiler Chrome trace of one config (chrome://tracing, Perfetto)

Providers: the names of the one registry, `threethings_fast.providers` (reference, branch_by_branch, compile,
timm..., fused[torch], fused[triton], fused[triton]+graph, fused[cuda], ...), the same in every output;
``--list-providers`` prints each with what it runs and whether it can run here. ``--preset report`` is the short
reference-vs-fused report (``make report``, ``python -m threethings_fast.bench``).

Models of every family (threethings_fast.models) are accepted: ``--models mixer_b16_224 gmlp_tiny_2 ...``; their
FLOPs are their family's ``count_macs``, and providers that cannot run a family are skipped with the reason.
``--preset families`` times the MLP families beside a ViT of about their FLOPs:
    CPU   S12x1, mixer_s16_224, resmlp_12_224, gmlp_s16_224, vip_s7, ffonly_tiny; batches 1 16;
          reference, fused[auto], timm
    CUDA  B12x1, mixer_b16_224, resmlp_24_224, gmlp_b16_224, vip_m7, ffonly_base; batches 1 64 256; bf16;
          fused[triton], fused[triton]+graph, timm, timm+compile
(a family without a fused path at run time is left out, with a note), written to bench/results/families_<device>;
its report adds a models table and the families side by side.
"""
from ..providers import names as _provider_names
from .cli import main, parse_args
from .schema import SCHEMA_VERSION, validate
from .sweep import run_profile

PROVIDERS = _provider_names()   # every registered provider name, in table order

__all__ = ["main", "parse_args", "run_profile", "validate", "SCHEMA_VERSION", "PROVIDERS"]
