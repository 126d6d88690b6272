"""Shared test helpers: models with non-trivial weights, and the dtype-relative error bound
|fused − ref64| <= 2·|ref_lowp − ref64| + atol(dtype): the fused error against the reference's own low-precision error."""
from __future__ import annotations

import torch

import threethings_fast as ttf

# Examples run per property (tests/test_properties.py), printed at the end of the session by conftest.py.
PROPERTY_COUNTS: dict[str, int] = {}


# (source, corruption, error) rows of tests/test_checkpoint_fuzz.py, printed at the end of the session.
FUZZ_TABLE: list[tuple[str, str, str]] = []


def count_example(name: str) -> None:
    PROPERTY_COUNTS[name] = PROPERTY_COUNTS.get(name, 0) + 1


# atol per dtype, added to 2x the reference's own low-precision error
ATOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@torch.no_grad()
def randomize(model: torch.nn.Module, scale: float = 0.5) -> torch.nn.Module:
    """Give every norm, LayerScale, bias and BN statistic a non-trivial value, so folding bugs cannot hide behind
    ones and zeros. LayerScales: the ViT's `gamma`, the MLP families' `ls1` / `ls2` / `ls`; ResMLP's Affine
    (`alpha`, `beta`, stored (1, 1, D)) is a norm too."""
    for name, p in model.named_parameters():
        if name.endswith(("gamma", "ls1", "ls2", ".ls")):
            p.copy_(torch.rand_like(p) * scale + 0.05)
        elif name.endswith("alpha"):
            p.copy_(1 + 0.3 * torch.randn_like(p))
        elif name.endswith("beta"):
            p.copy_(0.2 * torch.randn_like(p))
        elif p.dim() == 1 and "norm" in name and name.endswith("weight"):
            p.copy_(1 + scale * torch.randn_like(p))
        elif p.dim() == 1:
            p.copy_(scale * 0.2 * torch.randn_like(p))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.3 * torch.randn_like(m.running_mean))
            m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
            m.weight.copy_(1 + 0.3 * torch.randn_like(m.weight))
            m.bias.copy_(0.2 * torch.randn_like(m.bias))
    return model


def make_model(name="tiny_2x2", dtype=torch.float64, **overrides):
    return randomize(ttf.create_model(name, **overrides)).to(dtype).eval()


def images_for(model, batch=2, dtype=torch.float64, device="cpu"):
    c = model.config
    return torch.randn(batch, c.in_chans, c.img_size, c.img_size, dtype=dtype, device=device)


def assert_within_bound(out, ref_lowp, ref64, dtype):
    """|out - ref64| <= 2 |ref_lowp - ref64| + atol(dtype), on the max over elements."""
    out, ref_lowp, ref64 = out.double().cpu(), ref_lowp.double().cpu(), ref64.double().cpu()
    assert torch.isfinite(out).all(), "output has NaN/inf (an unwritten element?)"
    err = (out - ref64).abs().max().item()
    ref_err = (ref_lowp - ref64).abs().max().item()
    bound = 2 * ref_err + ATOL[dtype]
    assert err <= bound, f"error {err:.3e} > bound {bound:.3e} (reference's own {dtype} error {ref_err:.3e})"


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def kernels_interpreted(kernel) -> bool:
    """True when `kernel` (a @triton.jit function) was defined under the Triton interpreter, i.e. TRITON_INTERPRET
    was set before triton was first imported in this process."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        return False
    return isinstance(kernel, InterpretedFunction)


#: Why the kernel tests skip on a CPU when the kernels were not defined under the interpreter.
NOT_INTERPRETED = ("the Triton kernels were imported before TRITON_INTERPRET=1 was set; run pytest with "
                   "TRITON_INTERPRET=1 in the environment")


def kernels_runnable(kernel) -> bool:
    """True when the Triton kernels can run in this process: on CUDA, or on the CPU with `kernel` (one of the
    package's @triton.jit functions) defined under the interpreter."""
    from threethings_fast.triton_kernels._common import interpreter_active
    return torch.cuda.is_available() or (interpreter_active() and kernels_interpreted(kernel))


def assert_close_to_ref(fused, ref_lowp, ref64, atol, what=""):
    """The fused error is at most twice PyTorch's own low-precision error, plus atol (max over elements)."""
    assert fused.shape == ref64.shape, (fused.shape, ref64.shape)
    assert torch.isfinite(fused).all(), f"{what}: non-finite output (unwritten poisoned element?)"
    err = (fused.double() - ref64).abs().max().item() if fused.numel() else 0.0
    ref_err = (ref_lowp.double() - ref64).abs().max().item() if fused.numel() else 0.0
    assert err <= 2 * ref_err + atol, f"{what}: max err {err:.3g} > 2·{ref_err:.3g} + {atol:g}"
