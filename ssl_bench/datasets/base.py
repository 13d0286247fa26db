"""The decoded form of every dataset, and loading one by its ``--dataset`` name.

Every dataset is loaded into an :class:`ImageData`: ``uint8`` tensors of shape
``(N, C, H, W)`` for the train and test splits plus integer labels, and optionally
unlabeled pretraining images (STL-10's ``unlabeled`` split, a folder's ``unlabeled/``).
Labels are handed to evaluators only; pretext tasks see images alone. Decoded tensors are
cached under ``$SSL_BENCH_CACHE`` (default ``~/.cache/ssl-bench``) so a folder of
JPEGs is decoded once, not once per run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ssl_bench.core.errors import DataError, OptionError, UnknownNameError
from ssl_bench.core.images import resize_uint8, to_float
from ssl_bench.core.memory import check_decoded_fits
from ssl_bench.core.registry import DATASETS
from ssl_bench.core.spec import DataSpec
from ssl_bench.core.subsets import subset_indices

IMAGEFOLDER_PREFIX = "imagefolder:"


@dataclass
class ImageData:
    """A dataset decoded to memory: pretraining images, and labelled train and test
    splits for the evaluators.

    Attributes:
        name: the ``--dataset`` name.
        train_images: ``uint8`` ``(N_train, C, H, W)``.
        train_labels: ``int64`` ``(N_train,)`` class indices.
        test_images: ``uint8`` ``(N_test, C, H, W)``.
        test_labels: ``int64`` ``(N_test,)``.
        class_names: one name per class index.
        hflip: whether a horizontal flip keeps an image natural (photos yes,
            digits no); the trainer flips batches at random when it does.
        pretrain_images: ``uint8`` ``(N_pretrain, C, H, W)`` unlabeled pretraining
            images; ``None``: pretraining uses ``train_images``.
        pretrain_split: where the pretraining images come from, for messages
            (``"train"``, ``"unlabeled"``, ``"unlabeled/"``, ``"all images"``).

    Data with pretraining images only (a flat folder) has empty labelled splits
    (``(0, C, H, W)``) and no class names; :attr:`labelled` is then ``False``.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]
    hflip: bool
    pretrain_images: torch.Tensor | None = None
    pretrain_split: str = "train"

    @property
    def pretraining(self) -> torch.Tensor:
        """The pretraining images, ``uint8`` ``(N_pretrain, C, H, W)``."""
        return self.train_images if self.pretrain_images is None else self.pretrain_images

    @property
    def labelled(self) -> bool:
        """Whether the data has labelled splits for the evaluators."""
        return bool(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.pretraining.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.pretraining.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def spec(self) -> DataSpec:
        """What a pretext task may know of the data: shapes and the channel mean and
        std of a seeded spread of ≤ 10,000 pretraining images (an ImageFolder split is
        sorted by class, so its first images would be one or two classes)."""
        images = self.pretraining
        spread = subset_indices(len(images), min(10_000, len(images)), seed=0)
        x = to_float(images[spread])  # in place: 1.1 GB for 10,000 STL-10 images
        return DataSpec(
            name=self.name, channels=self.channels, image_size=self.image_size,
            mean=tuple(x.mean(dim=(0, 2, 3)).tolist()),
            std=tuple(x.std(dim=(0, 2, 3)).tolist()), hflip=self.hflip,
            num_classes=self.num_classes)

    def resized(self, size: int) -> "ImageData":
        """A copy with every split resized to ``size``×``size`` (bilinear, antialiased)."""
        pretrain = None if self.pretrain_images is None else resize_uint8(self.pretrain_images,
                                                                          size)
        return ImageData(self.name, resize_uint8(self.train_images, size), self.train_labels,
                         resize_uint8(self.test_images, size), self.test_labels,
                         self.class_names, self.hflip, pretrain, self.pretrain_split)


def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$SSL_BENCH_CACHE`` or ``~/.cache/ssl-bench``."""
    return Path(os.environ.get("SSL_BENCH_CACHE", Path.home() / ".cache" / "ssl-bench"))


def default_data_root(name: str) -> Path:
    """Where a dataset is downloaded when ``--data-root`` is not given."""
    return cache_dir() / "data" / name


def load_dataset(name: str, root: str | os.PathLike | None = None, image_size: int | None = None,
                 download: bool = True, option: str = "--dataset",
                 need_labels: bool = False) -> ImageData:
    """Load a dataset by ``--dataset`` name.

    Args:
        name: a registered dataset name or ``imagefolder:<path>``.
        root: ``--data-root``; an existing copy in the layout torchvision uses
            (or, for ``cifar10``/``cifar100``, an ImageFolder tree with
            ``train/`` and ``test/``). ``None``: the cache folder.
        image_size: resize both splits to this side in pixels; ``None`` keeps the
            native size (an ImageFolder tree is decoded at 64 px by default).
        download: fetch torchvision datasets that are missing under ``root``.
        option: the option that named the dataset, for messages.
        need_labels: refuse an ``imagefolder:`` of unlabeled images only before
            decoding it (the message points at ``--eval-dataset``).

    A registered loader may carry ``images = (count, channels)`` of its full dataset, so
    that a hopeless ``image_size`` is refused before the loader downloads or caches.

    Returns:
        The decoded :class:`ImageData`; it may have pretraining images only (a flat
        folder: see :func:`ssl_bench.datasets.pairing.with_eval_data` for pairing it
        with labelled data).

    Raises:
        UnknownNameError: unknown dataset name (names ``option``, lists the valid ones).
        OptionError: ``imagefolder:`` without a path; an ``image_size`` under 8 px or one
            whose decoded images cannot fit in the machine's memory (refused before
            anything is downloaded, decoded or cached when the loader states its
            ``images``).
        DataError: a missing/empty folder (says which layout is expected), a
            failed download, a corrupt image (names the file), or too few classes
            or images to score (see :func:`check_label_counts`), an unlabeled
            folder when ``need_labels``.
    """
    if image_size is not None and image_size < 8:
        raise OptionError(f"--image-size must be at least 8 pixels, got {image_size}")
    if not name.startswith(IMAGEFOLDER_PREFIX) and ("/" in name or Path(name).is_dir()):
        raise OptionError(f"{option} {name}: for a folder of your own images give "
                          f"{option} {IMAGEFOLDER_PREFIX}{name}")
    if name.startswith(IMAGEFOLDER_PREFIX):
        from ssl_bench.datasets.imagefolder import load_imagefolder

        if name == IMAGEFOLDER_PREFIX:  # Path("") is the current folder
            raise OptionError(f"{option} {name} names no folder; give {option} "
                              f"{IMAGEFOLDER_PREFIX}<path>")
        path = Path(name[len(IMAGEFOLDER_PREFIX):]).expanduser()
        data = load_imagefolder(path, name, hflip=True, image_size=image_size,
                                need_labels=need_labels)
    else:
        loader = _loader(name, option)
        if image_size and hasattr(loader, "images"):  # before anything is downloaded or cached
            check_decoded_fits(name, *loader.images, image_size)
        data = loader(Path(root).expanduser() if root else None, download)
        if image_size:
            check_decoded_fits(name, _image_count(data), data.channels, image_size)
    if data.labelled:
        check_label_counts(data.name, data.train_labels, data.num_classes, len(data.test_labels))
    return data.resized(image_size) if image_size else data


def _loader(name: str, option: str) -> Callable[..., ImageData]:
    """The registered loader of ``name``.

    Raises:
        UnknownNameError: naming ``option`` (``--dataset``, ``--eval-dataset``) and the
            valid names.
    """
    try:
        return DATASETS.get(name)
    except UnknownNameError:
        raise UnknownNameError(f"unknown dataset {name!r} for {option}; valid: "
                               f"{', '.join(dataset_names())}") from None


def _image_count(data: ImageData) -> int:
    """Every image of ``data``: train, test and separate pretraining images."""
    extra = 0 if data.pretrain_images is None else len(data.pretrain_images)
    return len(data.train_images) + len(data.test_images) + extra


def check_label_counts(name: str, train_labels: torch.Tensor, num_classes: int,
                       test_images: int) -> None:
    """Refuse data that no classifier score can be read on: fewer than two classes,
    a class with fewer than two train images (its validation split would be empty),
    or an empty test split. Such data would report 100 % top-1.

    Args:
        name: the ``--dataset`` name, for the message.
        train_labels: ``int64`` ``(N_train,)``.
        num_classes: C.
        test_images: size of the test split.

    Raises:
        DataError: naming the dataset and what it has.
    """
    counts = torch.bincount(train_labels, minlength=num_classes)
    if num_classes < 2 or int(counts.min()) < 2 or test_images == 0:
        raise DataError(f"dataset {name} has {num_classes} class(es), {len(train_labels)} "
                        f"train and {test_images} test images; a benchmark needs at least 2 "
                        "classes, 2 train images in each, and test images")


def dataset_names() -> list[str]:
    """Registered dataset names plus the ``imagefolder:<path>`` pattern."""
    return DATASETS.names() + [f"{IMAGEFOLDER_PREFIX}<path>"]
