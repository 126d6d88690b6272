"""The provider registry: every way to run a whole model, by one name, with one rule for where it can run.

A provider is a named way to run one forward of a model (images -> logits): the reference eagerly, a fused
conversion on some backend, one of those replayed from a CUDA graph, timm's model of the same weights, a
torch.compile of either. The profiler, its trace, the pytest-benchmark suites and the engine's latency script all
look providers up here, so a name means the same thing in every table and JSON file.

    entry = ModelEntry.create("S18x2", device, dtype)        # the reference model, once per model
    reason = available("fused[triton]+graph", entry.config, device)   # None, or why it cannot run here
    call, cleanup = build(entry, "fused[triton]+graph", images)       # call() runs one forward of `images`

Per-model objects (a fused conversion, a compiled function, timm's model) are built once and kept in the entry;
per-batch state (a CUDA graph) is built by `build` and freed by its `cleanup`.

Models of every family (threethings_fast.models: ViT, MLP-Mixer, ResMLP, gMLP, Vision Permutator, feed-forward-only)
go through the same names. What each provider does for a non-ViT family:
    reference, compile*         the family's reference model (eager / torch.compile): every family
    fused[auto], fused[torch]   convert(model): families whose `Family.fusable` is true at run time; the others are
    fused[triton](+graph)       skipped with "no fused path yet"
    fused[triton/fusednorm]*
    fused[cuda]*                ViT only (the C++ engine)
    branch_by_branch            ViT only, K >= 2 (the MLP references have no branch-by-branch mode)
    timm*                       MLP-Mixer, ResMLP and gMLP at K = 1 with the linear stem: timm's MlpMixer of the
                                same name (or, for a config timm does not name, built from the config), holding the
                                reference's weights loaded strictly (timm_model.py)
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..api import create_model
from ..configs import ViTConfig, from_name
from ..fused.backends import triton_available
from ..models import family_of, resolve_any
from .timm_model import timm_from_reference, timm_missing, timm_unsupported

# A rule takes the config of a model of any family (threethings_fast.models) and the device.
Rule = Callable[[Any, torch.device], Optional[str]]


class UnknownProvider(ValueError):
    """A provider name that is neither registered nor an accepted older spelling."""

    def __init__(self, name: str):
        super().__init__(f"unknown provider {name!r}; valid providers: {', '.join(names())}")
        self.name = name


@dataclass
class ModelEntry:
    """One model as the providers see it: its config and reference model (on the run's device and dtype), plus the
    per-model objects the providers built from it (`built`, keyed by Provider.model) and why any failed."""

    name: str
    config: Any                  # a ViTConfig, or another family's config (threethings_fast.models)
    reference: torch.nn.Module
    built: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)

    @classmethod
    def create(cls, name: str, device, dtype: torch.dtype, seed: Optional[int] = None, **fields) -> "ModelEntry":
        """The reference model `name` in eval mode on `device` in `dtype`; random weights from `seed` when given.
        `name`: any spelling of list_models() or a paper short name ("S18x2"), or any family's model name
        ("mixer_b16_224", "resmlp_tiny_2x2", ...; see resolve_config)."""
        if seed is not None:
            torch.manual_seed(seed)
        cfg = resolve_config(name)
        model = create_model(cfg).to(device=device, dtype=dtype).eval()
        return cls(name=name, config=cfg, reference=model, **fields)

    @property
    def family(self):
        """The model's `threethings_fast.models.Family`."""
        return family_of(self.config)

    @property
    def device(self) -> torch.device:
        return next(self.reference.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.reference.parameters()).dtype


@dataclass(frozen=True)
class Provider:
    """name: the one name in every output. runs: what runs, one line (help texts, docs). available: where it can
    run. model: the key of the per-model object it runs (providers sharing one, such as fused[triton] and
    fused[triton]+graph, share the key); make builds that object from an entry. graph: replay a CUDA graph of it,
    captured per batch size."""

    name: str
    runs: str
    available: Rule
    model: str
    make: Callable[[ModelEntry], Callable[..., Any]]
    graph: bool = False


def resolve_config(name: str):
    """The config of model `name`: a ViT spelling (list_models(), deit names, paper short names such as "S18x2")
    first, then any other family's name (`models.resolve_any`; its KeyError lists every known name)."""
    try:
        return from_name(name)
    except KeyError:
        return resolve_any(name)


# ---------------------------------------------------------------------------------------------------------------
# Where providers can run
# ---------------------------------------------------------------------------------------------------------------
def _title(cfg) -> str:
    try:
        return family_of(cfg).title
    except TypeError:
        return type(cfg).__name__


def _anywhere(cfg, device: torch.device) -> Optional[str]:
    return None


def _parallel_only(cfg, device: torch.device) -> Optional[str]:
    if not isinstance(cfg, ViTConfig):
        return (f"branch by branch is a mode of the ViT reference only; the {_title(cfg)} reference has no "
                "branch-by-branch forward")
    if cfg.num_parallel == 1:
        return "x1 model: branch by branch is the reference itself"
    return None


def _vit_only(what: str, instead: str) -> Rule:
    def rule(cfg, device: torch.device) -> Optional[str]:
        if not isinstance(cfg, ViTConfig):
            return f"{what} runs ViTs only; {_title(cfg)} models run {instead}"
        return None
    return rule


def _fusable(cfg, device: torch.device) -> Optional[str]:
    # The registry's word at run time: a family gains its fused path by setting fold / forward in models/__init__.py.
    try:
        family = family_of(cfg)
    except TypeError as exc:
        return str(exc)
    if not family.fusable:
        return f"{family.title}: no fused path yet (reference model only; convert() raises NotImplementedError)"
    return None


def _compile_rule(cfg, device: torch.device) -> Optional[str]:
    if device.type != "cuda":
        return "torch.compile providers run on CUDA only (compiling takes minutes on a small CPU)"
    return None


def _triton_rule(cfg, device: torch.device) -> Optional[str]:
    if device.type != "cuda":
        return "Triton runs on CUDA; on the CPU only the interpreter (timings meaningless)"
    if not triton_available():
        return "triton is not installed"
    return None


def _graph_rule(cfg, device: torch.device) -> Optional[str]:
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    return None


def _engine_rule(cfg, device: torch.device) -> Optional[str]:
    # Cheap checks only: whether the extension builds is known when the model is converted (a failure there is
    # reported with its cause, like any provider's).
    if device.type != "cuda":
        return "the C++ engine's kernels run on CUDA (sm_90); its CPU implementation is for tests"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) != (9, 0):
        return f"the C++ engine's kernels are built for sm_90a (H100 / H200); this GPU is sm_{major}{minor}"
    return None


