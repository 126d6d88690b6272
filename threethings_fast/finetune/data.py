"""A small real image set that needs no download: scikit-learn's handwritten digits (1797 images of 8x8 pixels,
16 grey levels, shipped inside the scikit-learn wheel), upsampled to ViT-sized 3-channel images."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Split:
    images: torch.Tensor   # (n, 3, S, S) float32, normalised to mean 0 / std ~1
    labels: torch.Tensor   # (n,) int64

    def __len__(self) -> int:
        return self.labels.shape[0]


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """(1797, 8, 8) float32 in [0, 1] and (1797,) int64 labels 0-9."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the fine-tuning demo uses scikit-learn's digits: pip install scikit-learn") from e
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    return images, labels


def make_task(images8: torch.Tensor, labels: torch.Tensor, classes, img_size: int, val_fraction: float = 0.25,
              seed: int = 0) -> tuple[Split, Split]:
    """Train/val splits of the digits in `classes` (relabelled 0..len-1), bilinearly upsampled to img_size and
    replicated to 3 channels. The split is a fixed permutation (seed), so every run sees the same images."""
    classes = list(classes)
    keep = torch.isin(labels, torch.tensor(classes))
    x, y = images8[keep], labels[keep]
    remap = torch.full((int(labels.max()) + 1,), -1, dtype=torch.int64)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    y = remap[y]
    x = F.interpolate(x[:, None], size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * len(y)))
    val, train = perm[:n_val], perm[n_val:]
    return Split(x[train], y[train]), Split(x[val], y[val])
