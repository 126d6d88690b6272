"""Shared launcher helpers for the Triton ops of ``threethings_fast.triton_kernels``.

Every op module (normalize, linear, attention, hmlp_stem, ...) follows the same layering:

    _<op>_kernel (@triton.jit)  ->  _<op>_launch(..., out)  ->  registered op ttf::<op>  ->  <op>() public launcher

and uses the helpers below for the boring but load-bearing parts:

* input validation with messages that name the argument and say what was expected
  (:func:`check_tensor`, :func:`check_same_device`, :func:`check_out`),
* the device rule: CUDA tensors always; CPU tensors only under the Triton interpreter (``TRITON_INTERPRET=1``)
  (:func:`check_device`, :func:`interpreter_active`),
* a device guard so a launch lands on the tensor's GPU, not the current one (:func:`device_guard`),
* ``torch.library`` registration through ``triton_op`` + ``wrap_triton`` so torch.compile / CUDA graphs can trace
  the ops, with a plain-function fallback on torch builds that lack them (:func:`register_op`, :data:`wrap_triton`).

Nothing here synchronises with the device (no ``.item()``, no reading device memory), so launchers stay
CUDA-graph capturable. All checks look at metadata only, so they also work on fake/meta tensors while
torch.compile traces an op.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch

import torch.autograd.forward_ad as _forward_ad

try:
    from torch._subclasses.fake_tensor import is_fake as _is_fake
except ImportError:  # pragma: no cover - very old torch
    _is_fake = None

try:  # The package __init__ turns a missing triton into a clear ImportError; keep this module importable alone.
    import triton  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without triton
    raise ImportError(
        "threethings_fast.triton_kernels needs the `triton` package (pip install 'triton>=3.0', or "
        "pip install 'threethings_fast[triton]'). Use the torch backend of threethings_fast where Triton is "
        f"unavailable. Original error: {exc}") from exc

__all__ = [
    "NAMESPACE",
    "FLOAT_DTYPES",
    "interpreter_active",
    "env_value",
    "check_tensor",
    "check_device",
    "check_same_device",
    "check_out",
    "device_guard",
    "skip_launch",
    "register_op",
    "wrap_triton",
    "launch_choice",
    "next_power_of_2",
    "RowStats",
    "cached_check",
    "pdl_enabled",
    "pdl_launch_kwargs",
    "gdc_wait",
    "gdc_launch_dependents",
]

#: torch.library namespace of every op in this package: ``torch.ops.ttf.<name>``.
NAMESPACE = "ttf"

#: Floating dtypes the kernels accept as inputs (bf16 ``tl.dot`` is wrong under the interpreter; see tests).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class RowStats(NamedTuple):
    """Partial LayerNorm statistics of the rows of an activation x (..., D), for a GEMM that normalises x in its
    epilogue instead of reading a normalised copy.

    partials: (..., T, 2) fp32; slot t covers columns [t·width, min((t+1)·width, D)) and holds that slot's mean and
        Σ(x − mean)² (M2); T = ceil(D / width). Written by `row_stats` (one slot, width D) or by a `linear` with
        ``return_stats=True`` (slots of its output tile, width 32). Merged exactly (Chan, Golub & LeVeque's parallel
        formula: no E[x²] − E[x]² cancellation) by `linear(..., norm=...)`.
    width: columns per slot.
    """
    partials: torch.Tensor
    width: int


# os.environ.get costs ~0.7 µs (encode the key, decode the value); the launchers read a few variables per call.
# Reading the mapping os.environ keeps in step with the process environment (os.environ's own dict, updated by
# every os.environ / monkeypatch assignment) costs ~0.1 µs. Elsewhere than POSIX CPython: os.environ itself.
_ENVIRON_DATA = getattr(os.environ, "_data", None)
_ENCODE = getattr(os.environ, "encodekey", None)


def env_value(name: str, default: str = "") -> str:
    """``os.environ.get(name, default)``, read cheaply (launchers call it on every launch)."""
    if _ENVIRON_DATA is None or _ENCODE is None:
        return os.environ.get(name, default)
    raw = _ENVIRON_DATA.get(_ENCODED_KEYS.get(name) or _encoded(name))
    return default if raw is None else os.environ.decodevalue(raw)


_ENCODED_KEYS: dict[str, object] = {}


def _encoded(name: str):
    key = _ENCODED_KEYS[name] = _ENCODE(name)
    return key


def interpreter_active() -> bool:
    """True when Triton runs kernels with its CPU interpreter (environment ``TRITON_INTERPRET=1``).

    Triton reads the variable when a ``@triton.jit`` function is *defined*, so it must be set before the kernel
    modules are imported; this function only reports it (launchers use it to pick a single small config instead
    of autotuning, which is very slow interpreted, and to accept CPU tensors).
    """
    return env_value("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (n >= 1). Block sizes must be powers of two in Triton."""
    return 1 << max(0, int(n) - 1).bit_length()


