"""Ahead-of-time compilation of every Triton kernel of threethings_fast for an H100 (sm_90), without a GPU.

Run by ``tests/test_sm90_compile.py`` in a subprocess (this file is not a test module: pytest does not collect it);
can also be run by hand:

    .venv/bin/python tests/sm90_compile_check.py [--jobs 2] [--only SUBSTRING ...] [--list]

The Triton interpreter (``TRITON_INTERPRET=1``, what the CPU test suite uses) never lowers a kernel, so it misses
whatever only the real compiler checks: ``tl.dot`` shape/dtype rules, layout and shared-memory limits, constexpr
errors, register pressure. Here each kernel variant goes through ``triton.compile`` (TTIR -> TTGIR -> LLVM -> PTX ->
cubin with Triton's bundled ptxas) for ``GPUTarget("cuda", 90, 32)``; the CUDA driver is never touched.

Output (stdout): one JSON object per line.
    {"event": "skip", "reason": ...}        the installed Triton's compile API / toolchain is not usable here
    {"event": "env", ...}                   triton version, ptxas, target
    {"event": "variant", "name": ..., "ok": bool, "error": str|None, "shared": bytes, "n_regs": int|None,
     "spill_bytes": per-thread stack bytes (register spills) or None, "wgmma": count of wgmma.mma_async in the PTX,
     "mma_sync": count of mma.sync, "gdc_wait" / "gdc_launch": counts of griddepcontrol.wait / .launch_dependents,
     "pdl": the variant's USE_PDL, "tensor_cores_expected": bool, "num_warps", "num_stages", "compile_s"}
    {"event": "done", "n": ..., "wall_s": ...}
Anything else the compiler prints (ptxas logs, PTX of a failed kernel) goes to stderr.

Written against the Triton 3.3+ AOT API (the one ``triton/tools/compile.py`` uses; checked on 3.9):
``ASTSource(fn, signature, constexprs, attrs)`` with constexprs keyed by argument name and attrs
``{(arg_index,): [["tt.divisibility", 16]]}``, ``triton.compile(src, target=GPUTarget(...), options={...})``,
``CompiledKernel.asm["ptx"/"cubin"]`` and ``.metadata.shared``. Another API -> a "skip" line, never a failure.
"""
from __future__ import annotations

import os

# Must happen before the first `import triton` (here and in the worker processes, which inherit the environment):
# under the interpreter @triton.jit functions become interpreter objects that triton.compile cannot take.
os.environ.pop("TRITON_INTERPRET", None)
# Triton 3.9 warns once per process that this default will change; pin today's default (FMA fusion on, what the
# GPU runs) so the output stays quiet. Ignored by versions that do not know the variable.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

__test__ = False  # not a test module, even if someone points pytest at it

PKG = "threethings_fast.triton_kernels"
#: H100 (sm_90): largest dynamic shared memory one block may opt into, 227 KiB.
H100_MAX_SHARED = 227 * 1024
TARGET = ("cuda", 90, 32)
API_NOTE = "written against the Triton 3.3+ ASTSource/triton.compile AOT API (checked with triton 3.9)"


# ---------------------------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Variant:
    """One compilation: a kernel, its constexprs and the runtime specialisations a real launch would see."""

    name: str
    module: str                       # submodule of PKG
    kernel: str                       # attribute name of the @triton.jit function
    consts: dict                      # constexpr arguments by name
    ptrs: dict                        # pointer arguments -> Triton type ("*bf16", "*fp32", "*i64", "*u8", ...)
    num_warps: int
    num_stages: int
    floats: tuple = ()                # fp32 scalar arguments; every other non-constexpr argument is i32
    ones: tuple = ()                  # int arguments equal to 1 at runtime: Triton specialises them to constexpr 1
    not_div16: tuple = ()             # int arguments not known to be multiples of 16 (others get tt.divisibility)
    tensor_cores: bool = False        # a 16-bit tl.dot: must lower to wgmma or mma.sync
    cost: float = 1.0                 # rough compile seconds, to start the slow ones first

    def spec(self):
        return dataclasses.asdict(self)


def _cfg(config) -> tuple[dict, int, int]:
    """(kwargs, num_warps, num_stages) of a triton.Config."""
    return dict(config.kwargs), config.num_warps, config.num_stages


