"""Per-op benchmarks, setup × provider: normalisation, GEMM + epilogue, attention, stem.

Setups are the shapes a folded S18x2 / B18x2 block sees at 224 px (N = 197 tokens, K = 2 branches):
CUDA: both widths at batch 1 and 64, bf16; CPU: S18x2 at batch 1, float32.
Providers (the registry's names, threethings_fast.providers, for the op each runs; skipped where the registry says
the provider cannot run):
    reference      the op's plain PyTorch reference (`<op>_ref` beside each kernel; the reference model's stem)
    compile        torch.compile of that reference (CUDA only)
    fused[torch]   the fused model's torch backend op (threethings_fast.fused.ops_torch)
    fused[triton]  the Triton kernel (threethings_fast.triton_kernels; CUDA only)
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
from threethings_fast.providers import ModelEntry, model_of, raise_recompile_limit

PROVIDERS = ["reference", pytest.param("compile", marks=pytest.mark.compile), "fused[torch]", "fused[triton]"]


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


def _compiled(fn):
    # dynamic=False compiles one graph per shape and argument set (linear_ref alone sees 4 GEMMs × 4 setups here):
    # more than dynamo keeps by default, past which it would silently time eager code
    raise_recompile_limit()
    return torch.compile(fn, dynamic=False)


def _randn(*shape, scale=1.0):
    return (torch.randn(*shape, device=DEVICE) * scale).to(DTYPE)


# --------------------------------------------------------------------------------------------------------------
# normalisation: x̂ = (x − μ) / sqrt(σ² + ε) over D, no affine (folded into the next GEMM)
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
def test_normalize(measure, shape, provider):
    skip_unavailable(provider, shape.cfg)
    if provider == "fused[torch]":
        pytest.skip("the torch backend's normalize is F.layer_norm: the reference itself")
    from threethings_fast.triton_kernels.normalize import normalize_ref  # pure torch, no kernel launch
    d = shape.cfg.embed_dim
    x = _randn(shape.m, d, scale=3.0)
    eps = shape.cfg.norm_eps
    fn = {"reference": lambda: normalize_ref(x, eps),
          "compile": functools.partial(_compiled(normalize_ref), x, eps),
          "fused[triton]": lambda: _tk().normalize(x, eps)}[provider]
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
    skip_unavailable(provider, shape.cfg)
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
          "fused[torch]": lambda: ops.linear(x, w, b, activation=act, residual=r),
          "fused[triton]": lambda: _tk().linear(x, w, b, residual=r, activation=act)}[provider]
    moved = (m * kin + nout * kin + m * nout + (m * nout if has_res else 0)) * SIZE
    measure(fn, group=f"linear {gemm} {shape.id} M={m} N={nout} K={kin}", flops=2 * m * nout * kin, bytes=moved,
            M=m, N=nout, K=kin, activation=act, residual=has_res, provider=provider)


# --------------------------------------------------------------------------------------------------------------
# attention over K·H heads read from the packed qkv (scale folded into q)
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
def test_attention(measure, shape, provider):
    skip_unavailable(provider, shape.cfg)
    from threethings_fast.triton_kernels.attention import attention_ref
    cfg = shape.cfg
    heads, d, n, b = cfg.num_parallel * cfg.num_heads, cfg.head_dim, shape.tokens, shape.batch
    qkv = _randn(b, n, 3 * heads * d)
    ops = TorchOps()
    fn = {"reference": lambda: attention_ref(qkv, heads, d, 1.0),
          "compile": functools.partial(_compiled(attention_ref), qkv, heads, d, 1.0),
          "fused[torch]": lambda: ops.attention(qkv, heads, d),
          "fused[triton]": lambda: _tk().attention(qkv, heads, d, 1.0)}[provider]
    measure(fn, group=f"attention {shape.id} B={b} heads={heads} N={n} d={d}", flops=4 * b * heads * n * n * d,
            bytes=4 * b * n * heads * d * SIZE, B=b, heads=heads, N=n, head_dim=d, provider=provider)


# --------------------------------------------------------------------------------------------------------------
# stem: images -> tokens with class token and positions (what precedes the first block)
# --------------------------------------------------------------------------------------------------------------
STEMS = ["linear", "hmlp_bn"]


@functools.lru_cache(maxsize=None)
def _stem_entry(model: str, stem: str) -> ModelEntry:
    """The model with one block: only the stem and embeddings are exercised (its fused models are built on first
    use, one per provider)."""
    import threethings_fast as ttf
    cfg = from_name(model).replace(depth=1, stem=stem)
    return ModelEntry(name=f"{model}/{stem}", config=cfg,
                      reference=ttf.create_model(cfg).to(device=DEVICE, dtype=DTYPE).eval())


def _reference_embed(model, images):
    x = model.patch_embed(images)
    return torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + model.pos_embed


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
def test_stem(measure, shape, stem, provider):
    from threethings_fast.macs import stem_macs
    entry = _stem_entry(shape.model, stem)
    ref, cfg = entry.reference, entry.config
    skip_unavailable(provider, cfg)
    images = _randn(shape.batch, cfg.in_chans, cfg.img_size, cfg.img_size)
    if provider.startswith("fused["):
        fused = model_of(entry, provider)
        fn = functools.partial(fused.ops.embed, images, fused.weights)
    else:
        fn = {"reference": lambda: _reference_embed(ref, images),
              "compile": functools.partial(_compiled(_reference_embed), ref, images)}[provider]
    flops = 2 * shape.batch * stem_macs(cfg, count_norms=False)
    moved = images.numel() * SIZE + shape.batch * cfg.num_tokens * cfg.embed_dim * SIZE
    measure(fn, group=f"stem {stem} {shape.id} E={cfg.embed_dim}", flops=flops, bytes=moved, stem=stem,
            provider=provider)
