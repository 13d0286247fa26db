"""torchvision's datasets: MNIST, Fashion-MNIST, CIFAR-10/100, SVHN (STL-10: :mod:`.stl10`).

Each is downloaded to the cache folder unless ``--data-root`` holds a copy in
torchvision's layout (CIFAR also takes an ImageFolder tree ``train/`` + ``test/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ssl_bench.core.errors import DataError
from ssl_bench.core.registry import DATASETS
from ssl_bench.datasets.base import ImageData, default_data_root
from ssl_bench.datasets.imagefolder import load_imagefolder


def _torchvision_split(cls_name: str, root: Path, download: bool, train: bool, **kw):
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    split_kw = kw if kw else {"train": train}
    try:
        return cls(root=str(root), download=False, **split_kw)
    except (RuntimeError, FileNotFoundError) as missing:
        if not download:
            raise DataError(f"{cls_name} not found under --data-root {root}: {missing}") from None
    try:
        return cls(root=str(root), download=True, **split_kw)
    except Exception as exc:  # network errors come in many types
        raise DataError(
            f"{cls_name} is not under {root} and could not be downloaded "
            f"({exc.__class__.__name__}: {exc}); pass --data-root pointing at an existing copy "
            "in torchvision's layout") from None


def _labels(ds) -> torch.Tensor:
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels
    return torch.as_tensor(np.asarray(labels), dtype=torch.long)


def _torchvision_dataset(name: str, cls_name: str, channels_last: bool, hflip: bool,
                         images: tuple[int, int],
                         split_kw: tuple[dict, dict] | None = None) -> Callable[..., ImageData]:
    """The loader of a torchvision dataset; ``images``: its ``(count, channels)`` (train
    and test), for the memory check before it is downloaded."""
    def load(root: Path | None = None, download: bool = True) -> ImageData:
        root = root or default_data_root(name)
        splits = []
        for train in (True, False):
            kw = split_kw[0 if train else 1] if split_kw else {}
            ds = _torchvision_split(cls_name, root, download, train, **kw)
            data = torch.as_tensor(np.asarray(ds.data))
            if data.ndim == 3:  # (N, H, W) grayscale
                data = data[:, None]
            elif channels_last:
                data = data.permute(0, 3, 1, 2)
            splits.append((data.contiguous(), _labels(ds), list(getattr(ds, "classes", []))))
        (xtr, ytr, classes), (xte, yte, _) = splits
        classes = classes or [str(i) for i in range(int(ytr.max()) + 1)]
        return ImageData(name, xtr, ytr, xte, yte, classes, hflip)

    load.__doc__ = (f"torchvision's {cls_name}; downloaded to the cache folder unless "
                    "--data-root holds it.")
    load.images = images
    return load


def _cifar(name: str, cls_name: str, num_classes: int) -> Callable[..., ImageData]:
    from_torchvision = _torchvision_dataset(name, cls_name, channels_last=True, hflip=True,
                                            images=(60_000, 3))

    def load(root: Path | None = None, download: bool = True) -> ImageData:
        if root is None or not (root / "train").is_dir():
            return from_torchvision(root, download)
        return load_imagefolder(root, name, hflip=True, image_size=32, num_classes=num_classes)

    load.__doc__ = (f"torchvision's {cls_name}, or an ImageFolder tree (train/<class>/…, "
                    "test/<class>/…) when --data-root holds one.")
    load.images = from_torchvision.images
    return load


DATASETS.register("mnist")(_torchvision_dataset("mnist", "MNIST", False, hflip=False,
                                                images=(70_000, 1)))
DATASETS.register("fashion-mnist")(_torchvision_dataset("fashion-mnist", "FashionMNIST", False,
                                                        hflip=True, images=(70_000, 1)))
DATASETS.register("cifar10")(_cifar("cifar10", "CIFAR10", 10))
DATASETS.register("cifar100")(_cifar("cifar100", "CIFAR100", 100))
DATASETS.register("svhn")(_torchvision_dataset("svhn", "SVHN", False, hflip=False,
                                               images=(99_289, 3),  # 73,257 + 26,032
                                               split_kw=({"split": "train"}, {"split": "test"})))
