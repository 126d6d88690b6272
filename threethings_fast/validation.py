"""Input checks shared by the reference and the fused models: bad input gets a clear error, never a wrong answer."""
from __future__ import annotations

import torch


def concrete_device(device) -> torch.device:
    """`device` as a torch.device with its index filled in: "cuda" -> cuda:<current device>.

    Tensors always carry an index and ``torch.device("cuda") != torch.device("cuda:0")``, so a model that kept the
    bare "cuda" a user passed would refuse every input. Other device types are returned as given."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def check_images(images, *, in_chans: int, img_size: int, patch_size: int, dtype: torch.dtype,
                 device: torch.device, who: str = "model") -> None:
    """Raise a clear error unless `images` is a non-empty (B, in_chans, img_size, img_size) tensor of the model's
    dtype on the model's device."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{who} expects a torch.Tensor of images, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{who} expects images of shape (B, {in_chans}, H, W), got a tensor of rank "
                         f"{images.dim()} with shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if b == 0:
        raise ValueError(f"{who} got an empty batch (B = 0): expected at least one image")
    if c != in_chans:
        raise ValueError(f"{who} expects {in_chans} input channels, got {c} (shape {tuple(images.shape)})")
    if h % patch_size or w % patch_size:
        raise ValueError(f"{who}: image size {h}x{w} is not divisible by the patch size {patch_size}")
    if h != img_size or w != img_size:
        raise ValueError(f"{who} was built for {img_size}x{img_size} images, got {h}x{w}; resize the position "
                         f"embedding first (model.set_img_size({h}) / threethings_fast.convert of a resized model)"
                         if h == w else
                         f"{who} was built for {img_size}x{img_size} images, got {h}x{w} (non-square inputs are "
                         f"not supported)")
    check_image_dtype(images, dtype, who)
    if images.device != concrete_device(device):
        raise RuntimeError(f"{who} lives on {device} but got images on {images.device}")


def check_image_dtype(images: torch.Tensor, dtype: torch.dtype, who: str = "model") -> None:
    """TypeError unless the images have the model's dtype. Every backend checks this itself too (a kernel that
    casts its input would otherwise run a half-precision model on float32 images without a word)."""
    if images.dtype != dtype:
        raise TypeError(f"{who} holds {dtype} weights but got {images.dtype} images; cast the images "
                        f"(images.to({dtype})) or the model")
