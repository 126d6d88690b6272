"""The fused MLP families (Mixer, ResMLP, gMLP) against their reference models: float64 exactness of the folding on
the torch backend, float32 within twice the reference's own error, the Triton backend (interpreter on the CPU),
convert's family dispatch and its errors."""
import pytest
import torch

import threethings_fast as ttf
from helpers import assert_within_bound, randomize, rel_err
from threethings_fast.fused.model import FusedModel
from threethings_fast.fused.ops_torch import TorchOps
from threethings_fast.fused.protocol import FusedOps
from threethings_fast.models import Family

# (name, overrides): K = 1, 2, 3 for the families that have parallel blocks; every stem; odd widths and grids
MODELS = [
    ("mixer_tiny_2x1", {}),
    ("mixer_tiny_2x2", {}),
    ("mixer_tiny_1x3", {}),
    ("mixer_tiny_2x1", {"img_size": 48, "patch_size": 16, "stem": "hmlp_ln"}),
    ("resmlp_tiny_2x1", {}),
    ("resmlp_tiny_2x2", {}),
    ("resmlp_tiny_1x3", {}),
    ("resmlp_tiny_p16", {"stem": "hmlp_bn"}),
    ("gmlp_tiny_2", {}),
    ("gmlp_tiny_p16", {"stem": "hmlp_ln"}),
    ("gmlp_tiny_p16", {"num_classes": 0}),
    ("ffonly_test_a", {}),
    ("ffonly_test_b", {}),
    ("ffonly_test_c", {}),
    ("vip_test_a", {}),
    ("vip_test_b", {}),
    ("vip_test_c", {}),
]


@torch.no_grad()
def family_model(name, dtype=torch.float64, **overrides):
    """A reference model with every gain, shift, LayerScale and bias far from its init (tests/helpers.randomize)."""
    torch.manual_seed(0)
    return randomize(ttf.create_model(name, **overrides)).to(dtype).eval()


def images(model, batch, dtype=torch.float64, seed=1):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, c.in_chans, c.img_size, c.img_size, generator=g, dtype=torch.float64).to(dtype)


def _id(p):
    return p[0] + "".join(f"-{k}={v}" for k, v in p[1].items())


@pytest.mark.parametrize("name, kw", MODELS, ids=[_id(m) for m in MODELS])
def test_float64_fused_equals_reference(name, kw):
    model = family_model(name, **kw)
    x = images(model, 3)
    fused = ttf.convert(model, backend="torch")
    assert isinstance(fused, FusedModel) and fused.family.name == name.split("_")[0]
    assert all(t.dtype == torch.float64 for t in fused.weights.tensors())
    out = fused(x)
    ref = model(x)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-10


@pytest.mark.parametrize("name, kw", MODELS[::2], ids=[_id(m) for m in MODELS[::2]])
def test_float32_within_twice_reference_error(name, kw):
    model64 = family_model(name, **kw)
    model32 = family_model(name, torch.float32, **kw)
    x = images(model64, 2)
    out = ttf.convert(model32)(x.float())            # auto on the CPU: torch
    assert_within_bound(out, model32(x.float()), model64(x), torch.float32)


def test_batch_one_and_odd_batch_agree_with_the_batched_run():
    model = family_model("gmlp_tiny_2")
    fused = ttf.convert(model, backend="torch")
    x = images(model, 5)
    full = fused(x)
    for i in (0, 3):
        assert rel_err(fused(x[i:i + 1]), full[i:i + 1]) <= 1e-12


def test_ops_protocol_is_implemented_by_the_backends():
    assert isinstance(TorchOps(), FusedOps)
    triton_ops = pytest.importorskip("threethings_fast.fused.ops_triton")
    assert isinstance(triton_ops.TritonOps.__new__(triton_ops.TritonOps), FusedOps)


def test_state_dict_with_a_family_config_converts():
    model = family_model("resmlp_tiny_2x2")
    x = images(model, 2)
    fused = ttf.convert(model.state_dict(), backend="torch", config="resmlp_tiny_2x2")
    assert rel_err(fused(x), model(x)) <= 1e-10
    with pytest.raises(ttf.CheckpointError, match="does not match"):
        ttf.convert(model.state_dict(), backend="torch", config="resmlp_tiny_2x1")


def test_family_errors_are_clear():
    model = family_model("mixer_tiny_2x1")
    with pytest.raises(ValueError, match="ViTs only"):
        ttf.convert(model, backend="cuda")
    with pytest.raises(ValueError, match="Triton backend"):
        ttf.convert(model, backend="torch", norm="fused")
    with pytest.raises(ValueError, match="norm must be"):
        ttf.convert(model, backend="torch", norm="inside")
    with pytest.raises(TypeError, match="state dict"):
        ttf.convert(model, config="mixer_tiny_2x1")
    fused = ttf.convert(model, backend="torch")
    with pytest.raises(TypeError, match="float64"):
        fused(images(model, 1, torch.float32))
    with pytest.raises(ValueError, match="channels|in_chans|3"):
        fused(torch.zeros(1, 4, 32, 32, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.train()
    no_fused_path = Family(name="x", title="X", config="threethings_fast.configs:ViTConfig",
                           reference="threethings_fast.reference.model:VisionTransformer",
                           resolve_name="threethings_fast.configs:resolve_name",
                           list_names="threethings_fast.configs:list_models")
    with pytest.raises(NotImplementedError, match="reference model only"):
        no_fused_path.folder()
    nan = family_model("mixer_tiny_2x1")
    with torch.no_grad():
        nan.head.bias[0] = float("nan")
    with pytest.raises(ttf.CheckpointError):
        ttf.convert(nan, backend="torch")


TRITON_CASES = [MODELS[i] for i in (1, 5, 9, 12, 16)]     # Mixer K=2, ResMLP K=2, gMLP LN-hMLP, FF-only, ViP


@pytest.mark.interpreter
@pytest.mark.parametrize("norm", ["separate", "fused"])
@pytest.mark.parametrize("name, kw", TRITON_CASES, ids=[_id(m) for m in TRITON_CASES])
def test_triton_backend_matches_reference(name, kw, norm):
    """norm="fused": LayerNorms as row statistics exchanged between the GEMMs (the token GEMMs of Mixer and gMLP
    normalise their input rows in the main loop), the same outputs within the bound."""
    pytest.importorskip("triton")
    from helpers import kernels_runnable
    from threethings_fast.triton_kernels.token_linear import _token_linear_kernel
    if not kernels_runnable(_token_linear_kernel):
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model64 = family_model(name, **kw)
    model32 = family_model(name, torch.float32, **kw).to(device)
    x = images(model64, 2)
    fused = ttf.convert(model32, backend="triton", norm=norm)
    assert fused.backend == "triton" and f"norm={norm}" in repr(fused)
    out = fused(x.float().to(device))
    assert_within_bound(out, model32(x.float().to(device)), model64(x), torch.float32)
