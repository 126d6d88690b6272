"""Small layers and helpers shared by the MLP-centric reference models (Mixer, ResMLP, gMLP, ViP, FF-only).

    Affine:  alpha * x + beta                   ResMLP's "norm": a per-channel scale and shift, no statistics

The MLPs (fc1 -> exact GELU -> fc2) are the ViT's `reference.blocks.Mlp`. Parameter names and shapes are timm's
(`fc1`/`fc2`; `alpha`/`beta` of shape (1, 1, D)), so timm state dicts load unchanged into the models built from them.
Also here: the config checks and name-table helpers (`resolve`, `list_names`, `with_overrides`) every family's config
module uses, the readers of timm modules the Mixer / ResMLP / gMLP interop modules share (all three are timm's
`MlpMixer` class), and timm's MlpMixer init, so that no family imports another.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..validation import check_images


class Affine(nn.Module):
    """ResMLP's Affine: alpha * x + beta per channel. Shapes (1, 1, D) as timm stores them (the deit checkpoint
    stores (D,); both broadcast the same over (B, N, D))."""

    def __init__(self, dim: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x):  # (B, N, D)
        return self.alpha * x + self.beta


def mix_tokens(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply `layer` (acting on its input's last dim, of size N) across the tokens of x (B, N, C): (B, N, C)."""
    return layer(x.transpose(1, 2)).transpose(1, 2)


def check_model_input(images, config, dtype: torch.dtype, device: torch.device, who: str) -> None:
    """`check_images` with a message fit for token-mixing models: their token-mixing weights are (N, N) or (N, hidden)
    matrices tied to the patch grid, so a model built for one image size cannot take another (no position embedding
    to resize)."""
    if isinstance(images, torch.Tensor) and images.dim() == 4 and images.shape[0] > 0 \
            and images.shape[1] == config.in_chans and tuple(images.shape[2:]) != (config.img_size,) * 2 \
            and not (images.shape[2] % config.patch_size or images.shape[3] % config.patch_size):
        h, w = images.shape[2:]
        raise ValueError(f"{who} was built for {config.img_size}x{config.img_size} images ({config.num_patches} "
                         f"tokens), got {h}x{w}: its token-mixing layers are sized to the token count, so build a "
                         f"model with img_size={h}" + ("" if h == w else " (non-square inputs are not supported)"))
    check_images(images, in_chans=config.in_chans, img_size=config.img_size, patch_size=config.patch_size,
                 dtype=dtype, device=device, who=who)


def check_positive_ints(config, fields) -> None:
    for field in fields:
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{field} must be a positive int, got {value!r}")


def check_common(config, stems) -> None:
    """The checks every MLP family shares: sizes, classes, stem (hMLP at 16x16 patches only), eps."""
    check_positive_ints(config, ("img_size", "patch_size", "in_chans", "embed_dim", "depth"))
    if isinstance(config.num_classes, bool) or not isinstance(config.num_classes, int) or config.num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0, got {config.num_classes!r}")
    if config.img_size % config.patch_size:
        raise ValueError(f"img_size {config.img_size} is not a multiple of patch_size {config.patch_size}")
    if config.stem not in stems:
        raise ValueError(f"stem must be one of {stems}, got {config.stem!r}")
    if config.stem != "linear":
        if config.patch_size != 16:
            raise ValueError(f"stem={config.stem!r}: the hMLP stem is defined for 16x16 patches (4x4, 2x2, 2x2), "
                             f"got patch_size={config.patch_size}")
        if config.embed_dim % 4:
            raise ValueError(f"stem={config.stem!r}: the hMLP stem needs embed_dim divisible by 4, got "
                             f"{config.embed_dim}")


