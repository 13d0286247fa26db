"""``stl10``: STL-10 as its authors intended it for unsupervised learning — pretraining
on the 100,000-image ``unlabeled`` split, evaluators on the labelled ``train`` (5,000)
and ``test`` (8,000) splits, 10 classes, 96×96 px (Coates, Lee & Ng 2011;
https://cs.stanford.edu/~acoates/stl10/).

The binaries are read here rather than through torchvision's ``STL10``: its loader
reads the whole 2.7 GB ``unlabeled_X.bin`` into numpy and checks the MD5 of every file
(all five, for each split) on every construction, while this module copies the file in
chunks into one contiguous tensor (peak memory: the 2.7 GB result and a 226 MB buffer)
and checks sizes only. torchvision still downloads and verifies the archive when it is
missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ssl_bench.core.errors import DataError
from ssl_bench.core.registry import DATASETS
from ssl_bench.datasets.base import ImageData, default_data_root

#: torchvision's layout under ``--data-root``: ``stl10_binary/<file>``.
FOLDER = "stl10_binary"
FILES = ("unlabeled_X.bin", "train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin",
         "class_names.txt")
SIDE = 96  # px
_IMAGE_BYTES = 3 * SIDE * SIDE
_CHUNK = 8192  # images read at a time: a 226 MB buffer


def read_images(path: Path) -> torch.Tensor:
    """An STL-10 image binary as ``uint8`` ``(N, 3, 96, 96)``, contiguous.

    Each image is stored channel by channel, each channel column-major, so rows and
    columns are swapped while copying (the layout described on the dataset's page).

    Raises:
        DataError: if the file's size is not a whole number of images.
    """
    size = path.stat().st_size
    if size == 0 or size % _IMAGE_BYTES:
        raise DataError(f"{path} has {size} bytes, not a whole number of {SIDE}×{SIDE} RGB "
                        f"images ({_IMAGE_BYTES} bytes each); the copy is truncated or corrupt")
    count = size // _IMAGE_BYTES
    images = torch.empty(count, 3, SIDE, SIDE, dtype=torch.uint8)
    with open(path, "rb") as f:
        for start in range(0, count, _CHUNK):
            chunk = np.fromfile(f, dtype=np.uint8, count=min(_CHUNK, count - start) * _IMAGE_BYTES)
            images[start:start + _CHUNK] = torch.from_numpy(chunk.reshape(-1, 3, SIDE, SIDE)
                                                            ).transpose(2, 3)
    return images


def _read_labels(path: Path, count: int) -> torch.Tensor:
    """1-based uint8 labels → ``int64`` ``(count,)`` class indices.

    Raises:
        DataError: if the file does not hold one label in 1…10 per image.
    """
    labels = torch.from_numpy(np.fromfile(path, dtype=np.uint8).astype(np.int64)) - 1
    if len(labels) != count or (len(labels) and not 0 <= int(labels.min()) <= int(labels.max())
                                < 10):
        raise DataError(f"{path} holds {len(labels)} labels (range 1…10 expected) for "
                        f"{count} images; the copy is corrupt")
    return labels


def _ensure_files(root: Path, download: bool) -> Path:
    """The ``stl10_binary`` folder under ``root``, downloaded by torchvision when a file
    is missing and ``download`` is set."""
    folder = root / FOLDER
    missing = [f for f in FILES if not (folder / f).is_file()]
    if not missing:
        return folder
    if not download:
        raise DataError(f"STL10 not found under --data-root {root}: {folder} lacks "
                        f"{', '.join(missing)} (torchvision's layout: {FOLDER}/"
                        f"{{{','.join(FILES)}}})")
    from ssl_bench.datasets.torchvision_sets import _torchvision_split

    _torchvision_split("STL10", root, download, True, split="test")  # fetches every file
    return folder


@DATASETS.register("stl10")
def load_stl10(root: Path | None = None, download: bool = True) -> ImageData:
    """STL-10: ``unlabeled`` (100,000) as pretraining images, ``train`` (5,000) and
    ``test`` (8,000) as the labelled splits; downloaded (2.6 GB archive) to the cache
    folder unless ``--data-root`` holds ``stl10_binary/``."""
    folder = _ensure_files(root or default_data_root("stl10"), download)
    splits = []
    for split in ("train", "test"):
        images = read_images(folder / f"{split}_X.bin")
        splits += [images, _read_labels(folder / f"{split}_y.bin", len(images))]
    classes = (folder / "class_names.txt").read_text(encoding="utf-8").split()
    if len(classes) != 10:
        raise DataError(f"{folder / 'class_names.txt'} names {len(classes)} classes, not 10")
    return ImageData("stl10", *splits, classes, hflip=True,
                     pretrain_images=read_images(folder / "unlabeled_X.bin"),
                     pretrain_split="unlabeled")


load_stl10.images = (113_000, 3)  # unlabeled, train, test; for the memory check before download
