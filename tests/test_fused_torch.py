"""Folding + the fused model on the torch backend against the reference (float64 oracle)."""
import pytest
import torch

import threethings_fast as ttf
from helpers import assert_within_bound, images_for, make_model, rel_err

# (name, overrides): K = 1, 2, 3; odd N (50 = 7x7+1, 197 = 14x14+1); odd widths; both stems; both norms; no LS
CASES = [
    ("tiny_2x1", {}),
    ("tiny_2x2", {}),
    ("tiny_2x3", {}),
    ("tiny_2x2", {"img_size": 112}),                                              # N = 50
    ("tiny_2x2", {"img_size": 224, "embed_dim": 40, "num_heads": 2}),             # N = 197, D = 40
    ("tiny_1x3", {"embed_dim": 72, "num_heads": 3, "mlp_ratio": 3.0}),           # head_dim 24, F = 216
    ("tiny_2x2", {"stem": "hmlp_bn", "img_size": 48}),
    ("tiny_2x3", {"stem": "hmlp_ln", "embed_dim": 48, "num_heads": 3}),
    ("tiny_2x2", {"init_values": None, "num_classes": 0}),
    ("tiny_2x1", {"stem": "hmlp_bn", "init_values": None, "num_classes": 3}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for n, kw in CASES]


@pytest.mark.parametrize("name, kw", CASES, ids=IDS)
def test_fused_float64_matches_reference(name, kw):
    model = make_model(name, **kw)
    x = images_for(model, 3)
    fused = ttf.convert(model, backend="torch")
    assert rel_err(fused(x), model(x)) <= 1e-10


@pytest.mark.parametrize("name, kw", CASES[:4] + CASES[6:8], ids=IDS[:4] + IDS[6:8])
def test_fused_float32_within_reference_error(name, kw):
    model64 = make_model(name, **kw)
    model32 = make_model(name, dtype=torch.float32, **kw)
    model32.load_state_dict(model64.state_dict())
    x64 = images_for(model64, 2)
    fused = ttf.convert(model32, backend="torch")
    assert fused.dtype == torch.float32
    assert_within_bound(fused(x64.float()), model32(x64.float()), model64(x64), torch.float32)


def test_convert_to_another_dtype_folds_in_float64():
    model64 = make_model("tiny_2x2")
    x = images_for(model64)
    fused32 = ttf.convert(model64, backend="torch", dtype=torch.float32)
    model32 = make_model("tiny_2x2", dtype=torch.float32)
    model32.load_state_dict(model64.state_dict())
    assert_within_bound(fused32(x.float()), model32(x.float()), model64(x), torch.float32)


def test_parallel_k1_fused_equals_sequential_reference():
    seq = make_model("tiny_4x1")
    x = images_for(seq)
    assert rel_err(ttf.convert(seq, backend="torch")(x), seq(x)) <= 1e-10


@pytest.mark.parametrize("layout", ["timm", "deit"])
def test_convert_from_state_dict(layout):
    model = make_model("tiny_2x2", stem="hmlp_bn")
    sd = ttf.export_state_dict(model, layout)
    x = images_for(model)
    fused = ttf.convert(sd, backend="torch", config=model.config, dtype=torch.float64)
    with pytest.raises(ttf.CheckpointError, match="missing keys"):
        ttf.convert(sd, backend="torch", config="tiny_2x2")  # linear stem vs the hMLP checkpoint
    assert rel_err(fused(x), model(x)) <= 1e-10
    inferred = ttf.convert(sd, backend="torch", num_heads=2)   # config inferred from the shapes
    assert inferred.config == model.config
    assert rel_err(inferred(x), model(x)) <= 1e-10


def test_batchnorm_stem_folds_running_stats_even_from_a_training_model():
    model = make_model("tiny_2x2", stem="hmlp_bn").train()
    fused = ttf.convert(model, backend="torch")
    x = images_for(model)
    assert rel_err(fused(x), model.eval()(x)) <= 1e-10


def test_fused_is_a_copy():
    model = make_model("tiny_2x2")
    x = images_for(model)
    fused = ttf.convert(model, backend="torch")
    before = fused(x)
    with torch.no_grad():
        model.blocks[0].attns[1].attn.qkv.weight.add_(1.0)
    assert torch.equal(fused(x), before)


@pytest.mark.parametrize("parts", [("attn",), ("ffn",), ("head", "pos"), ("attn", "ffn", "head", "pos")])
def test_refold_parts(parts):
    base = make_model("tiny_2x2")
    tuned = make_model("tiny_2x2")
    fused = ttf.convert(base, backend="torch").refold(tuned, parts=parts)
    # expected: base with the chosen parts taken from tuned
    mixed = make_model("tiny_2x2")
    mixed.load_state_dict(base.state_dict())
    with torch.no_grad():
        for (name, p), (_, q) in zip(mixed.named_parameters(), tuned.named_parameters()):
            role = ("attn" if ".attns." in name else "ffn" if ".ffns." in name else
                    "head" if name.startswith(("head", "norm.")) else "pos" if name in ("cls_token", "pos_embed")
                    else "stem")
            if role in parts:
                p.copy_(q)
    x = images_for(base)
    assert rel_err(fused(x), mixed(x)) <= 1e-10


def test_fused_repr_and_backend():
    fused = ttf.convert(make_model("tiny_2x2"), backend="auto")
    assert fused.backend == "torch"   # auto on CPU
    assert "K=2" in repr(fused)


# --- bad input -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, err, match", [
    (lambda: torch.randn(3, 32, 32, dtype=torch.float64), ValueError, "rank 3"),
    (lambda: torch.randn(2, 1, 32, 32, dtype=torch.float64), ValueError, "3 input channels"),
    (lambda: torch.randn(2, 3, 33, 33, dtype=torch.float64), ValueError, "not divisible by the patch size"),
    (lambda: torch.randn(2, 3, 32, 48, dtype=torch.float64), ValueError, "non-square"),
    (lambda: torch.randn(2, 3, 32, 32, dtype=torch.float32), TypeError, "float64"),
    (lambda: torch.randn(0, 3, 32, 32, dtype=torch.float64), ValueError, "empty batch"),
    (lambda: torch.randn(2, 3, 32, 32, dtype=torch.float64, device="meta"), RuntimeError, "lives on cpu"),
])
def test_fused_bad_input(bad, err, match):
    fused = ttf.convert(make_model("tiny_2x2"), backend="torch")
    with pytest.raises(err, match=match):
        fused(bad())


def test_fused_is_inference_only():
    fused = ttf.convert(make_model("tiny_2x2"), backend="torch")
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.train()
    with pytest.raises(RuntimeError, match="convert"):
        fused.to(torch.float32)
    fused.training = True
    with pytest.raises(RuntimeError, match="inference-only"):
        fused(images_for(make_model("tiny_2x2")))


def test_convert_bad_arguments():
    model = make_model("tiny_2x2")
    with pytest.raises(ValueError, match="backend must be one of"):
        ttf.convert(model, backend="tensorrt")
    with pytest.raises(TypeError, match="dtype must be one of"):
        ttf.convert(model, backend="torch", dtype=torch.int8)
    with pytest.raises(TypeError, match="convert expects a threethings_fast VisionTransformer, a timm"):
        ttf.convert(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="does not match"):
        ttf.convert(model, backend="torch").refold(make_model("tiny_2x1"))