def _timm_rule(cfg, device: torch.device) -> Optional[str]:
    return timm_missing() or timm_unsupported(cfg)


def _all(*rules: Rule) -> Rule:
    def rule(cfg, device: torch.device) -> Optional[str]:
        for r in rules:
            reason = r(cfg, device)
            if reason:
                return reason
        return None
    return rule


# ---------------------------------------------------------------------------------------------------------------
# What they run (built once per model)
# ---------------------------------------------------------------------------------------------------------------
def raise_recompile_limit() -> None:
    """Let dynamo keep one compiled graph per shape. Its default limit of 8 is below the sweep's 9 batch sizes and
    the per-op suite's shapes; past it dynamo silently runs the function eagerly and the `compile` numbers would
    be eager ones."""
    cfg = torch._dynamo.config
    for attr in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, attr):
            setattr(cfg, attr, max(64, getattr(cfg, attr)))
    for attr in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, attr):
            setattr(cfg, attr, max(1024, getattr(cfg, attr)))


def _reference(entry: ModelEntry):
    return entry.reference


def _branch_by_branch(entry: ModelEntry):
    return functools.partial(entry.reference, branch_by_branch=True)


def _compiled(of: str, mode: Optional[str] = None):
    """torch.compile of the per-model object `of` ("reference" or "timm"), one specialised graph per batch size
    (dynamic=False)."""
    def make(entry: ModelEntry):
        raise_recompile_limit()
        return torch.compile(_model(entry, of), dynamic=False, mode=mode)
    return make


