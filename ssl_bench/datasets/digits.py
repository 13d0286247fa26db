"""``digits``: scikit-learn's embedded 8×8 handwritten digits (works offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssl_bench.core.registry import DATASETS
from ssl_bench.datasets.base import ImageData


@DATASETS.register("digits")
def load_digits(root: Path | None = None, download: bool = True) -> ImageData:
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes),
    upsampled to 32×32 grayscale; a fixed stratified 75/25 train/test split.
    Embedded in scikit-learn, so it works offline; ``root`` is ignored."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images / 16.0 * 255.0).float()[:, None]
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(bunch.target).long()
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.25,
                                           stratify=bunch.target, random_state=0)
    return ImageData("digits", images[train_idx], labels[train_idx], images[test_idx],
                     labels[test_idx], [str(i) for i in range(10)], hflip=False)
