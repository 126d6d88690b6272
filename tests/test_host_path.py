"""The Triton ops' host path: an eager call skips the dispatcher only when nothing could observe the difference, and
memoised argument checks never let a bad call through."""
from __future__ import annotations

import pytest
import torch

tk = pytest.importorskip("threethings_fast.triton_kernels")
from threethings_fast.triton_kernels import _common  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and not tk.interpreter_active(),
                                reason="needs CUDA or the Triton interpreter")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class _Spy:
    """Stands in for a registered op and for its Python function, recording which one a call reached."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def __call__(self, *args, **kwargs):
        self.log.append(self.name)
        return args[0]


def _fast_path():
    log = []
    return _common._EagerFastPath(_Spy("op", log), _Spy("fn", log)), log


def test_plain_eager_call_runs_the_function_directly():
    call, log = _fast_path()
    x = torch.ones(3)
    call(x, 2.0, None)
    with torch.no_grad():
        call(x.requires_grad_())        # nothing for autograd to record
    assert log == ["fn", "fn"]


def test_everything_else_goes_through_the_registered_op():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode
    call, log = _fast_path()
    call(torch.ones(3, requires_grad=True))                       # autograd would record
    with FakeTensorMode() as mode:
        call(mode.from_tensor(torch.ones(3)))                       # a dispatch mode and a tensor subclass
    with FlopCounterMode(display=False):
        call(torch.ones(3))                                         # a mode that counts what the op does
    torch.func.vmap(lambda t: call(t))(torch.ones(2, 3))            # a functorch transform
    assert log == ["op"] * 4


def test_registered_op_is_reachable_and_eager_results_match():
    x = torch.randn(5, 32, device=DEVICE)
    w = torch.randn(16, 32, device=DEVICE)
    direct = tk.linear(x, w)
    op = tk.linear.__globals__["_linear_registered"]
    assert isinstance(op, _common._EagerFastPath)
    via_dispatcher = op.op(x, w, None, None, None, None, False)
    assert torch.equal(direct, via_dispatcher)


def test_cached_check_memoises_success_and_never_failure():
    calls = []

    @_common.cached_check
    def check(x, n):
        calls.append(n)
        if n < 0:
            raise ValueError("n must be >= 0")
        return (x.shape[0], n)

    a = torch.zeros(4, 2)
    assert check(a, 1) == (4, 1) and check(torch.ones(4, 2), 1) == (4, 1)   # same metadata: one real check
    assert calls == [1]
    check(torch.zeros(5, 2), 1)                      # other shape
    check(torch.zeros(4, 2).t(), 1)                  # other strides
    check(torch.zeros(4, 2, dtype=torch.float16), 1)  # other dtype
    assert len(calls) == 4
    for _ in range(2):
        with pytest.raises(ValueError, match=">= 0"):
            check(a, -1)
    assert calls[-2:] == [-1, -1]                    # a failing call is checked every time


def test_cached_check_key_holds_the_interpreter_switch(monkeypatch):
    """Whether a CPU tensor is accepted depends on the interpreter: a check that passed under it must fail without."""
    x = torch.randn(3, 8)
    w = torch.randn(4, 8)
    if DEVICE != "cpu":
        pytest.skip("CPU tensors only matter without CUDA")
    tk.linear(x, w)                                  # passes under the interpreter, now cached
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CPU tensor"):
        tk.linear(x, w)


def test_cached_check_skips_what_it_cannot_key():
    calls = []

    @_common.cached_check
    def check(obj):
        calls.append(1)
        return True

    check([1, 2])            # a list: no metadata key, checked every time
    check([1, 2])
    assert len(calls) == 2


def test_bad_arguments_still_fail_after_good_ones_were_cached():
    x = torch.randn(3, 8, device=DEVICE)
    w = torch.randn(4, 8, device=DEVICE)
    tk.linear(x, w)
    with pytest.raises(ValueError, match="in_features"):
        tk.linear(torch.randn(3, 7, device=DEVICE), w)
    with pytest.raises(ValueError, match="contiguous"):
        tk.linear(torch.randn(8, 3, device=DEVICE).t(), w)
    with pytest.raises(TypeError, match="dtype"):
        tk.linear(x.half(), w)


def test_fast_path_launches_kernels_directly(monkeypatch):
    """On a GPU, wrap_triton outside torch's own eager path returns torch's traceable wrapper; inside a fast-path
    call it must return the kernel itself, as torch's eager path arranges (else every launch would go through the
    traced-kernel machinery)."""
    kernel, wrapped = object(), object()
    monkeypatch.setattr(_common, "_wrap_triton", lambda k: wrapped)
    monkeypatch.setattr(_common, "_wrap_triton_enabled", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    seen = []
    call = _common._EagerFastPath(_Spy("op", []), lambda x: seen.append(_common.wrap_triton(kernel)))
    call(torch.ones(2))
    assert seen == [kernel]
    assert _common.wrap_triton(kernel) is wrapped        # outside: what torch's tracing needs
    assert not _common._DIRECT.active


def test_fast_path_leaves_fx_proxies_and_forward_ad_to_the_dispatcher():
    import torch.autograd.forward_ad as fwAD
    call, log = _fast_path()
    with fwAD.dual_level():
        call(fwAD.make_dual(torch.ones(3), torch.ones(3)))
    assert log == ["op"]
    assert not _common._plain_eager_call((), {"x": torch.ones(3, requires_grad=True)})


def test_pdl_stays_off_for_traced_tensors(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode
    monkeypatch.setenv("TTF_TRITON_PDL", "1")
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(torch.ones(2))
    assert not _common.pdl_enabled(fake)