def _fused(backend: str, norm: str = "separate"):
    def make(entry: ModelEntry):
        from ..convert import convert
        return convert(entry.reference, backend=backend, norm=norm)
    return make


def _timm(entry: ModelEntry):
    return timm_from_reference(entry.reference)


_CUDA_GRAPH = "replayed from one CUDA graph per batch size (the call includes copying the images into its buffer)"


def _registry() -> dict[str, Provider]:
    graph, timm_compile = _graph_rule, _all(_timm_rule, _compile_rule)
    fused, triton = _fusable, _all(_fusable, _triton_rule)
    fusednorm = triton   # every family: its LayerNorms exchanged as row statistics between the GEMMs
    engine = _all(_vit_only("the C++ engine", "fused[triton] or fused[torch]"), _engine_rule)
    providers = [
        Provider("reference", "the reference model, eager (parallel branches summed inside each block)",
                 _anywhere, "reference", _reference),
        Provider("branch_by_branch", "the same xK model, its branches run one after another (the paper's "
                 "sequential execution, Table 4)", _parallel_only, "branch_by_branch", _branch_by_branch),
        Provider("compile", "torch.compile of the reference (dynamic=False: one compilation per batch size)",
                 _compile_rule, "compile", _compiled("reference")),
        Provider("compile[reduce-overhead]", "torch.compile(reference, mode='reduce-overhead'): with CUDA graphs",
                 _compile_rule, "compile[reduce-overhead]", _compiled("reference", "reduce-overhead")),
        Provider("timm", "timm's model of the same config and weights, eager (VisionTransformer; MlpMixer for "
                 "MLP-Mixer, ResMLP, gMLP)", _timm_rule, "timm", _timm),
        Provider("timm+compile", "torch.compile of the timm model", timm_compile, "timm+compile", _compiled("timm")),
        Provider("timm+compile[reduce-overhead]", "torch.compile(timm model, mode='reduce-overhead'): with CUDA graphs",
                 timm_compile, "timm+compile[reduce-overhead]", _compiled("timm", "reduce-overhead")),
        Provider("timm+compile[max-autotune]", "torch.compile(timm model, mode='max-autotune'): minutes of tuning",
                 timm_compile, "timm+compile[max-autotune]", _compiled("timm", "max-autotune")),
        Provider("fused[auto]", "convert(model): the backend convert() picks here (torch on the CPU, Triton on a "
                 "GPU, engine + Triton on sm_90)", fused, "fused[auto]", _fused("auto")),
        Provider("fused[torch]", "convert(model, backend='torch'): folded weights, plain torch ops (the CPU path)",
                 fused, "fused[torch]", _fused("torch")),
        Provider("fused[triton]", "convert(model, backend='triton'): the Triton kernels, eager launches",
                 triton, "fused[triton]", _fused("triton")),
        Provider("fused[triton]+graph", f"fused[triton] {_CUDA_GRAPH}", _all(triton, graph), "fused[triton]",
                 _fused("triton"), graph=True),
        Provider("fused[triton/fusednorm]", "convert(model, backend='triton', norm='fused'): LayerNorms applied "
                 "inside the GEMMs (a ViT block: 5 launches instead of 7)", fusednorm, "fused[triton/fusednorm]",
                 _fused("triton", "fused")),
        Provider("fused[triton/fusednorm]+graph", f"fused[triton/fusednorm] {_CUDA_GRAPH}", _all(fusednorm, graph),
                 "fused[triton/fusednorm]", _fused("triton", "fused"), graph=True),
        Provider("fused[cuda]", "convert(model, backend='cuda'): the C++ engine, one op call per forward (sm_90)",
                 engine, "fused[cuda]", _fused("cuda")),
        Provider("fused[cuda]+graph", f"fused[cuda] {_CUDA_GRAPH}", engine, "fused[cuda]", _fused("cuda"),
                 graph=True),
    ]
    return {p.name: p for p in providers}


