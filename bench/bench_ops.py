"""Per-op benchmarks, setup × provider: normalisation, GEMM + epilogue, attention, stem.

Setups are the shapes a folded S18x2 / B18x2 block sees at 224 px (N = 197 tokens, K = 2 branches):
CUDA: both widths at batch 1 and 64, bf16; CPU: S18x2 at batch 1, float32.
Providers:
    reference   the op's plain PyTorch reference (`<op>_ref` beside each kernel; the reference model's stem)
    compile     torch.compile of that reference (CUDA only)
    torch       the fused model's torch backend op (threethings_fast.fused.ops_torch)
    triton      the Triton kernel (threethings_fast.triton_kernels; CUDA only)
Names read `test_<op>[<setup>-<provider>]`, groups `<op> <setup>`: `pytest-benchmark compare --group-by=group`
lines up the providers of one setup, and the same name across two runs.

Derived rates in extra_info (from the median; formulas next to each op):
    normalize   bytes = 2·M·D·s                                        (bandwidth bound: look at gbps)
    linear      flops = 2·M·N·K; bytes = (M·K + N·K + M·N [+ M·N residual])·s
    attention   flops = 4·B·H·N²·d (QKᵀ and PV); bytes = (3 + 1)·B·N·H·d·s (qkv in, o out)
    stem        flops = 2·stem MACs (threethings_fast.macs.stem_macs, no norms); bytes = image + tokens
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
import torch

from conftest import DEVICE, DTYPE, HAS_CUDA, skip_unavailable
from threethings_fast.configs import from_name
from threethings_fast.fused.ops_torch import TorchOps

PROVIDERS = ["reference", pytest.param("compile", marks=pytest.mark.compile), "torch", "triton"]


@dataclass(frozen=True)
class Shape:
    model: str
    batch: int

    @property
    def id(self) -> str:
        return f"{self.model}-b{self.batch}"

    @property
    def cfg(self):
        return from_name(self.model)

    @property
    def tokens(self) -> int:
        return self.cfg.num_tokens

    @property
    def m(self) -> int:
        return self.batch * self.tokens


SHAPES = [Shape("S18x2", 1), Shape("S18x2", 64), Shape("B18x2", 1), Shape("B18x2", 64)] if HAS_CUDA else \
    [Shape("S18x2", 1)]
SIZE = torch.finfo(DTYPE).bits // 8


def _tk():
    from threethings_fast import triton_kernels as tk
    return tk


def _raise_recompile_limit():
    # dynamic=False compiles one graph per shape and argument set: linear_ref alone sees 4 GEMMs × 4 setups here, past
    # dynamo's default recompile limit of 8, beyond which it silently runs the function eagerly — the `compile`
    # numbers would be eager ones. (bench_model.py and the profiler raise it the same way.)
    cfg = torch._dynamo.config
    for attr in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, attr):
            setattr(cfg, attr, max(64, getattr(cfg, attr)))
    if hasattr(cfg, "accumulated_recompile_limit"):
        cfg.accumulated_recompile_limit = max(1024, cfg.accumulated_recompile_limit)
    if hasattr(cfg, "accumulated_cache_size_limit"):
        cfg.accumulated_cache_size_limit = max(1024, cfg.accumulated_cache_size_limit)


def _compiled(fn):
    _raise_recompile_limit()
    return torch.compile(fn, dynamic=False)


def _randn(*shape, scale=1.0):
    return (torch.randn(*shape, device=DEVICE) * scale).to(DTYPE)


# --------------------------------------------------------------------------------------------------------------
# normalisation: x̂ = (x − μ) / sqrt(σ² + ε) over D, no affine (folded into the next GEMM)
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
def test_normalize(measure, shape, provider):
    skip_unavailable(provider)
    if provider == "torch":
        pytest.skip("the torch backend's normalize is F.layer_norm: the reference itself")
    from threethings_fast.triton_kernels.normalize import normalize_ref  # pure torch, no kernel launch
    d = shape.cfg.embed_dim
    x = _randn(shape.m, d, scale=3.0)
    eps = shape.cfg.norm_eps
    fn = {"reference": lambda: normalize_ref(x, eps),
          "compile": functools.partial(_compiled(normalize_ref), x, eps),
          "triton": lambda: _tk().normalize(x, eps)}[provider]
    measure(fn, group=f"normalize {shape.id} M={shape.m} D={d}", bytes=2 * shape.m * d * SIZE,
            M=shape.m, D=d, provider=provider)


# --------------------------------------------------------------------------------------------------------------
# GEMM + epilogue: y = act(x Wᵀ + b) + r, the four GEMMs of a folded parallel block
# --------------------------------------------------------------------------------------------------------------
GEMMS = {  # name -> (in features, out features, activation, residual) as functions of (D, K, F)
    "qkv": lambda d, k, f: (d, 3 * k * d, None, False),
    "proj": lambda d, k, f: (k * d, d, None, True),
    "fc1": lambda d, k, f: (d, k * f, "gelu", False),
    "fc2": lambda d, k, f: (k * f, d, None, True),
}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("gemm", list(GEMMS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
def test_linear(measure, shape, gemm, provider):
    skip_unavailable(provider)
    from threethings_fast.triton_kernels.linear import linear_ref
    cfg = shape.cfg
    kin, nout, act, has_res = GEMMS[gemm](cfg.embed_dim, cfg.num_parallel, cfg.mlp_hidden)
    m = shape.m
    x = _randn(m, kin)
    w = _randn(nout, kin, scale=kin ** -0.5)
    b = _randn(nout, scale=0.1)
    r = _randn(m, nout) if has_res else None
    ops = TorchOps()
    fn = {"reference": lambda: linear_ref(x, w, b, residual=r, activation=act),
          "compile": functools.partial(_compiled(linear_ref), x, w, b, residual=r, activation=act),
          "torch": lambda: ops.linear(x, w, b, activation=act, residual=r),
          "triton": lambda: _tk().linear(x, w, b, residual=r, activation=act)}[provider]
    moved = (m * kin + nout * kin + m * nout + (m * nout if has_res else 0)) * SIZE
    measure(fn, group=f"linear {gemm} {shape.id} M={m} N={nout} K={kin}", flops=2 * m * nout * kin, bytes=moved,
            M=m, N=nout, K=kin, activation=act, residual=has_res, provider=provider)


# --------------------------------------------------------------------------------------------------------------
# attention over K·H heads read from the packed qkv (scale folded into q)
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
def test_attention(measure, shape, provider):
    skip_unavailable(provider)
    from threethings_fast.triton_kernels.attention import attention_ref
    cfg = shape.cfg
    heads, d, n, b = cfg.num_parallel * cfg.num_heads, cfg.head_dim, shape.tokens, shape.batch
    qkv = _randn(b, n, 3 * heads * d)
    ops = TorchOps()
    fn = {"reference": lambda: attention_ref(qkv, heads, d, 1.0),
          "compile": functools.partial(_compiled(attention_ref), qkv, heads, d, 1.0),
          "torch": lambda: ops.attention(qkv, heads, d),
          "triton": lambda: _tk().attention(qkv, heads, d, 1.0)}[provider]
    measure(fn, group=f"attention {shape.id} B={b} heads={heads} N={n} d={d}", flops=4 * b * heads * n * n * d,
            bytes=4 * b * n * heads * d * SIZE, B=b, heads=heads, N=n, head_dim=d, provider=provider)


# --------------------------------------------------------------------------------------------------------------
# stem: images -> tokens with class token and positions (what precedes the first block)
# --------------------------------------------------------------------------------------------------------------
STEMS = ["linear", "hmlp_bn"]


@functools.lru_cache(maxsize=None)
def _stem_models(model: str, stem: str):
    """(reference model with one block, {backend: fused}) — only the stem and embeddings are exercised."""
    import threethings_fast as ttf
    cfg = from_name(model).replace(depth=1, stem=stem)
    ref = ttf.create_model(cfg).to(device=DEVICE, dtype=DTYPE).eval()
    fused = {"torch": ttf.convert(ref, backend="torch")}
    return ref, fused


def _reference_embed(model, images):
    x = model.patch_embed(images)
    return torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + model.pos_embed


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
def test_stem(measure, shape, stem, provider):
    skip_unavailable(provider)
    import threethings_fast as ttf
    from threethings_fast.macs import stem_macs
    ref, fused = _stem_models(shape.model, stem)
    if provider == "triton" and "triton" not in fused:
        fused["triton"] = ttf.convert(ref, backend="triton")
    cfg = ref.config
    images = _randn(shape.batch, cfg.in_chans, cfg.img_size, cfg.img_size)
    fn = {"reference": lambda: _reference_embed(ref, images),
          "compile": functools.partial(_compiled(_reference_embed), ref, images),
          "torch": lambda: fused["torch"].ops.embed(images, fused["torch"].weights),
          "triton": lambda: fused[provider].ops.embed(images, fused[provider].weights)}[provider]
    flops = 2 * shape.batch * stem_macs(cfg, count_norms=False)
    moved = images.numel() * SIZE + shape.batch * cfg.num_tokens * cfg.embed_dim * SIZE
    measure(fn, group=f"stem {stem} {shape.id} E={cfg.embed_dim}", flops=flops, bytes=moved, stem=stem,
            provider=provider)
