"""Task deltas: store only what a fine-tuning mode trained, and re-apply it onto the base model.

A delta file (written with torch.save, read with torch.load(weights_only=True): loading never runs code) holds

    format, version        "threethings_fast.delta", 1
    train                  "attn" | "ffn" | "full"
    config                 the fine-tuned model's ViTConfig as a dict (img_size / num_classes may differ from the
                           base's: resolution adaptation, new label set; every other field must match)
    base_fingerprint       sha256 of the base's frozen tensors (see `base_fingerprint`)
    tensors                {state-dict key in our layout (blocks.i.attns.j.attn.qkv.weight, ...): tensor}
    tensors_sha256         sha256 of the stored tensors' raw bytes: a corrupt file is refused, not half-applied

Base fingerprint: sha256 over the state-dict entries that mode `train` does NOT train (parameters and buffers),
in sorted key order, each as `key, shape, values` with the values canonicalised to little-endian float64 (int64 for
integer buffers). It is therefore computable from the base alone before fine-tuning, unchanged by fine-tuning
(those tensors are frozen), independent of file layout and of the key order of a state dict, and equal for a
float32 model and its exact float64 copy (so a delta trained in float32 applies onto `base.double()`). A base
rounded to bfloat16 is a different base and is refused.

Storage for "attn" on ViT-B (B12x1, 224, 1000 classes): qkv+proj 12 x 2,362,368 = 28,348,416, head 769,000,
pos_embed 151,296 -> 29,268,712 of 86,586,088 parameters = 33.8% of the bytes (`storage_report("B12x1")`).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from ..checkpoint import CheckpointError
from ..configs import ViTConfig, from_name
from ..reference.model import VisionTransformer
from .adapt import replace_head
from .roles import TRAIN_MODES, _check_model, _check_mode, delta_keys, finetune_mode_of, frozen_keys

DELTA_FORMAT = "threethings_fast.delta"
DELTA_VERSION = 1
# Fields a task may change relative to its base: everything else must be identical.
ADAPTABLE_FIELDS = ("img_size", "num_classes")


class DeltaError(CheckpointError):
    """A delta file is unreadable, corrupt, or does not belong to the given base model."""


def _canonical_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu")
    t = t.to(torch.float64 if t.is_floating_point() else torch.int64)
    return t.contiguous().reshape(-1).numpy().astype("<f8" if t.is_floating_point() else "<i8").tobytes()


def _raw_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes()


def base_fingerprint(model: VisionTransformer, train: str = "attn") -> str:
    """sha256 (hex) of the tensors of `model` that fine-tuning mode `train` leaves frozen (see the module
    docstring). Compute it on the base before fine-tuning; the fine-tuned model gives the same value."""
    _check_model(model)
    _check_mode(train)
    sd = model.state_dict()
    h = hashlib.sha256(f"{DELTA_FORMAT}/{train}\n".encode())
    for key in frozen_keys(model, train):
        t = sd[key]
        h.update(f"{key}:{tuple(t.shape)}\n".encode())
        h.update(_canonical_bytes(t))
    return h.hexdigest()


_fingerprint = base_fingerprint  # save_delta's argument of the same name shadows the function there


def _tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(_raw_bytes(t))
    return h.hexdigest()


def _state_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class Delta:
    """A task delta in memory (what `read_delta` returns and `save_delta` writes)."""

    train: str
    config: ViTConfig
    base_fingerprint: str
    tensors: dict

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    @property
    def nbytes(self) -> int:
        return _state_bytes(self.tensors.values())


@dataclass
class DeltaStats:
    """What `save_delta` wrote: the delta's tensor bytes against the whole fine-tuned model's."""

    path: str
    train: str
    delta_params: int
    delta_bytes: int
    model_bytes: int
    file_bytes: int

    @property
    def ratio(self) -> float:
        """delta bytes / full model bytes (~1/3 for "attn" on ViT-B)."""
        return self.delta_bytes / max(1, self.model_bytes)

    def __str__(self) -> str:
        return (f"delta ({self.train}): {self.delta_params:,} params, {self.delta_bytes / 2**20:.2f} MiB of "
                f"{self.model_bytes / 2**20:.2f} MiB for the full model ({100 * self.ratio:.1f}%); "
                f"file {self.file_bytes / 2**20:.2f} MiB -> {self.path}")


def save_delta(model: VisionTransformer, path: Union[str, os.PathLike], base_fingerprint: Optional[str] = None,
               train: Optional[str] = None) -> DeltaStats:
    """Write the tensors that mode `train` trained (default: the mode of the last `freeze(model, ...)`) to `path`.

    base_fingerprint: `base_fingerprint(base, train)` computed on the base before fine-tuning. The frozen tensors
    of `model` are hashed again and must give the same value — this catches a "frozen" tensor that changed (a
    BatchNorm left in train mode, an optimizer that touched it). None: use the hash of `model`'s frozen tensors
    (equal to the base's as long as they really stayed frozen). The file is written atomically."""
    _check_model(model)
    train = train or finetune_mode_of(model)
    if train is None:
        raise ValueError("save_delta needs train='attn'|'ffn'|'full' (or a model prepared with freeze())")
    _check_mode(train)
    current = _fingerprint(model, train)
    if base_fingerprint is not None and base_fingerprint != current:
        raise DeltaError(f"the frozen tensors of this model ({train!r} mode) no longer match the base fingerprint "
                         f"{base_fingerprint[:16]}...: something outside the {train!r} parameters changed during "
                         f"fine-tuning (BatchNorm statistics in train mode? use finetune.train_mode(model)), or "
                         f"the fingerprint is of another base")
    sd = model.state_dict()
    tensors = {k: sd[k].detach().to("cpu").clone() for k in delta_keys(model, train)}
    payload = {
        "format": DELTA_FORMAT,
        "version": DELTA_VERSION,
        "train": train,
        "config": dataclasses.asdict(model.config),
        "base_fingerprint": current,
        "tensors": tensors,
        "tensors_sha256": _tensors_digest(tensors),
        "torch_version": str(torch.__version__),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return DeltaStats(path=str(path), train=train, delta_params=sum(t.numel() for t in tensors.values()),
                      delta_bytes=_state_bytes(tensors.values()), model_bytes=_state_bytes(sd.values()),
                      file_bytes=path.stat().st_size)


def read_delta(path: Union[str, os.PathLike]) -> Delta:
    """Read and validate a delta file (no base needed). Raises DeltaError for a truncated, corrupt or foreign
    file; FileNotFoundError if there is none."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no delta file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors differ by torch version; all mean the same here
        raise DeltaError(f"cannot read delta file {path}: it is truncated or corrupt, or not a torch file "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(payload, dict) or payload.get("format") != DELTA_FORMAT:
        raise DeltaError(f"{path} is not a threethings_fast delta file (no format tag {DELTA_FORMAT!r})")
    if payload.get("version") != DELTA_VERSION:
        raise DeltaError(f"{path}: delta format version {payload.get('version')!r} is not supported "
                         f"(this threethings_fast reads version {DELTA_VERSION})")
    missing = [k for k in ("train", "config", "base_fingerprint", "tensors", "tensors_sha256") if k not in payload]
    if missing:
        raise DeltaError(f"{path}: corrupt delta, missing fields {missing}")
    train, tensors = payload["train"], payload["tensors"]
    if train not in TRAIN_MODES:
        raise DeltaError(f"{path}: corrupt delta, unknown train mode {train!r}")
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in tensors.items()):
        raise DeltaError(f"{path}: corrupt delta, 'tensors' is not a mapping of names to tensors")
    if _tensors_digest(tensors) != payload["tensors_sha256"]:
        raise DeltaError(f"{path}: corrupt delta, the tensors' checksum does not match the one stored at save time")
    try:
        config = ViTConfig(**payload["config"])
    except (TypeError, ValueError) as e:
        raise DeltaError(f"{path}: corrupt delta, bad config {payload['config']!r}: {e}") from e
    return Delta(train=train, config=config, base_fingerprint=payload["base_fingerprint"], tensors=tensors)


def check_delta(base: VisionTransformer, delta: Delta, fingerprint: Optional[str] = None) -> None:
    """Raise DeltaError unless `delta` applies onto `base`: same architecture (img_size and num_classes may
    differ), same frozen weights (fingerprint; pass a precomputed `base_fingerprint(base, delta.train)` to skip
    hashing), and exactly the expected tensors with the expected shapes."""
    _check_model(base)
    a = dataclasses.asdict(base.config)
    b = dataclasses.asdict(delta.config)
    diff = {k: (a[k], b[k]) for k in a if k not in ADAPTABLE_FIELDS and a[k] != b[k]}
    if diff:
        raise DeltaError("the delta was fine-tuned from a different architecture: "
                         + ", ".join(f"{k} base={x!r} delta={y!r}" for k, (x, y) in diff.items()))
    fingerprint = fingerprint or _fingerprint(base, delta.train)
    if fingerprint != delta.base_fingerprint:
        raise DeltaError(f"wrong base model: the delta was fine-tuned ({delta.train!r} mode) from a base whose frozen "
                         f"weights hash to {delta.base_fingerprint[:16]}..., this base's hash to {fingerprint[:16]}...")
    with torch.device("meta"):  # shapes only, no memory, no init cost
        target = VisionTransformer(delta.config)
    expected = {k: tuple(v.shape) for k, v in target.state_dict().items() if k in set(delta_keys(target, delta.train))}
    missing = sorted(set(expected) - set(delta.tensors))
    unexpected = sorted(set(delta.tensors) - set(expected))
    shapes = [f"{k}: {tuple(delta.tensors[k].shape)} vs {s}" for k, s in expected.items()
              if k in delta.tensors and tuple(delta.tensors[k].shape) != s]
    if missing or unexpected or shapes:
        raise DeltaError(f"delta tensors do not fit a {delta.train!r} fine-tune of this model: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}, shape mismatches {shapes[:8]}")


@torch.no_grad()
def apply_delta(model: VisionTransformer, delta: Delta) -> VisionTransformer:
    """Write `delta` into `model` in place (resizing pos_embed / replacing the head first when the task changed
    them), casting to the model's dtype and device. No checks: use `load_delta` unless you called check_delta."""
    if model.config.img_size != delta.config.img_size:
        model.set_img_size(delta.config.img_size)
    if model.config.num_classes != delta.config.num_classes:
        replace_head(model, delta.config.num_classes)
    sd = model.state_dict()
    for key, value in delta.tensors.items():
        sd[key].copy_(value)  # state_dict tensors share storage with the parameters; copy_ casts dtype/device
    return model


def load_delta(base: VisionTransformer, delta: Union[str, os.PathLike, Delta], inplace: bool = False,
               fingerprint: Optional[str] = None) -> VisionTransformer:
    """The fine-tuned model: `base` with the task `delta` (a path or a Delta) applied.

    Default: a deep copy of `base` is returned and `base` is untouched (one base serves many tasks); inplace=True
    modifies and returns `base` itself. Everything is checked before anything is written: DeltaError for a
    corrupt/truncated file, a different architecture, or a wrong base (fingerprint mismatch). Tensors are cast to
    the base's dtype: loading a float32 delta onto `base.double()` is exact."""
    if not isinstance(delta, Delta):
        delta = read_delta(delta)
    check_delta(base, delta, fingerprint)
    model = base if inplace else copy.deepcopy(base)
    return apply_delta(model, delta)


def storage_report(model_or_config: Union[str, ViTConfig, VisionTransformer] = "B12x1",
                   modes=("attn", "ffn", "full"), dtype: torch.dtype = torch.float32) -> str:
    """Analytic bytes stored per extra task, by mode (no weights are allocated: the model is built on the meta
    device). Returns a markdown table."""
    if isinstance(model_or_config, VisionTransformer):
        config = model_or_config.config
    elif isinstance(model_or_config, str):
        config = from_name(model_or_config)
    else:
        config = model_or_config
    with torch.device("meta"):
        m = VisionTransformer(config)
    sd = m.state_dict()
    size = torch.empty((), dtype=dtype).element_size()
    total = sum(t.numel() for t in sd.values())
    rows = [f"storage per task, {config.embed_dim}-wide depth {config.depth} K={config.num_parallel} "
            f"img {config.img_size} ({config.num_classes} classes), {dtype}:",
            "| mode | stored params | stored MiB | of the full model |", "|---|---:|---:|---:|"]
    for mode in modes:
        n = sum(sd[k].numel() for k in delta_keys(m, mode))
        rows.append(f"| {mode} | {n:,} | {n * size / 2**20:.1f} | {100 * n / total:.1f}% |")
    return "\n".join(rows)
