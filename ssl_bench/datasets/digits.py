"""``digits``: scikit-learn's embedded 8×8 handwritten digits (works offline)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssl_bench.core.registry import DATASETS
from ssl_bench.core.rundir import atomic_torch_save
from ssl_bench.datasets.base import ImageData, cache_dir


def _split_from_sklearn() -> dict[str, torch.Tensor]:
    """The 1,797 images upsampled to 32×32 ``uint8`` and a fixed stratified 75/25 split:
    ``{"xtr", "ytr", "xte", "yte"}``."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images / 16.0 * 255.0).float()[:, None]
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(bunch.target).long()
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.25,
                                           stratify=bunch.target, random_state=0)
    return {"xtr": images[train_idx], "ytr": labels[train_idx],
            "xte": images[test_idx], "yte": labels[test_idx]}


@DATASETS.register("digits")
def load_digits(root: Path | None = None, download: bool = True) -> ImageData:
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes),
    upsampled to 32×32 grayscale; a fixed stratified 75/25 train/test split.
    Embedded in scikit-learn, so it works offline; ``root`` is ignored. The split is
    cached under ``$SSL_BENCH_CACHE`` per scikit-learn version (importing
    scikit-learn's datasets costs a run about 2 s of start-up)."""
    cached = cache_dir() / "decoded" / f"digits-sklearn{metadata.version('scikit-learn')}.pt"
    if cached.exists():
        split = torch.load(cached, weights_only=True)
    else:
        split = _split_from_sklearn()
        try:
            atomic_torch_save(split, cached)
        except OSError:  # a read-only cache only costs the next run the same 2 s
            pass
    return ImageData("digits", split["xtr"], split["ytr"], split["xte"], split["yte"],
                     [str(i) for i in range(10)], hflip=False)


load_digits.images = (1797, 1)  # (count, channels), for the memory check before caching