def build_variants() -> list[Variant]:
    """The representative set: first config of every autotune list, each dtype / epilogue flavour that changes the
    generated code, at the shapes the models use. Reads the configs from the kernel modules so it tracks them."""
    nrm = importlib.import_module(f"{PKG}.normalize")
    lin = importlib.import_module(f"{PKG}.linear")
    att = importlib.import_module(f"{PKG}.attention")
    hms = importlib.import_module(f"{PKG}.hmlp_stem")
    pem = importlib.import_module(f"{PKG}.patch_embed")
    tok = importlib.import_module(f"{PKG}.token_linear")
    perm = importlib.import_module(f"{PKG}.permute_linear")
    out: list[Variant] = []

    # normalize: (x dtype, y dtype, D). BLOCK_D = next_power_of_2(D): 384 -> 512; 1024 and MAX_D = 8192 are large.
    # The row-statistics mode (row_stats) writes fp32 (mean, M2) pairs instead of x̂. "+pdl": programmatic dependent
    # launch (griddepcontrol only exists with USE_PDL).
    for xt, yt, d, stats, pdl in [("bf16", "bf16", 384, False, False), ("fp32", "fp32", 384, False, False),
                                  ("fp32", "bf16", 384, False, False), ("bf16", "bf16", 1024, False, False),
                                  ("fp32", "fp32", 1024, False, False), ("bf16", "bf16", nrm.MAX_D, False, False),
                                  ("bf16", "fp32", 384, True, False), ("bf16", "bf16", 384, False, True),
                                  ("bf16", "fp32", 384, True, True)]:
        bm, bd, warps = nrm._normalize_meta(d)
        out.append(Variant(
            name=f"normalize/{xt}->{'stats' if stats else yt}/D{d}/BLOCK_D{bd}{'+pdl' if pdl else ''}",
            module="normalize", kernel="_normalize_kernel", consts=dict(BLOCK_M=bm, BLOCK_D=bd, STATS=stats,
                                                                        USE_PDL=pdl),
            ptrs=dict(x_ptr=f"*{xt}", y_ptr=f"*{yt}"),
            num_warps=warps, num_stages=3, floats=("eps",), not_div16=("M", "D"), cost=1.5))

    # normalize_tokens (the feed-forward-only model's LayerNorm over tokens): N = 197 tokens -> BLOCK_N 256.
    for xt in ("bf16", "fp32"):
        out.append(Variant(
            name=f"normalize_tokens/{xt}/N197/BLOCK_N256xBLOCK_D32", module="normalize",
            kernel="_normalize_tokens_kernel", consts=dict(BLOCK_N=256, BLOCK_D=32),
            ptrs=dict(x_ptr=f"*{xt}", y_ptr=f"*{xt}"), num_warps=8, num_stages=1, floats=("eps",),
            not_div16=("N", "D", "stride_xn"), cost=1.0))

    # linear: first config of each autotune list (16-bit) and the fp32 IEEE meta, every epilogue, including the
    # norm="fused" ones: the normalising epilogue of QKV / fc1 (row statistics of an S-width stream, D = 384: 12
    # slots of 32) and the residual GEMM that writes its output's statistics.
    epilogues = [("bias+gelu", True, False, 1, False, False), ("bias+residual", True, True, 0, False, False),
                 ("nobias", False, False, 0, False, False), ("norm+bias", True, False, 0, True, False),
                 ("norm+bias+gelu", True, False, 1, True, False), ("bias+residual+stats", True, True, 0, False, True)]
    t_in = -(-384 // lin.STAT_W)
    lin_cfgs = [("large", *_cfg(lin._CONFIGS_LARGE_M[0]), ("bf16", "fp16")),
                ("small", *_cfg(lin._CONFIGS_SMALL_M[0]), ("bf16", "fp16"))]
    fp32_meta = dict(lin._FP32_META)
    fp32_warps, fp32_stages = fp32_meta.pop("num_warps"), fp32_meta.pop("num_stages")
    lin_cfgs.append(("fp32meta", fp32_meta, fp32_warps, fp32_stages, ("fp32",)))
    for tag, meta, warps, stages, dtypes in lin_cfgs:
        for dt in dtypes:
            for epi, has_bias, has_res, act, norm_in, stats_out in epilogues:
                tile = "x".join(str(meta[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                p = f"*{dt}"
                out.append(Variant(
                    name=f"linear/{dt}/{tag}:{tile}w{warps}s{stages}/{epi}", module="linear", kernel="_linear_kernel",
                    consts=dict(meta, HAS_BIAS=has_bias, HAS_RESIDUAL=has_res, ACTIVATION=act,
                                INPUT_PRECISION="ieee", NORM_IN=norm_in, W_IN=lin.STAT_W if norm_in else 1,
                                T_IN=t_in if norm_in else 1, T_IN_PAD=16 if norm_in else 2, STATS_OUT=stats_out,
                                STAT_W=lin.STAT_W, USE_PDL=False, PREFETCH_W=False),
                    ptrs=dict(x_ptr=p, w_ptr=p, b_ptr=p, r_ptr=p, y_ptr=p, s_ptr="*fp32", c_ptr="*fp32",
                              so_ptr="*fp32"),
                    num_warps=warps, num_stages=stages, floats=("eps",),
                    not_div16=("M", "EPILOGUE", "MBUCKET"), tensor_cores=dt != "fp32",
                    cost={"large": 6.0, "small": 4.0, "fp32meta": 4.0}[tag]))

    # linear, shape-aware and split-K: the first config for N = 384 at batch 64 (config_order drops the 256-wide
    # tile: 128x128) with the residual epilogues of proj / fc2; the split-K main kernel with the reference tiles of
    # batch 1 (small list) and batch 4-8 (narrow large list) and the fp32 meta; the reduction kernel (no tl.dot) with
    # every epilogue at 10 splits (fc2 at batch 1) and 3; one programmatic-dependent-launch variant of each kernel
    # (griddepcontrol and the L2 prefetch of W only exist with USE_PDL / PREFETCH_W).
    def lin_meta(config):
        meta, warps, stages = _cfg(config)
        return meta, warps, stages, "x".join(str(meta[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))

    kind, order = lin.config_order(64 * 197, 384)
    narrow = lin._CONFIG_LISTS[kind][order[0]]
    meta, warps, stages, tile = lin_meta(narrow)
    for dt, epi_name, pdl in [("bf16", "bias+residual", False), ("bf16", "bias+residual+stats", False),
                              ("fp16", "bias+residual", False), ("fp16", "bias+residual+stats", False),
                              ("bf16", "bias+residual", True)]:
        _, has_bias, has_res, act, norm_in, stats_out = next(e for e in epilogues if e[0] == epi_name)
        p = f"*{dt}"
        out.append(Variant(
            name=f"linear/{dt}/narrow-N:{tile}w{warps}s{stages}/{epi_name}{'+pdl' if pdl else ''}", module="linear",
            kernel="_linear_kernel",
            consts=dict(meta, HAS_BIAS=has_bias, HAS_RESIDUAL=has_res, ACTIVATION=act, INPUT_PRECISION="ieee",
                        NORM_IN=norm_in, W_IN=1, T_IN=1, T_IN_PAD=2, STATS_OUT=stats_out, STAT_W=lin.STAT_W,
                        USE_PDL=pdl, PREFETCH_W=pdl),
            ptrs=dict(x_ptr=p, w_ptr=p, b_ptr=p, r_ptr=p, y_ptr=p, s_ptr="*fp32", c_ptr="*fp32", so_ptr="*fp32"),
            num_warps=warps, num_stages=stages, floats=("eps",), not_div16=("M", "EPILOGUE", "MBUCKET"),
            tensor_cores=True, cost=5.0))

    split_cfgs = [("small", *lin_meta(lin._CONFIGS_SMALL_M[lin.config_order(197, 384)[1][0]]), ("bf16", "fp16")),
                  ("narrow-N", meta, warps, stages, tile, ("bf16", "fp16"))]
    fp32_meta = dict(lin._FP32_META)
    fp32_warps, fp32_stages = fp32_meta.pop("num_warps"), fp32_meta.pop("num_stages")
    split_cfgs.append(("fp32meta", fp32_meta, fp32_warps, fp32_stages,
                       "x".join(str(fp32_meta[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")), ("fp32",)))
    for tag, meta_, warps_, stages_, tile_, dtypes in split_cfgs:
        for dt in dtypes:
            for pdl in (False, True) if (tag, dt) == ("small", "bf16") else (False,):
                out.append(Variant(
                    name=f"linear-splitk/{dt}/{tag}:{tile_}w{warps_}s{stages_}{'/pdl' if pdl else ''}",
                    module="linear", kernel="_linear_splitk_kernel",
                    consts=dict(meta_, INPUT_PRECISION="ieee", USE_PDL=pdl, PREFETCH_W=pdl),
                    ptrs=dict(x_ptr=f"*{dt}", w_ptr=f"*{dt}", ws_ptr="*fp32"),
                    num_warps=warps_, num_stages=stages_, not_div16=("M", "MBUCKET", "SPLIT_K"),
                    tensor_cores=dt != "fp32", cost=4.0))

    rmeta = dict(lin._REDUCE_META)
    r_warps, r_stages = rmeta.pop("num_warps"), rmeta.pop("num_stages")
    reduce_cases = [("bf16", e, 10, False) for e in epilogues] + [("fp16", epilogues[5], 3, False),
                                                                 ("bf16", epilogues[5], 3, True)]
    for dt, (epi, has_bias, has_res, act, norm_in, stats_out), split, pdl in reduce_cases:
        p = f"*{dt}"
        out.append(Variant(
            name=(f"linear-reduce/{dt}/{rmeta['BLOCK_M']}x{rmeta['BLOCK_N']}w{r_warps}/split{split}/{epi}"
                  f"{'+pdl' if pdl else ''}"),
            module="linear", kernel="_linear_reduce_kernel",
            consts=dict(rmeta, SPLIT_K=split, HAS_BIAS=has_bias, HAS_RESIDUAL=has_res, ACTIVATION=act,
                        NORM_IN=norm_in, W_IN=lin.STAT_W if norm_in else 1, T_IN=t_in if norm_in else 1,
                        T_IN_PAD=16 if norm_in else 2, STATS_OUT=stats_out, STAT_W=lin.STAT_W, USE_PDL=pdl),
            ptrs=dict(ws_ptr="*fp32", b_ptr=p, r_ptr=p, y_ptr=p, s_ptr="*fp32", c_ptr="*fp32", so_ptr="*fp32"),
            num_warps=r_warps, num_stages=r_stages, floats=("eps",), not_div16=("M",), cost=1.5))

    # attention (batch 64 x 12 heads): the first config of the list for N = 197 (128x64, a 16-key tail block loaded
    # before the key loop) in bf16 at head dims 64, 80 (padded to D_PAD 128) and 128, fp16 at 64, bf16 with PDL; the
    # other key-block modes at 64: no tail (N = 256) and the tail as the loop's last, masked iteration (N = 50: 64x64;
    # N = 197: 128x128); the widest tails held through the loop at d = 128, where they cost the most registers
    # (N = 785: 32 keys with 64-key blocks, 8 and 4 warps; N = 305: 64 keys with 128-key blocks); the fp32 accuracy
    # path (_FP32_META, IEEE dots on CUDA cores) at 64 with N = 197's tail.
    def att_cfg(n, d, bm=None, bn=None, warps=None):
        """(meta, num_warps, num_stages) of the first config for (n, d) matching the given tile fields."""
        cfgs = att.attention_configs(n, d, att._work_bucket(64, 12))
        cfg = next(c for c in cfgs if (bm is None or c.kwargs["BLOCK_M"] == bm)
                   and (bn is None or c.kwargs["BLOCK_N"] == bn) and (warps is None or c.num_warps == warps))
        return _cfg(cfg)

    fp32_meta = dict(att._FP32_META)
    fp32_warps, fp32_stages = fp32_meta.pop("num_warps"), fp32_meta.pop("num_stages")
    fp32_meta["TAIL_N"] = att.tail_block(197, fp32_meta["BLOCK_N"])
    for dt, d, n, (meta_, warps_, stages_), pdl in [
            ("bf16", 64, 197, att_cfg(197, 64), False), ("bf16", 80, 197, att_cfg(197, 80), False),
            ("bf16", 128, 197, att_cfg(197, 128), False), ("fp16", 64, 197, att_cfg(197, 64), False),
            ("bf16", 64, 197, att_cfg(197, 64), True), ("bf16", 64, 256, att_cfg(256, 64), False),
            ("bf16", 64, 50, att_cfg(50, 64), False), ("bf16", 64, 197, att_cfg(197, 64, bn=128), False),
            ("bf16", 128, 785, att_cfg(785, 128, bm=128, bn=64, warps=8), False),
            ("bf16", 128, 785, att_cfg(785, 128, bm=128, bn=64, warps=4), False),
            ("bf16", 128, 305, att_cfg(305, 128, bn=128), False),
            ("fp32", 64, 197, (fp32_meta, fp32_warps, fp32_stages), False)]:
        tile = f"{meta_['BLOCK_M']}x{meta_['BLOCK_N']}t{meta_['TAIL_N']}w{warps_}s{stages_}"
        out.append(Variant(
            name=f"attention/{dt}/d{d}/N{n}/{tile}{'+pdl' if pdl else ''}", module="attention",
            kernel="_attention_kernel",
            consts=dict(meta_, HEAD_DIM=d, D_PAD=1 << (d - 1).bit_length(), INPUT_PRECISION="ieee", USE_PDL=pdl),
            ptrs=dict(qkv_ptr=f"*{dt}", o_ptr=f"*{dt}"), num_warps=warps_, num_stages=stages_, floats=("qk_scale",),
            not_div16=("N", "H", "WORK_BUCKET"), tensor_cores=dt != "fp32", cost=3.0 if d == 64 else 5.0))

    # hmlp_stem: ViT-B (E = 768); fp32 images, bf16 weights and tokens, position embedding and class token (the model
    # path). BN and LN with every config of both autotune lists (a config in both lists once; LN at E = 768 > BLOCK_E
    # takes the two-pass LN branch), so a spill or shared-memory regression of any of them shows up here; LN with
    # BEiT masking (row gather, mask-token rows) on the first config of the large-batch list, LN with MAE masking
    # (row gather) and BN with programmatic dependent launch on that of the small-batch list; the fp32 accuracy path
    # (_FP32_META).
    E = 768
    c4 = E // 4
    c4a, c4b = hms.split_hidden(c4)
    hm_ptrs = {n: "*fp32" for n in ("img_ptr", "b1_ptr", "b2_ptr", "b3_ptr", "lnw_ptr", "lnb_ptr", "ln3w_ptr",
                                    "ln3b_ptr", "w3m_ptr", "pos_ptr", "cls_ptr", "mtok_ptr")}
    def hm_ptrs_for(dt):
        return dict(hm_ptrs, w1_ptr=f"*{dt}", w2_ptr=f"*{dt}", w3_ptr=f"*{dt}", idx_ptr="*i64", mask_ptr="*u8",
                    out_ptr=f"*{dt}")

    hm_cfgs: dict = {}  # (meta, warps, stages) -> list tags ("large0", "small1", ...), in list order
    for lst, configs in (("large", hms._CONFIGS_LARGE), ("small", hms._CONFIGS_SMALL)):
        for i, c in enumerate(configs):
            meta, warps, stages = _cfg(c)
            hm_cfgs.setdefault((tuple(sorted(meta.items())), warps, stages), []).append(f"{lst}{i}")
    fp32_meta = dict(hms._FP32_META)
    fp32_run = (fp32_meta.pop("num_warps"), fp32_meta.pop("num_stages"))
    hm_runs = []  # (norm, masking, pdl, tags, meta, warps, stages, dt)
    for (items, warps, stages), tags in hm_cfgs.items():
        meta = dict(items)
        for norm in ("bn", "ln"):
            hm_runs.append((norm, "", False, tags, meta, warps, stages, "bf16"))
        if "large0" in tags:
            hm_runs.append(("ln", "beit", False, tags, meta, warps, stages, "bf16"))
        if "small0" in tags:
            hm_runs.append(("ln", "mae", False, tags, meta, warps, stages, "bf16"))
            hm_runs.append(("bn", "", True, tags, meta, warps, stages, "bf16"))
    hm_runs.append(("bn", "", False, ["fp32meta"], fp32_meta, *fp32_run, "fp32"))  # the accuracy path: must fit
    for norm, masking, pdl, tags, meta, warps, stages, dt in hm_runs:
        idx = masking != ""
        beit = masking == "beit"
        out.append(Variant(
            name=(f"hmlp_stem/{norm}{'+' + masking if masking else ''}{'+pdl' if pdl else ''}/{dt}/E{E}/"
                  f"{','.join(tags)}:P{meta['BLOCK_P']}xE{meta['BLOCK_E']}w{warps}"),
            module="hmlp_stem", kernel="_hmlp_stem_kernel",
            consts=dict(meta, C_IN=3, E=E, C4=c4, C4A=c4a, C4B=c4b, K1P=64, IS_LN=norm == "ln", HAS_POS=True,
                        HAS_CLS=True, HAS_IDX=idx, BEIT=beit, DOT_PREC="ieee", USE_PDL=pdl),
            ptrs=hm_ptrs_for(dt), num_warps=warps, num_stages=stages, floats=("b3_mean", "eps"),
            ones=("s_iw", "s_pe") + (("s_xs",) if idx else ()) + (("s_mn",) if beit else ()),
            not_div16=("R", "S", "N", "WP") + (("s_xb",) if idx else ()) + (("s_mb",) if beit else ()),
            tensor_cores=dt != "fp32",
            cost=(60.0 if dt == "fp32" else 20.0 + 0.3 * meta["BLOCK_P"] + (10.0 if norm == "ln" else 0.0))))

    # patch_embed: ViT-B/16 (E = 768, K = 3·16·16): the first 16-bit config (fp32 images, bf16 weight and tokens),
    # the fp32 accuracy path's config, and the first config with programmatic dependent launch.
    pe_fp32 = dict(pem._FP32_META)
    pe_fp32_run = (pe_fp32.pop("num_warps"), pe_fp32.pop("num_stages"))
    for dt, (meta, warps, stages), pdl in [("bf16", _cfg(pem._CONFIGS[0]), False),
                                           ("fp32", (pe_fp32, *pe_fp32_run), False),
                                           ("bf16", _cfg(pem._CONFIGS[0]), True)]:
        pe_ptrs = {n: "*fp32" for n in ("img_ptr", "b_ptr", "pos_ptr", "cls_ptr", "mtok_ptr")}
        pe_ptrs.update(w_ptr=f"*{dt}", idx_ptr="*i64", mask_ptr="*u8", out_ptr=f"*{dt}")
        out.append(Variant(
            name=(f"patch_embed/{dt}/E{E}/{meta['BLOCK_P']}x{meta['BLOCK_E']}x{meta['BLOCK_K']}w{warps}s{stages}"
                  f"{'+pdl' if pdl else ''}"),
            module="patch_embed", kernel="_patch_embed_kernel",
            consts=dict(meta, PATCH=16, E=E, K=3 * 16 * 16, HAS_BIAS=True, HAS_POS=True, HAS_CLS=True, HAS_IDX=False,
                        BEIT=False, DOT_PREC="ieee", USE_PDL=pdl),
            ptrs=pe_ptrs, num_warps=warps, num_stages=stages, ones=("s_iw", "s_wk", "s_pe"),
            not_div16=("R", "S", "N", "WP"), tensor_cores=dt != "fp32", cost=6.0))

    # token_linear: the MLP families' token GEMM at Mixer-B/16's sizes (N = 196 tokens, D = 768), each epilogue that
    # changes the code: Mixer's fc1 (scale + shift + GELU), its fc2 (bias + residual), gMLP's gate, and fp32 IEEE.
    for dt, epi, flags in [("bf16", "scale+shift+gelu", dict(HAS_SCALE=True, HAS_SHIFT=True, ACTIVATION=1)),
                           ("bf16", "bias+residual", dict(HAS_BIAS=True, HAS_RESIDUAL=True)),
                           ("fp16", "scale+shift+gate", dict(HAS_SCALE=True, HAS_SHIFT=True, HAS_GATE=True)),
                           ("fp32", "scale+shift+gelu", dict(HAS_SCALE=True, HAS_SHIFT=True, ACTIVATION=1)),
                           # gMLP-S's gate (D = 768 in 24 statistics slots of 32), normalised in the main loop
                           ("bf16", "norm+scale+shift+gate", dict(HAS_SCALE=True, HAS_SHIFT=True, HAS_GATE=True,
                                                                  NORM_IN=True, **tok.stats_meta(32, 768))),
                           ("fp32", "norm+scale+shift+gelu", dict(HAS_SCALE=True, HAS_SHIFT=True, ACTIVATION=1,
                                                                  NORM_IN=True, **tok.stats_meta(32, 768)))]:
        tok_meta = tok._meta(196, 768, fp32_norm=dt == "fp32" and flags.get("NORM_IN", False))
        tok_warps, tok_stages = tok_meta.pop("num_warps"), tok_meta.pop("num_stages")
        consts = dict(HAS_BIAS=False, HAS_SCALE=False, HAS_SHIFT=False, ACTIVATION=0, HAS_GATE=False,
                      HAS_RESIDUAL=False, DOT_PREC="ieee", NORM_IN=False, **tok.stats_meta(0, 768), **tok_meta)
        consts.update(flags)
        tok_ptrs = {n: f"*{dt}" for n in ("w_ptr", "x_ptr", "g_ptr", "r_ptr", "y_ptr")}
        tok_ptrs.update(b_ptr="*fp32", s_ptr="*fp32", t_ptr="*fp32", st_ptr="*fp32")
        out.append(Variant(
            name=f"token_linear/{dt}/{tok_meta['BLOCK_M']}x{tok_meta['BLOCK_D']}x{tok_meta['BLOCK_K']}/{epi}",
            module="token_linear", kernel="_token_linear_kernel", consts=consts, ptrs=tok_ptrs,
            num_warps=tok_warps, num_stages=tok_stages, floats=("eps",),
            not_div16=("M", "N", "D", "stride_wm", "stride_xn"),
            tensor_cores=dt != "fp32", cost=4.0))

    # permute_projections: ViP's height / width / channel projections in one grouped launch, at ViP-S/7 stage 1
    # (H = W = 32, C = 192, K = 32 segments of S = 6) with biases, batch 64 and batch 1 (B = 1 is specialised to a
    # constant), fp16, fp32 IEEE; and S = 1 (also specialised: the channel problem's outer stride becomes constexpr).
    perm_meta = perm._meta(192)
    perm_warps, perm_stages = perm_meta.pop("num_warps"), perm_meta.pop("num_stages")
    for dt, tag, ones, has_bias in [("bf16", "S6/B64", (), True), ("bf16", "S6/B1", ("B",), True),
                                    ("fp16", "S6/B64/nobias", (), False), ("fp32", "S6/B64", (), True),
                                    ("bf16", "S1/B64", ("S",), True)]:
        perm_ptrs = {n: f"*{dt}" for n in ("x_ptr", "wh_ptr", "ww_ptr", "wc_ptr", "y_ptr", "bh_ptr", "bw_ptr",
                                           "bc_ptr")}
        out.append(Variant(
            name=(f"permute_projections/{dt}/{perm_meta['BLOCK_M']}x{perm_meta['BLOCK_N']}x{perm_meta['BLOCK_K']}"
                  f"/{tag}"),
            module="permute_linear", kernel="_permute_projections_kernel",
            consts=dict(HAS_BIAS=has_bias, DOT_PREC="ieee", **perm_meta), ptrs=perm_ptrs,
            num_warps=perm_warps, num_stages=perm_stages, ones=ones,
            not_div16=tuple(n for n in ("B", "H", "W", "C", "S", "K") if n not in ones),
            tensor_cores=dt != "fp32", cost=4.0))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Compilation
# ---------------------------------------------------------------------------------------------------------------
def _signature(fn, consts: dict, ptrs: dict, floats=(), ones=(), not_div16=()):
    """(signature, constexprs, attrs) for ASTSource, as triton/tools/compile.py builds them."""
    names = list(fn.arg_names)
    unknown = (set(consts) | set(ptrs) | set(floats) | set(ones) | set(not_div16)) - set(names)
    if unknown:
        raise ValueError(f"{fn.__name__} has no argument(s) {sorted(unknown)}; arguments: {names}")
    consts = dict(consts, **{n: 1 for n in ones})
    unset = [n for n, p in zip(names, fn.params) if p.is_constexpr and n not in consts]
    if unset:
        raise ValueError(f"{fn.__name__}: constexpr argument(s) {unset} need a value in the variant's consts")
    sig, attrs = {}, {}
    for i, n in enumerate(names):
        if n in consts:
            sig[n] = "constexpr"
        elif n in ptrs:
            sig[n] = ptrs[n]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif n in floats:
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
            if n not in not_div16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    missing = [n for n in names if n not in sig]
    assert not missing, missing
    return sig, consts, attrs


def compile_kernel(fn, consts, ptrs, num_warps, num_stages, floats=(), ones=(), not_div16=()):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, constexprs, attrs = _signature(fn, consts, ptrs, floats, ones, not_div16)
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget(*TARGET), options={"num_warps": num_warps, "num_stages": num_stages})


def _nvidia_bin(tool: str):
    """Path of a tool Triton bundles (ptxas, cuobjdump), or None."""
    import triton
    if tool == "ptxas":
        try:  # Triton's own choice (3.9: ptxas-blackwell for sm_90+, honours TRITON_PTXAS_PATH)
            from triton.backends.nvidia.compiler import get_ptxas
            try:
                path = get_ptxas(TARGET[1]).path
            except TypeError:
                path = get_ptxas().path
            if path and os.path.isfile(path):
                return path
        except Exception:  # noqa: BLE001 - older/newer layouts: fall back to the bundled binaries
            pass
    env = os.environ.get(f"TRITON_{tool.upper()}_PATH")
    if env and os.path.isfile(env):
        return env
    base = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for name in (tool, f"{tool}-blackwell"):
        path = os.path.join(base, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def resource_usage(cubin: bytes):
    """(registers per thread, stack + local bytes per thread, i.e. register spills) from cuobjdump, or (None, None)."""
    tool = _nvidia_bin("cuobjdump")
    if tool is None or not cubin:
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            txt = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                                 timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            return None, None
    m = re.search(r"REG:(\d+).*?STACK:(\d+).*?LOCAL:(\d+)", txt)
    if not m:
        return None, None
    # STACK is the per-thread stack frame, which for these kernels (no local arrays, no calls) is ptxas' register
    # spill area; LOCAL is static local memory (0 here).
    return int(m.group(1)), int(m.group(2)) + int(m.group(3))


def run_variant(spec: dict) -> dict:
    """Compile one variant (in a worker process); never raises: failures come back as ok=False with the error."""
    res = {"event": "variant", "name": spec["name"], "kernel": spec["kernel"], "ok": False, "error": None,
           "shared": None, "n_regs": None, "spill_bytes": None, "wgmma": 0, "mma_sync": 0,
           "tensor_cores_expected": spec["tensor_cores"], "num_warps": spec["num_warps"],
           "num_stages": spec["num_stages"], "compile_s": None}
    t0 = time.time()
    try:
        fn = getattr(importlib.import_module(f"{PKG}.{spec['module']}"), spec["kernel"])
        k = compile_kernel(fn, spec["consts"], spec["ptrs"], spec["num_warps"], spec["num_stages"],
                           spec["floats"], spec["ones"], spec["not_div16"])
        ptx = k.asm["ptx"]
        res["shared"] = int(k.metadata.shared)
        res["wgmma"] = len(re.findall(r"wgmma\.mma_async", ptx))
        res["mma_sync"] = len(re.findall(r"\bmma\.sync", ptx))
        res["gdc_wait"] = ptx.count("griddepcontrol.wait")
        res["gdc_launch"] = ptx.count("griddepcontrol.launch_dependents")
        res["pdl"] = bool(spec["consts"].get("USE_PDL"))
        res["n_regs"], res["spill_bytes"] = resource_usage(k.asm.get("cubin", b""))
        res["ok"] = True
    except Exception as exc:  # noqa: BLE001 - report every compiler error as data
        msg = f"{type(exc).__name__}: {exc}"
        res["error"] = msg if len(msg) < 6000 else msg[:3000] + "\n[...]\n" + msg[-3000:]
        print(f"[{spec['name']}] compile failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
    res["compile_s"] = round(time.time() - t0, 2)
    return res


# ---------------------------------------------------------------------------------------------------------------
# API probe
# ---------------------------------------------------------------------------------------------------------------
# A tiny kernel with everything the real variants use: pointer/int/float/constexpr arguments, a divisibility
# attribute, a 16-bit tl.dot. If *this* fails to compile, the API (not the package's kernels) is the problem.
# Module level: @triton.jit resolves `tl` through the function's globals.
_IMPORT_ERROR = None
try:
    import triton
    import triton.language as tl

    @triton.jit
    def _probe_kernel(a_ptr, c_ptr, n, scale, BLOCK: tl.constexpr, FLAG: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        a = tl.load(a_ptr + offs[:, None] * BLOCK + offs[None, :])
        c = tl.dot(a, a) * scale
        if FLAG:
            c = c + n
        tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], c)
except Exception as _exc:  # noqa: BLE001 - reported as a skip by api_problem()
    _IMPORT_ERROR = _exc


def api_problem():
    """None when this Triton has the AOT API and toolchain this script uses, else the reason (-> skip)."""
    if _IMPORT_ERROR is not None:
        exc = _IMPORT_ERROR
        return f"triton cannot be imported ({type(exc).__name__}: {exc})"
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except Exception as exc:  # noqa: BLE001
        return f"triton's AOT compiler API cannot be imported ({type(exc).__name__}: {exc}); {API_NOTE}"
    ver = getattr(triton, "__version__", "?")
    params = list(inspect.signature(ASTSource.__init__).parameters)
    if params[:5] != ["self", "fn", "signature", "constexprs", "attrs"]:
        return f"triton {ver}: ASTSource{tuple(params[1:])} differs from (fn, signature, constexprs, attrs); {API_NOTE}"
    cparams = inspect.signature(triton.compile).parameters
    if not {"src", "target", "options"} <= set(cparams):
        return f"triton {ver}: triton.compile{tuple(cparams)} lacks (src, target, options); {API_NOTE}"
    if _nvidia_bin("ptxas") is None:
        return f"triton {ver}: its bundled ptxas is missing (set TRITON_PTXAS_PATH to compile for sm_90)"
    try:
        GPUTarget(*TARGET)
    except Exception as exc:  # noqa: BLE001
        return f"triton {ver}: GPUTarget{TARGET} failed ({type(exc).__name__}: {exc}); {API_NOTE}"

    try:
        k = compile_kernel(_probe_kernel, dict(BLOCK=16, FLAG=True), dict(a_ptr="*bf16", c_ptr="*fp32"), 4, 1,
                           floats=("scale",))
        if not (isinstance(k.asm.get("ptx"), str) and k.asm.get("cubin")):
            return f"triton {ver}: CompiledKernel.asm has no ptx/cubin ({sorted(k.asm)}); {API_NOTE}"
        int(k.metadata.shared)
    except Exception as exc:  # noqa: BLE001
        return (f"triton {ver}: compiling a probe kernel through ASTSource/triton.compile failed "
                f"({type(exc).__name__}: {str(exc)[:500]}); {API_NOTE}")
    return None


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------
def _worker_init():
    # The compiler prints the PTX of a kernel ptxas rejects (and, on request, ptxas logs) on stdout: keep the JSON
    # channel clean by sending the worker's stdout to stderr.
    os.dup2(2, 1)
    try:  # import torch and the kernel modules now, so compile_s measures compilation only
        for mod in ("normalize", "linear", "attention", "hmlp_stem", "patch_embed", "token_linear",
                    "permute_linear"):
            importlib.import_module(f"{PKG}.{mod}")
    except Exception:  # noqa: BLE001 - run_variant reports the import error per variant
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", "-j", type=int, default=min(2, os.cpu_count() or 1),
                    help="parallel compile processes (default: min(2, cores))")
    ap.add_argument("--only", action="append", default=[], help="keep variants whose name contains this")
    ap.add_argument("--list", action="store_true", help="print the variant names and exit")
    args = ap.parse_args(argv)

    # JSON goes to the real stdout; anything printed by the compiler in this process goes to stderr.
    json_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(obj):
        json_out.write(json.dumps(obj) + "\n")
        json_out.flush()

    t0 = time.time()
    if _IMPORT_ERROR is not None:  # before build_variants, which imports the kernel modules (they need triton)
        emit({"event": "skip", "reason": api_problem()})
        return 0
    variants = build_variants()
    if args.only:
        variants = [v for v in variants if any(s in v.name for s in args.only)]
    if args.list:
        for v in variants:
            emit({"event": "list", "name": v.name})
        return 0

    reason = api_problem()
    if reason:
        emit({"event": "skip", "reason": reason})
        return 0
    import triton
    emit({"event": "env", "triton": triton.__version__, "ptxas": _nvidia_bin("ptxas"), "target": list(TARGET),
          "max_shared": H100_MAX_SHARED, "jobs": args.jobs, "n": len(variants)})

    specs = [v.spec() for v in sorted(variants, key=lambda v: -v.cost)]  # longest first: better packing
    if args.jobs <= 1:
        for s in specs:
            emit(run_variant(s))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        # spawn, not fork: the parent has imported torch (threads) and triton (MLIR); a fresh interpreter is safe.
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn"),
                                 initializer=_worker_init) as pool:
            futs = {pool.submit(run_variant, s): s for s in specs}
            for f in as_completed(futs):
                try:
                    emit(f.result())
                except Exception as exc:  # noqa: BLE001 - a worker died (crash in the compiler, killed for memory)
                    s = futs[f]
                    emit({"event": "variant", "name": s["name"], "kernel": s["kernel"], "ok": False,
                          "error": f"compile worker failed: {type(exc).__name__}: {exc}", "shared": None,
                          "n_regs": None, "spill_bytes": None, "wgmma": 0, "mma_sync": 0,
                          "tensor_cores_expected": s["tensor_cores"], "num_warps": s["num_warps"],
                          "num_stages": s["num_stages"], "compile_s": None})
    emit({"event": "done", "n": len(specs), "wall_s": round(time.time() - t0, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