REGISTRY: dict[str, Provider] = _registry()

# Older spellings (bench/bench_model.py, bench/bench_ops.py and bench/bench_engine.py named providers their own way)
# -> the one name. Accepted where a name is typed; never written.
ALIASES = {
    "torch": "fused[torch]",
    "triton": "fused[triton]",
    "triton_graph": "fused[triton]+graph",
    "triton+graph": "fused[triton]+graph",
    "triton_fusednorm": "fused[triton/fusednorm]",
    "triton_fusednorm_graph": "fused[triton/fusednorm]+graph",
    "engine": "fused[cuda]",
    "engine+graph": "fused[cuda]+graph",
    "timm:compile-ro": "timm+compile[reduce-overhead]",
    "timm:compile-ma": "timm+compile[max-autotune]",
}


# ---------------------------------------------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------------------------------------------
def names() -> tuple[str, ...]:
    """Every provider name, in the order tables list them (baselines first, then ours)."""
    return tuple(REGISTRY)


def resolve(name: str) -> str:
    """The registered name of `name` (itself, or what an older spelling now is); UnknownProvider otherwise."""
    if name in REGISTRY:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise UnknownProvider(name)


def get(name: str) -> Provider:
    return REGISTRY[resolve(name)]


def is_fused(name: str) -> bool:
    """Whether `name` runs one of our fused models (the "ours" side of every speed-up). Never raises: result files
    may hold names this version does not register."""
    return ALIASES.get(name, name).startswith("fused[")


def available(name: str, cfg, device) -> Optional[str]:
    """None if provider `name` can run `cfg` (a config of any family) on `device`, else the reason it is skipped
    there."""
    return get(name).available(cfg, torch.device(device))


def prepare(entry: ModelEntry, name: str) -> Optional[str]:
    """Build the per-model object of provider `name` now (a conversion, a compiled function, timm's model), so a
    failure is known before anything is timed. Returns why it failed (also kept in entry.failed), or None."""
    provider = get(name)
    if provider.model in entry.failed:
        return entry.failed[provider.model]
    try:
        _model(entry, provider.model, provider.make)
    except Exception as exc:  # noqa: BLE001 - reported as this provider's reason; the others still run
        entry.failed[provider.model] = f"building {provider.name} failed: {type(exc).__name__}: {exc}"
        return entry.failed[provider.model]
    return None


def model_of(entry: ModelEntry, name: str):
    """The per-model object provider `name` runs (a FusedViT / FusedModel for fused[...], built on first use): what
    the per-op benchmarks take their ops and weights from."""
    provider = get(name)
    if provider.model in entry.failed:
        raise RuntimeError(entry.failed[provider.model])
    return _model(entry, provider.model, provider.make)


def build(entry: ModelEntry, name: str, images: torch.Tensor) -> tuple[Callable[[], Any], Callable[[], None]]:
    """(call, cleanup): call() runs one forward of `images` by provider `name`; cleanup() frees what was built for
    this batch (a CUDA graph). The per-model object is built on first use, if `prepare` has not built it."""
    provider = get(name)
    fn = model_of(entry, name)
    if provider.graph:
        from ..fused.graphs import capture
        holder = {"graph": capture(fn, [images.shape[0]])}
        return (lambda: holder["graph"](images)), (lambda: holder.pop("graph", None))
    return (lambda: fn(images)), _nothing


def _model(entry: ModelEntry, key: str, make: Optional[Callable] = None):
    """The per-model object `key` of `entry`, built by `make` (default: the provider registered under `key`)."""
    if key not in entry.built:
        entry.built[key] = (make or REGISTRY[key].make)(entry)
    return entry.built[key]


def _nothing() -> None:
    return None
