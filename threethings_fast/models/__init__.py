"""Model families: one folder per family (`models/<family>/`), each holding its config, reference model, exact
folding and fused forward, and one `Family` entry here that names them.

    family      config / reference model                        fold -> packed weights      fused forward
    vit         configs.ViTConfig / reference.VisionTransformer  vit.folding.fold_model      vit.forward.vit_forward
    mixer       mixer.MixerConfig / mixer.MlpMixer               mixer.fold.fold_model       mixer.forward.forward
    resmlp      resmlp.ResMLPConfig / resmlp.ResMLP              ...
    gmlp        gmlp.GMLPConfig / gmlp.GMLP                      ...
    vip         vip.ViPConfig / vip.VisionPermutator             ...
    ffonly      ffonly.FFOnlyConfig / ffonly.FFOnly              ...

Entries name their parts as "module:attribute" strings, imported on first use: importing the package stays cheap and
no family imports another. The ViT's config and reference model keep their historical homes (`configs`,
`reference/`), which the rest of the package and users import; its folding and forward live in `models/vit/`.

Adding a family is the checklist in docs/DESIGN.md ("Adding a model family").
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Family:
    """One model family. Every path is "module:attribute".

    config          the frozen config dataclass
    reference       the reference nn.Module class (built from a config)
    resolve_name    name -> config (KeyError for unknown names)
    list_names      () -> the family's model names
    fold            reference model -> float64 folded weights (with a `.config`); None: no fused path yet
    forward         (ops, packed weights, images) -> logits: the fused forward over the ops protocol
                    (`fused.protocol.FusedOps`)
    """

    name: str
    title: str
    config: str
    reference: str
    resolve_name: str
    list_names: str
    fold: Optional[str] = None
    forward: Optional[str] = None

    def config_type(self) -> type:
        return _load(self.config)

    def reference_type(self) -> type:
        return _load(self.reference)

    def resolve(self, name: str):
        return _load(self.resolve_name)(name)

    def names(self) -> list[str]:
        return list(_load(self.list_names)())

    @property
    def fusable(self) -> bool:
        return self.fold is not None and self.forward is not None

    def folder(self) -> Callable:
        if self.fold is None:
            raise NotImplementedError(f"{self.title}: no fused inference path yet (reference model only)")
        return _load(self.fold)

    def forwarder(self) -> Callable:
        if self.forward is None:
            raise NotImplementedError(f"{self.title}: no fused inference path yet (reference model only)")
        return _load(self.forward)


def _family(name: str, title: str, config: str, reference: str, fused: bool) -> Family:
    pkg = f"threethings_fast.models.{name}"
    return Family(name=name, title=title, config=f"{pkg}:{config}", reference=f"{pkg}:{reference}",
                  resolve_name=f"{pkg}:resolve_name", list_names=f"{pkg}:list_models",
                  fold=f"{pkg}.fold:fold_model" if fused else None,
                  forward=f"{pkg}.forward:forward" if fused else None)


FAMILIES: dict[str, Family] = {
    "vit": Family(name="vit", title="ViT", config="threethings_fast.configs:ViTConfig",
                  reference="threethings_fast.reference.model:VisionTransformer",
                  resolve_name="threethings_fast.configs:resolve_name", list_names="threethings_fast.configs:list_models",
                  fold="threethings_fast.models.vit.folding:fold_model",
                  forward="threethings_fast.models.vit.forward:vit_forward"),
    "mixer": _family("mixer", "MLP-Mixer", "MixerConfig", "MlpMixer", fused=True),
    "resmlp": _family("resmlp", "ResMLP", "ResMLPConfig", "ResMLP", fused=True),
    "gmlp": _family("gmlp", "gMLP", "GMLPConfig", "GMLP", fused=True),
    "vip": _family("vip", "Vision Permutator", "ViPConfig", "VisionPermutator", fused=True),
    "ffonly": _family("ffonly", "feed-forward-only", "FFOnlyConfig", "FFOnly", fused=True),
}


def family_of(obj) -> Family:
    """The family of a config or a reference model instance (TypeError for anything else)."""
    for family in FAMILIES.values():
        if isinstance(obj, (family.config_type(), family.reference_type())):
            return family
    raise TypeError(f"{type(obj).__name__} is not a config or reference model of a known family "
                    f"({', '.join(f.title for f in FAMILIES.values())})")


def resolve_any(name: str):
    """The config of a model name of any family: the ViT's names first, then each family's (KeyError lists them)."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    for family in FAMILIES.values():
        try:
            return family.resolve(name)
        except KeyError:
            continue
    known = {f.title: f.names() for f in FAMILIES.values()}
    listing = "; ".join(f"{title}: {', '.join(names)}" for title, names in known.items())
    raise KeyError(f"unknown model name {name!r}. Known — {listing}; also the paper's ViT short names like 'S18x2'")