def check_device(t: torch.Tensor, name: str) -> None:
    """Raise RuntimeError unless ``t`` lives where a Triton kernel can run.

    CUDA tensors are always accepted. CPU tensors are accepted only under the interpreter
    (``TRITON_INTERPRET=1``). Meta tensors pass (shape propagation while tracing).
    """
    dev = t.device.type
    if dev in ("cuda", "meta"):
        return
    if dev == "cpu":
        if interpreter_active():
            return
        raise RuntimeError(
            f"{name} is a CPU tensor; the Triton kernels run on CUDA devices only (CPU tensors are accepted only "
            "under the Triton interpreter, TRITON_INTERPRET=1, set before importing the kernels). Move the inputs "
            "to a GPU or use the torch backend.")
    raise RuntimeError(f"{name} is on device {t.device}; the Triton kernels support CUDA tensors only.")


def check_tensor(
    t: object,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    min_ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    dtypes: Iterable[torch.dtype] | None = FLOAT_DTYPES,
    dtype: torch.dtype | None = None,
    contiguous: bool = True,
) -> None:
    """Validate one tensor argument; raise with a message naming ``name`` and the expectation.

    Args:
        t: the argument to check (anything: non-tensors raise TypeError).
        name: the argument's name as the user sees it, e.g. ``"weight"``.
        ndim: required rank, or a collection of allowed ranks.
        min_ndim: minimum rank (for ``(..., D)`` inputs).
        shape: required shape; ``None`` entries are free. Compared against the *trailing* dims when ``ndim`` is
            not given, so ``shape=(None, D)`` with ``min_ndim=2`` checks the last dim only.
        dtypes: allowed dtypes (TypeError otherwise); ``None`` to skip.
        dtype: exact dtype required (TypeError otherwise), e.g. to match another argument.
        contiguous: require ``t.is_contiguous()`` (ValueError otherwise): the kernels assume a unit inner stride
            and dense rows.

    Raises:
        TypeError: not a tensor, or a wrong dtype.
        ValueError: wrong rank, shape or layout.
        RuntimeError: wrong device (see :func:`check_device`).
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have rank {want}, got shape {tuple(t.shape)} (rank {t.dim()})")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name} must have rank >= {min_ndim}, got shape {tuple(t.shape)} (rank {t.dim()})")
    if shape is not None:
        got = tuple(t.shape)
        tail = got[len(got) - len(shape):] if len(got) >= len(shape) else None
        ok = tail is not None and all(w is None or w == g for w, g in zip(shape, tail))
        if not ok:
            want = "(" + ", ".join("*" if w is None else str(w) for w in shape) + ")"
            where = "trailing dims " if ndim is None and len(got) != len(shape) else ""
            raise ValueError(f"{name} must have {where}shape {want}, got {got}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if dtypes is not None:
        allowed_dtypes = tuple(dtypes)
        if t.dtype not in allowed_dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in allowed_dtypes)
            raise TypeError(f"{name} must have dtype in ({names}), got {t.dtype}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (got strides {tuple(t.stride())} for shape {tuple(t.shape)}); "
                         "call .contiguous() first")
    check_device(t, name)


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """Raise RuntimeError unless all non-None tensors share one device; names each tensor and its device."""
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {v.device for v in present.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{k} on {v.device}" for k, v in present.items())
        raise RuntimeError(f"all tensors must be on the same device, got {listing}")


def check_out(out: torch.Tensor, name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device,
              inputs: dict[str, torch.Tensor | None] | None = None) -> None:
    """Validate a caller-provided output buffer (``out=``): exact shape, dtype, device, contiguous, no overlap.

    ``inputs`` maps argument names to input tensors; ``out`` must not share storage with any of them: kernels
    read inputs while writing ``out`` from other programs, and autotuning re-runs a kernel, so an aliased output
    would be read after being written.
    """
    check_tensor(out, name, ndim=len(shape), shape=tuple(shape), dtypes=None, dtype=dtype)
    if out.device != device:
        raise RuntimeError(f"{name} must be on {device}, got {out.device}")
    for k, v in (inputs or {}).items():
        if v is not None and v.numel() > 0 and out.numel() > 0 and \
                out.untyped_storage().data_ptr() == v.untyped_storage().data_ptr():
            raise ValueError(f"{name} must not share memory with {k} (in-place updates are not supported)")


def device_guard(t: torch.Tensor):
    """Context manager making ``t``'s GPU current, so Triton launches on the right device and stream.

    Triton launches on ``torch.cuda.current_device()``'s current stream; with several GPUs the input may live
    elsewhere. A no-op for CPU (interpreter) and meta tensors.
    """
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def skip_launch(t: torch.Tensor) -> bool:
    """True when a launcher should only allocate, not launch: ``t`` has no data a kernel could read.

    That is the case for meta tensors, and under the interpreter for fake tensors (torch.compile / opcheck shape
    propagation): ``wrap_triton`` passes interpreted kernels through unwrapped, so they would try to copy fake
    storage to the CPU. On CUDA, fake tensors go through wrap_triton's traced path and launch nothing anyway.
    """
    if t.device.type == "meta":
        return True
    if interpreter_active():
        if type(t) is torch.Tensor:    # a plain tensor is never fake; is_fake costs a few µs per launch
            return False
        return _is_fake is not None and bool(_is_fake(t))
    return False


# ---------------------------------------------------------------------------------------------------------------
# torch.library registration
# ---------------------------------------------------------------------------------------------------------------
# triton_op (torch >= 2.6) registers a custom op whose body is visible to torch.compile: Inductor sees the triton
# kernels launched through wrap_triton and can schedule them in a graph (and CUDA graphs capture them). The body is
# also used as the fake (meta) implementation, so it must be traceable: only torch ops on tensor metadata, no host
# syncs. Older torch: no registration, the op is the plain function (still callable eagerly).
_triton_op = getattr(torch.library, "triton_op", None)
_wrap_triton = getattr(torch.library, "wrap_triton", None) or getattr(torch.library, "capture_triton", None)
try:  # torch >= 2.6: False while a triton_op runs eagerly (its body then calls kernels directly)
    from torch._library.triton import is_wrap_triton_enabled as _wrap_triton_enabled
except ImportError:  # pragma: no cover - older torch
    _wrap_triton_enabled = None


def autotune_enabled() -> bool:
    """False when TTF_TRITON_AUTOTUNE=0: every launcher then runs the first config of its list without tuning —
    one compile per kernel variant instead of one per config, for test runs on a GPU with little time."""
    return env_value("TTF_TRITON_AUTOTUNE", "1") != "0"


def _short_bench(kernel_call, quantiles):
    # Triton's default spends 25 ms warm-up + 100 ms per config and shape; a few ms separate these configs.
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def autotuned(kernel, configs: Sequence, key: Sequence[str]):
    """``triton.autotune`` over ``configs`` with a short timing per config."""
    return triton.autotune(configs=list(configs), key=list(key), do_bench=_short_bench)(kernel)


def tuned_or_first(tuned) -> tuple:
    """(kernel, meta) to launch: the autotuner with no meta, or — with TTF_TRITON_AUTOTUNE=0 — its plain kernel with
    the first config's meta-parameters."""
    if autotune_enabled():
        return tuned, {}
    first = tuned.configs[0]
    return tuned.fn, {**first.kwargs, "num_warps": first.num_warps, "num_stages": first.num_stages}


