"""Property-based equivalence: random architectures, not hand-picked ones. Every backend must equal the float64
reference on whatever a config can describe — or refuse it clearly.

Drawn: K 1-4 branches, 1-3 heads of head_dim 8-32, depth 1-3, the three stems, patch sizes from 2 to 16 with grids
of 1x1 to 4x4 patches (N from 1 patch up, odd grids), LayerScale on/off, qkv bias on/off, 0 / 1 / odd class
counts, 1 or 3 input channels, the token variants (class token, registers, distillation token, no_embed_class),
norm_pre, token / average pooling with fc_norm or the norm before the pool, no final norm, batch 1-5, and weights
with norm and LayerScale gains far from their init. Fixed seed; failing examples are kept in tests/hypothesis_db
(replayed first on every run).
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

import threethings_fast as ttf
from helpers import assert_within_bound, count_example, images_for, randomize, rel_err

DB = DirectoryBasedExampleDatabase(os.path.join(os.path.dirname(__file__), "hypothesis_db"))
SEED = 20261201


def budget(n: int) -> int:
    """Examples per property; TTF_PROPERTY_SCALE multiplies them (e.g. 10 for a long local search)."""
    return max(1, int(n * float(os.environ.get("TTF_PROPERTY_SCALE", "1"))))


def common_settings(n):
    return settings(max_examples=budget(n), deadline=None, database=DB, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def configs(draw, stems=("linear", "hmlp_bn", "hmlp_ln"), head_dims=(8, 16, 24, 32), max_k=4, max_depth=3,
            max_grid=4):
    stem = draw(st.sampled_from(stems))
    heads = draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from(head_dims))
    if stem == "linear":
        patch = draw(st.sampled_from([2, 4, 5, 8]))
        grid = draw(st.integers(1, max_grid))
    else:
        patch, grid = 16, draw(st.integers(1, min(3, max_grid)))
    class_token = draw(st.booleans())
    pool = "token" if class_token and draw(st.booleans()) else "avg"
    distilled = class_token and pool == "token" and draw(st.booleans())
    final_norm = draw(st.booleans())
    fc_norm = draw(st.sampled_from([None, False, True])) if not distilled else False
    return ttf.ViTConfig(
        img_size=patch * grid, patch_size=patch, in_chans=draw(st.sampled_from([1, 3])),
        num_classes=draw(st.sampled_from([0, 1, 3, 7])), embed_dim=heads * head_dim,
        depth=draw(st.integers(1, max_depth)), num_heads=heads, mlp_ratio=draw(st.sampled_from([1.0, 2.0, 3.0])),
        num_parallel=draw(st.integers(1, max_k)), init_values=draw(st.sampled_from([None, 1e-5])),
        qkv_bias=draw(st.booleans()), stem=stem, class_token=class_token, distilled=distilled,
        reg_tokens=0 if distilled else draw(st.integers(0, 2)), no_embed_class=draw(st.booleans()),
        pre_norm=draw(st.booleans()), global_pool=pool, fc_norm=fc_norm, final_norm=final_norm,
        patch_bias=stem != "linear" or draw(st.booleans()))


def build(cfg, dtype=torch.float64):
    torch.manual_seed(0)
    model = randomize(ttf.create_model(cfg)).to(dtype).eval()
    with torch.no_grad():
        for token in model.prefix_parameters():
            token.mul_(50)
    return model


@seed(SEED)
@common_settings(200)
@given(cfg=configs(), batch=st.integers(1, 5))
def test_torch_backend_equals_reference(cfg, batch):
    count_example("torch backend == reference (float64)")
    model = build(cfg)
    x = images_for(model, batch)
    assert rel_err(ttf.convert(model, backend="torch")(x), model(x)) <= 1e-10


@pytest.mark.engine
@seed(SEED)
@common_settings(100)
@given(cfg=configs(), batch=st.integers(1, 5))
def test_engine_cpu_equals_reference(cfg, batch):
    count_example("C++ engine (CPU) == reference (float64)")
    model = build(cfg)
    x = images_for(model, batch)
    assert rel_err(ttf.convert(model, backend="cuda")(x), model(x)) <= 1e-10


@pytest.mark.engine
@seed(SEED)
@common_settings(150)
@given(cfg=configs(head_dims=(8, 20, 24, 32, 40, 64, 80, 96, 100, 128), max_k=3, max_depth=1),
       dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]))
def test_engine_cuda_envelope_is_exactly_the_kernels(cfg, dtype):
    """The CUDA engine refuses exactly what its kernels cannot run (checked without a GPU)."""
    count_example("C++ engine CUDA envelope")
    from threethings_fast.extension import load_engine
    from threethings_fast.fused.ops_engine import EngineOps
    load_engine()
    problem = EngineOps.config_problem(cfg, dtype)
    expected_ok = (dtype != torch.float32 and cfg.head_dim in (32, 64, 80, 96, 128) and cfg.embed_dim % 8 == 0
                   and (cfg.num_parallel * cfg.mlp_hidden) % 8 == 0
                   and (cfg.stem == "linear" or (cfg.embed_dim // 4) % 8 == 0))
    assert (problem == "") == expected_ok, (problem, cfg)


@pytest.mark.interpreter
@seed(SEED)
@common_settings(12)
@given(cfg=configs(head_dims=(32,), max_k=2, max_depth=1, max_grid=2), batch=st.integers(1, 3))
def test_triton_backend_within_float32_reference_error(cfg, batch):
    count_example("Triton backend (interpreter) within 2x the float32 reference error")
    tk = pytest.importorskip("threethings_fast.triton_kernels")
    if not torch.cuda.is_available() and not tk.interpreter_active():
        pytest.skip("Triton kernels not under the interpreter")
    model64, model32 = build(cfg), build(cfg, torch.float32)
    model32.load_state_dict(model64.state_dict())
    x = images_for(model64, batch)
    assert_within_bound(ttf.convert(model32, backend="triton")(x.float()), model32(x.float()), model64(x),
                        torch.float32)


@seed(SEED)
@common_settings(40)
@given(cfg=configs(head_dims=(8, 16, 24, 40, 48), max_depth=1, max_grid=2))
def test_triton_refuses_unsupported_head_dims_at_convert(cfg):
    count_example("Triton refuses unsupported head_dim")
    pytest.importorskip("threethings_fast.triton_kernels")
    with pytest.raises(ValueError, match=f"head_dim {cfg.head_dim} is not supported"):
        ttf.convert(build(cfg, torch.float32), backend="triton")