def check_eps(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a float > 0, got {value!r}")


def resolve(name, family: str, tables: list[dict], aliases: dict):
    """Look `name` up in the family's tables and aliases; KeyError naming every known name otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    name = aliases.get(name, name)
    for table in tables:
        if name in table:
            return table[name]
    known = [n for table in tables for n in table] + list(aliases)
    raise KeyError(f"unknown {family} model name {name!r}. Known: {', '.join(known)}")


def list_names(tables: list[dict], tiny: dict, include_tiny: bool) -> list[str]:
    """A family's model names: those of `tables`, then the tiny test models' when asked."""
    names = [name for table in tables for name in table]
    return names + list(tiny) if include_tiny else names


def with_overrides(config, overrides: dict):
    """`config` with dataclass field overrides; TypeError naming the unknown fields and listing the valid ones."""
    if not overrides:
        return config
    valid = [f.name for f in dataclasses.fields(config)]
    unknown = set(overrides) - set(valid)
    if unknown:
        raise TypeError(f"unknown {type(config).__name__} overrides {sorted(unknown)}; valid: {valid}")
    return config.replace(**overrides)


@torch.no_grad()
def init_timm_mixer_(model: nn.Module, conv_init) -> None:
    """timm's MlpMixer init for Mixer and gMLP: Xavier-uniform block linears, `conv_init` on the stem's convolutions,
    unit norms. The head gets a small random init instead of timm's zeros, so a fresh model's logits depend on its
    input."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            if name == "head":
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            else:
                init_linear_(m)
        elif isinstance(m, nn.Conv2d):
            conv_init(m)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_linear_(module: nn.Module) -> None:
    """timm's Mixer init for the block linears: Xavier-uniform weights, zero biases."""
    nn.init.xavier_uniform_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------------------------
# timm interop: readers shared by the three families (all are timm's `MlpMixer` class with another block_layer)
# ---------------------------------------------------------------------------------------------------------------
def read_timm_common(module: nn.Module, block_class: str, family: str) -> dict:
    """Fields every timm MlpMixer-based model shares: img_size, patch_size, in_chans, num_classes, embed_dim, depth.
    Raises ValueError for a stem, pooling, head, block type or training-mode regulariser the reference lacks."""
    if type(module).__name__ != "MlpMixer":
        raise ValueError(f"expected a timm MlpMixer module ({family}), got {type(module).__name__}")
    if getattr(module, "global_pool", None) != "avg":
        raise ValueError(f"{family}: global_pool={getattr(module, 'global_pool', None)!r} is not supported (the "
                         "reference average-pools the tokens: global_pool='avg')")
    stem = module.stem
    proj = getattr(stem, "proj", None)
    if type(stem).__name__ != "PatchEmbed" or not isinstance(proj, nn.Conv2d):
        raise ValueError(f"{family}: stem {type(stem).__name__} is not timm's linear PatchEmbed")
    k, s = proj.kernel_size, proj.stride
    if k[0] != k[1] or tuple(s) != tuple(k) or tuple(proj.padding) != (0, 0) or proj.groups != 1 \
            or proj.bias is None:
        raise ValueError(f"{family}: stem conv kernel {tuple(k)}, stride {tuple(s)}, padding {proj.padding}, "
                         f"bias {proj.bias is not None}: the reference needs a square patch conv with "
                         "kernel = stride, no padding, with bias")
    if not isinstance(stem.norm, nn.Identity):
        raise ValueError(f"{family}: stem norm {type(stem.norm).__name__} (timm's stem_norm=True) is not supported")
    if not getattr(stem, "flatten", True) or getattr(stem, "dynamic_img_pad", False):
        raise ValueError(f"{family}: the stem must flatten to (B, N, D) without dynamic padding")
    img = stem.img_size
    if img is None or img[0] != img[1]:
        raise ValueError(f"{family}: img_size {img} is not supported (square images of a fixed size only)")
    blocks = list(module.blocks)
    if not blocks:
        raise ValueError(f"{family}: the model has no blocks")
    for i, block in enumerate(blocks):
        if type(block).__name__ != block_class:
            raise ValueError(f"{family}: blocks.{i} is a {type(block).__name__}, expected timm's {block_class}")
    head = module.head
    if isinstance(head, nn.Linear):
        num_classes = head.out_features
        if head.bias is None:
            raise ValueError(f"{family}: a head without bias is not supported")
    elif isinstance(head, nn.Identity):
        num_classes = 0
    else:
        raise ValueError(f"{family}: head {type(head).__name__} is not supported (nn.Linear or nn.Identity)")
    if module.training:
        for name, m in module.named_modules():
            p = getattr(m, "p", None) if isinstance(m, nn.Dropout) else getattr(m, "drop_prob", None)
            if p:
                raise ValueError(f"{family}: {name} ({type(m).__name__}, p={p}) is active in train mode; the "
                                 "reference has eval semantics: call module.eval() first")
    return dict(img_size=img[0], patch_size=k[0], in_chans=proj.in_channels, num_classes=num_classes,
                embed_dim=proj.out_channels, depth=len(blocks))


def layer_norm_eps(norm: nn.Module, dim: int, where: str) -> float:
    """eps of a LayerNorm over `dim` channels with weight and bias; ValueError naming `where` otherwise."""
    if type(norm) is not nn.LayerNorm:
        raise ValueError(f"{where}: norm layer {type(norm).__name__} is not supported (nn.LayerNorm)")
    if tuple(norm.normalized_shape) != (dim,) or not norm.elementwise_affine or norm.bias is None:
        raise ValueError(f"{where}: LayerNorm{tuple(norm.normalized_shape)} with elementwise_affine="
                         f"{norm.elementwise_affine}, bias={norm.bias is not None}; expected an affine "
                         f"LayerNorm over {dim} channels")
    return float(norm.eps)


def check_timm_mlp(mlp: nn.Module, where: str, mlp_class: str = "Mlp") -> tuple[int, int]:
    """(in_features, hidden) of timm's fc1 -> GELU -> fc2 MLP; ValueError for anything else (another activation,
    a norm inside, a gated/conv MLP, missing biases)."""
    if type(mlp).__name__ != mlp_class:
        raise ValueError(f"{where}: {type(mlp).__name__} is not supported (timm's {mlp_class})")
    act = mlp.act
    if type(act) is not nn.GELU or act.approximate != "none":
        desc = f"GELU(approximate={act.approximate!r})" if isinstance(act, nn.GELU) else type(act).__name__
        raise ValueError(f"{where}: activation {desc} is not supported (exact-erf nn.GELU only)")
    if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        raise ValueError(f"{where}: a norm inside the MLP ({type(mlp.norm).__name__}) is not supported")
    for fc in ("fc1", "fc2"):
        layer = getattr(mlp, fc)
        if type(layer) is not nn.Linear or layer.bias is None:
            raise ValueError(f"{where}.{fc}: {type(layer).__name__} (bias {getattr(layer, 'bias', None) is not None})"
                             " is not supported (nn.Linear with bias)")
    return mlp.fc1.in_features, mlp.fc1.out_features


def same_value(values: list, what: str, family: str):
    if any(v != values[0] for v in values):
        raise ValueError(f"{family}: {what} differs between blocks ({sorted(set(values))}); the reference uses one "
                         "value for all blocks")
    return values[0]


def load_from_timm(model_class, config, module: nn.Module) -> nn.Module:
    """Build `model_class(config)` in the module's dtype and device, load its state dict strictly, eval mode."""
    p = next(module.parameters())
    model = model_class(config).to(dtype=p.dtype, device=p.device)
    model.load_state_dict(module.state_dict(), strict=True)
    return model.eval()


def export_state_dict(model: nn.Module, model_class, family: str) -> dict[str, torch.Tensor]:
    if not isinstance(model, model_class):
        raise ValueError(f"expected a reference {model_class.__name__}, got {type(model).__name__}")
    cfg = model.config
    if getattr(cfg, "num_parallel", 1) != 1:
        raise ValueError(f"{family}: num_parallel={cfg.num_parallel} has no timm layout (timm's blocks are "
                         "sequential, K = 1)")
    if cfg.stem != "linear":
        raise ValueError(f"{family}: stem={cfg.stem!r} has no timm layout (timm's stem is the linear PatchEmbed)")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