def launch_choice(kernel, tuned, *, interpreter_meta: dict, fp32_meta: dict | None = None,
                  fp32: bool = False) -> tuple:
    """(kernel, meta) a launcher uses, by one rule for every op: under the interpreter the plain kernel with its
    single small config (autotuning interpreted kernels is far too slow); fp32 operands (the IEEE accuracy path,
    when the op has one) the plain kernel with `fp32_meta`, fitted to shared memory and never tuned; otherwise the
    autotuner `tuned` (or its first config with TTF_TRITON_AUTOTUNE=0)."""
    if interpreter_active():
        return kernel, dict(interpreter_meta)
    if fp32 and fp32_meta is not None:
        return kernel, dict(fp32_meta)
    return tuned_or_first(tuned)


# ---------------------------------------------------------------------------------------------------------------
# Programmatic dependent launch (PDL)
# ---------------------------------------------------------------------------------------------------------------
# With PDL a kernel may start while its predecessor on the stream is still finishing: its prologue (index math,
# loads of weights, which no predecessor writes) overlaps the predecessor's tail, and `gdc_wait()` blocks until the
# predecessor's memory is visible. A kernel that reads an activation must call gdc_wait() before that first read;
# `gdc_launch_dependents()` lets the next kernel start early. Both are no-ops when the launch did not ask for PDL.
# Off by default (TTF_TRITON_PDL=1 turns it on) until a GPU measurement shows it helps.
try:  # Triton >= 3.4 (the GPU image has 3.6)
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    _HAS_GDC = True
except ImportError:  # pragma: no cover - older Triton: the kernels keep their USE_PDL=False branch only
    _HAS_GDC = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


def pdl_enabled(t: torch.Tensor) -> bool:
    """True when launches on ``t``'s device use programmatic dependent launch: TTF_TRITON_PDL=1, a Triton with grid
    dependency control, a CUDA device of compute capability >= 9.0, and not the interpreter. Kernels pass it as their
    ``USE_PDL`` constexpr and launch with :func:`pdl_launch_kwargs`."""
    if env_value("TTF_TRITON_PDL", "0") != "1" or not _HAS_GDC or not t.is_cuda or interpreter_active():
        return False
    if type(t) is not torch.Tensor or torch.compiler.is_compiling():
        # Traced (fake tensors): torch.compile cannot see through griddepcontrol's inline asm and would treat every
        # input as written, and Inductor drops launch_pdl anyway. PDL is for eager and CUDA-graph launches.
        return False
    return _capability_major(t.get_device()) >= 9


@functools.lru_cache(maxsize=None)
def _capability_major(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def pdl_launch_kwargs(use_pdl: bool) -> dict:
    """Extra launch keyword arguments for a kernel launched with ``USE_PDL=use_pdl``."""
    return {"launch_pdl": True} if use_pdl else {}


def wrap_triton(kernel):
    """``torch.library.wrap_triton(kernel)`` where available, else the kernel itself.

    Use it at every launch inside a registered op: ``wrap_triton(_my_kernel)[grid](...)``. In an eager call (the
    op's body run by :class:`_EagerFastPath`, or by torch's eager path) it returns the kernel itself. Under the interpreter the kernel is returned as is: it is then not a ``JITFunction``, which
    torch 2.11's ``wrap_triton`` rejects, and nothing interpreted can be traced into a graph anyway (fake tensors
    never reach a launch: :func:`skip_launch`).
    """
    if _wrap_triton is None or _DIRECT.active or interpreter_active():
        return kernel
    if _wrap_triton_enabled is not None and not _wrap_triton_enabled():
        # An eager call of a registered op: wrap_triton would launch the kernel directly anyway, after building
        # two wrapper objects and re-checking the autotuner's arguments (~75-90 µs of Python per launch, measured
        # with torch 2.13 / 2.11 on the CPU host; ~90 launches per S18x2 forward).
        return kernel
    return _wrap_triton(kernel)


def register_op(name: str, fn: Callable[..., torch.Tensor], *, mutates_args: Iterable[str] | str = ()) -> Callable:
    """Register ``fn`` as ``torch.ops.ttf.<name>`` via ``torch.library.triton_op``; return the callable to use.

    ``fn`` must carry full type annotations (the schema is inferred from them: ``Optional[torch.Tensor]``,
    ``Optional[str]``, ``Optional[torch.dtype]``, ``float``, ``int``, ``bool`` are all expressible), must launch its
    kernels through :func:`wrap_triton`, and must return fresh tensors (outputs may not alias inputs).

    Returns the registered op, wrapped so that a plain eager call skips the dispatcher (:class:`_EagerFastPath`;
    ``.op`` is the op itself), or, when ``triton_op`` is unavailable, ``fn``.
    Registering the same name twice in one process (e.g. the module imported under two paths) reuses the first
    registration instead of failing.
    """
    qualname = f"{NAMESPACE}::{name}"
    if _triton_op is None:
        return fn
    try:
        op = _triton_op(qualname, mutates_args=mutates_args)(fn)
    except RuntimeError as exc:
        # "already registered": the dispatcher keeps one definition per name for the process lifetime.
        existing = getattr(getattr(torch.ops, NAMESPACE), name, None)
        if existing is None:
            raise
        if "already" not in str(exc) and "registered" not in str(exc):  # pragma: no cover
            raise
        op = existing.default
    return _EagerFastPath(op, fn)


class _EagerFastPath:
    """A registered op that an eager call with plain tensors runs as the Python function it wraps.

    Through the dispatcher, an eager call of a ``triton_op`` crosses the autograd key, the custom-op machinery and
    a dynamo-disabled frame before reaching ``fn``: ~35-40 µs of Python per call on the CPU host (bench/
    host_overhead.py), for nothing an eager inference call needs. Everything else goes through the op: while
    torch.compile, torch.export or torch.jit trace, under any dispatch or function mode (fake tensors,
    functionalization, FlopCounterMode), under functorch transforms, for tensor subclasses, and when autograd
    would record (an input requires grad), so tracing and autograd see exactly what they saw before.
    ``.op`` is the registered op itself.
    """

    __slots__ = ("op", "fn", "__wrapped__")

    def __init__(self, op, fn):
        self.op = op
        self.fn = fn
        self.__wrapped__ = fn

    def __call__(self, *args, **kwargs):
        if _plain_eager_call(args, kwargs):
            # What torch's own eager path does around the body (set_wrap_triton_enabled(False)): wrap_triton then
            # returns the kernel itself instead of the traceable wrapper, which would route every launch through
            # the triton_kernel_wrapper_mutation machinery (and keep per-launch entries in its side table).
            _DIRECT.active = True
            try:
                return self.fn(*args, **kwargs)
            finally:
                _DIRECT.active = False
        return self.op(*args, **kwargs)

    def __getattr__(self, attr):    # the op's own attributes (register_fake, _opoverload, ...)
        if attr in _EagerFastPath.__slots__:    # not yet set (copy / pickle of a bare instance): no recursion
            raise AttributeError(attr)
        return getattr(self.op, attr)


class _DirectFlag(threading.local):
    """Set (per thread) while an op body runs through _EagerFastPath: its launches are eager (see wrap_triton)."""

    active = False


_DIRECT = _DirectFlag()


def _plain_eager_call(args, kwargs) -> bool:
    """True when calling the op's Python function directly is what the dispatcher would do: no tracing, no mode, no
    transform, no forward-mode AD, no __torch_function__ override (fx proxies), plain tensors only, nothing for
    autograd to record."""
    if (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled() or torch._C._are_functorch_transforms_active()
            or _forward_ad_level() >= 0):
        return False
    values = args + tuple(kwargs.values()) if kwargs else args
    if torch._C._has_torch_function(values):
        return False
    grad = torch.is_grad_enabled()
    for a in values:
        if isinstance(a, torch.Tensor):
            if type(a) is not torch.Tensor or (grad and a.requires_grad):
                return False
    return True


def _forward_ad_level() -> int:
    """The innermost active forward-mode AD level (-1: none)."""
    return getattr(_forward_ad, "_current_level", -1)


def _metadata_key(value):
    """A hashable key standing for what a validation can look at in `value` (tensor metadata, not data), or None
    when there is none (then the call is not cached)."""
    kind = type(value)
    if kind is torch.Tensor:
        # get_device() / is_meta instead of .device: building a torch.device object costs more than the rest
        return (value.shape, value.stride(), value.dtype, value.get_device(), value.is_cuda, value.is_meta)
    if value is None:
        return None
    if kind in _SCALAR_TYPES:
        return (kind, value)         # the type too: True and 1 are equal keys, and a check may refuse a bool
    if isinstance(value, tuple):     # RowStats and other named tuples of tensors and scalars
        parts = tuple(_metadata_key(v) for v in value)
        return None if any(p is None and v is not None for p, v in zip(parts, value)) else (kind, parts)
    return None


_SCALAR_TYPES = frozenset((bool, int, float, str, torch.dtype))


def cached_check(fn):
    """Memoise a validation function whose outcome depends only on its arguments' metadata (shapes, strides, dtypes,
    devices) and scalar values: a call whose arguments match a previous successful call returns that call's
    result without running the checks again (they cost ~30-60 µs of Python per op call on the CPU host). A failing
    call raises every time (failures are never cached). Calls with symbolic shapes (torch.compile), tensor
    subclasses or arguments without a metadata key run the checks unmemoised. The interpreter switch is part of
    the key: it decides whether CPU tensors are accepted. At most 512 entries are kept; the cache empties when
    full (a model has a few dozen distinct shapes)."""
    cache: dict = {}

    def checked(*args):
        if torch.compiler.is_compiling():
            return fn(*args)
        key = [interpreter_active()]
        for a in args:
            part = _metadata_key(a)
            if part is None and a is not None:
                return fn(*args)
            key.append(part)
        key = tuple(key)
        try:
            hit = cache.get(key, _MISSING)
        except TypeError:        # unhashable metadata (a SymInt outside of tracing, ...)
            return fn(*args)
        if hit is not _MISSING:
            return hit
        result = fn(*args)
        if len(cache) >= 512:
            cache.clear()
        cache[key] = result
        return result

    checked.__wrapped__ = fn
    checked.__doc__ = fn.__doc__
    checked.__name__ = getattr(fn, "__name__", "checked")
    checked.cache = cache
    return checked


_MISSING = object()
