"""Datasets as decoded uint8 tensors, cached once, augmented as whole batches.

Every dataset is loaded into an :class:`ImageData`: ``uint8`` tensors of shape
``(N, C, H, W)`` for the train and test splits plus integer labels. Labels are
handed to evaluators only; pretext tasks see images alone. Decoded tensors are
cached under ``$SSL_BENCH_CACHE`` (default ``~/.cache/ssl-bench``) so a folder of
JPEGs is decoded once, not once per run.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ssl_bench.errors import DataError, OptionError
from ssl_bench.registry import DATASETS
from ssl_bench.rundir import atomic_torch_save

IMAGEFOLDER_PREFIX = "imagefolder:"
IMAGEFOLDER_LAYOUT = ("<root>/train/<class>/<image> and <root>/test/<class>/<image> "
                      "(or val/ instead of test/)")
IMAGEFOLDER_DEFAULT_SIZE = 64


@dataclass
class ImageData:
    """A labelled dataset with a train and a test split, decoded to memory.

    Attributes:
        name: the ``--dataset`` name.
        train_images: ``uint8`` ``(N_train, C, H, W)``.
        train_labels: ``int64`` ``(N_train,)`` class indices.
        test_images: ``uint8`` ``(N_test, C, H, W)``.
        test_labels: ``int64`` ``(N_test,)``.
        class_names: one name per class index.
        hflip: whether a horizontal flip keeps an image natural (photos yes,
            digits no); the trainer flips batches at random when it does.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]
    hflip: bool

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def spec(self) -> "DataSpec":
        """What a pretext task may know of the data: shapes and pixel statistics."""
        x = self.train_images[:10_000].float() / 255.0
        return DataSpec(
            name=self.name, channels=self.channels, image_size=self.image_size,
            mean=tuple(x.mean(dim=(0, 2, 3)).tolist()),
            std=tuple(x.std(dim=(0, 2, 3)).tolist()), hflip=self.hflip,
            num_classes=self.num_classes)

    def resized(self, size: int) -> "ImageData":
        """A copy with both splits resized to ``size``×``size`` (bilinear, antialiased)."""
        return ImageData(self.name, resize_uint8(self.train_images, size), self.train_labels,
                         resize_uint8(self.test_images, size), self.test_labels,
                         self.class_names, self.hflip)


@dataclass(frozen=True)
class DataSpec:
    """The label-free description of a dataset that tasks are built from (only the
    class count is known; the ``supervised`` reference task alone uses it).

    Attributes:
        name: dataset name.
        channels: C (1 for grayscale, 3 for RGB).
        image_size: side in pixels (images are square).
        mean: per-channel pixel mean of the train split, in [0, 1].
        std: per-channel pixel standard deviation of the train split.
        hflip: whether horizontal flips are natural for this data.
        num_classes: number of classes of the labels.
    """

    name: str
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    num_classes: int = 10


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``uint8`` ``(N, C, H, W)`` images to ``(N, C, size, size)``, in chunks."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = [F.interpolate(chunk.float(), size=(size, size), mode="bilinear",
                         antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)
           for chunk in images.split(4096)]
    return torch.cat(out)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images → ``float32`` in [0, 1], same shape."""
    return images.float().div_(255.0)


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of a ``(N, C, H, W)`` batch horizontally with probability ½."""
    flip = torch.rand(images.shape[0], generator=generator, device="cpu") < 0.5
    flip = flip.to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$SSL_BENCH_CACHE`` or ``~/.cache/ssl-bench``."""
    return Path(os.environ.get("SSL_BENCH_CACHE", Path.home() / ".cache" / "ssl-bench"))


def default_data_root(name: str) -> Path:
    """Where a dataset is downloaded when ``--data-root`` is not given."""
    return cache_dir() / "data" / name


# --------------------------------------------------------------------------- loading


def load_dataset(name: str, root: str | os.PathLike | None = None, image_size: int | None = None,
                 download: bool = True) -> ImageData:
    """Load a dataset by ``--dataset`` name.

    Args:
        name: a registered dataset name or ``imagefolder:<path>``.
        root: ``--data-root``; an existing copy in the layout torchvision uses
            (or, for ``cifar10``/``cifar100``, an ImageFolder tree with
            ``train/`` and ``test/``). ``None``: the cache folder.
        image_size: resize both splits to this side in pixels; ``None`` keeps the
            native size (ImageFolder trees of mixed sizes default to 64).
        download: fetch torchvision datasets that are missing under ``root``.

    Returns:
        The decoded :class:`ImageData`.

    Raises:
        UnknownNameError: unknown dataset name (lists the valid ones).
        DataError: a missing/empty folder (says which layout is expected), a
            failed download, or a corrupt image (names the file).
    """
    if image_size is not None and image_size < 8:
        raise OptionError(f"--image-size must be at least 8 pixels, got {image_size}")
    if name.startswith(IMAGEFOLDER_PREFIX):
        path = Path(name[len(IMAGEFOLDER_PREFIX):]).expanduser()
        data = load_imagefolder(path, name, hflip=True, image_size=image_size)
    else:
        loader: Callable[..., ImageData] = DATASETS.get(name)
        data = loader(Path(root).expanduser() if root else None, download)
    return data.resized(image_size) if image_size else data


def dataset_names() -> list[str]:
    """Registered dataset names plus the ``imagefolder:<path>`` pattern."""
    return DATASETS.names() + [f"{IMAGEFOLDER_PREFIX}<path>"]


def subset_indices(n: int, size: int | None, seed: int) -> torch.Tensor:
    """A fixed, seeded subset of ``range(n)`` of ``size`` indices (all when ``None``).

    Raises:
        OptionError: if ``size`` is not in 1…n.
    """
    if size is None:
        return torch.arange(n)
    if not 1 <= size <= n:
        raise OptionError(f"--train-subset must be between 1 and {n} for this dataset, got {size}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:size].sort().values


def balanced_subset_indices(labels: torch.Tensor, size: int | None, seed: int,
                            option: str = "--eval-train-subset") -> torch.Tensor:
    """A fixed, seeded, class-balanced subset of ``size`` indices into ``labels``
    (``size // C`` per class, the remainder to the first classes; all when ``None``).

    Args:
        labels: ``int64`` ``(N,)`` class indices.
        size: how many indices; ``None``: all.
        seed: seeds the draw within each class.
        option: the option named in error messages.

    Returns:
        Sorted ``int64`` indices.

    Raises:
        OptionError: if ``size`` is below the number of classes or above ``len(labels)``,
            or a class has too few examples.
    """
    if size is None:
        return torch.arange(len(labels))
    classes = labels.unique()
    if not len(classes) <= size <= len(labels):
        raise OptionError(f"{option} must give between {len(classes)} and "
                          f"{len(labels)} images for this dataset, got {size}")
    g = torch.Generator().manual_seed(seed)
    per_class, extra = divmod(size, len(classes))
    chosen = []
    for i, c in enumerate(classes):
        members = (labels == c).nonzero().flatten()
        take = per_class + (i < extra)
        if take > len(members):
            raise OptionError(f"{option} {size}: class {int(c)} has only "
                              f"{len(members)} examples")
        chosen.append(members[torch.randperm(len(members), generator=g)[:take]])
    return torch.cat(chosen).sort().values


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
            f"{cls_name} is not under {root} and could not be downloaded ({exc.__class__.__name__}: "
            f"{exc}); pass --data-root pointing at an existing copy in torchvision's layout") from None


def _labels(ds) -> torch.Tensor:
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels
    return torch.as_tensor(np.asarray(labels), dtype=torch.long)


def _torchvision_dataset(name: str, cls_name: str, channels_last: bool, hflip: bool,
                         split_kw: tuple[dict, dict] | None = None) -> Callable[..., ImageData]:
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

    load.__doc__ = f"torchvision's {cls_name}; downloaded to the cache folder unless --data-root holds it."
    return load


def _cifar(name: str, cls_name: str) -> Callable[..., ImageData]:
    from_torchvision = _torchvision_dataset(name, cls_name, channels_last=True, hflip=True)

    def load(root: Path | None = None, download: bool = True) -> ImageData:
        if root is not None and (root / "train").is_dir():
            return load_imagefolder(root, name, hflip=True, image_size=32)
        return from_torchvision(root, download)

    load.__doc__ = (f"torchvision's {cls_name}, or an ImageFolder tree (train/<class>/…, "
                    "test/<class>/…) when --data-root holds one.")
    return load


DATASETS.register("mnist")(_torchvision_dataset("mnist", "MNIST", False, hflip=False))
DATASETS.register("fashion-mnist")(_torchvision_dataset("fashion-mnist", "FashionMNIST", False,
                                                        hflip=True))
DATASETS.register("cifar10")(_cifar("cifar10", "CIFAR10"))
DATASETS.register("cifar100")(_cifar("cifar100", "CIFAR100"))
DATASETS.register("svhn")(_torchvision_dataset("svhn", "SVHN", False, hflip=False,
                                               split_kw=({"split": "train"}, {"split": "test"})))
DATASETS.register("stl10")(_torchvision_dataset("stl10", "STL10", False, hflip=True,
                                                split_kw=({"split": "train"}, {"split": "test"})))


# --------------------------------------------------------------------------- image folders


def _decode(path: str, size: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = _resize_center_crop(im, size)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None


def _resize_center_crop(im, size: int):
    from PIL import Image

    scale = size / min(im.size)
    w, h = max(size, round(im.size[0] * scale)), max(size, round(im.size[1] * scale))
    im = im.resize((w, h), Image.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def _list_split(split_dir: Path) -> tuple[list[tuple[str, int]], list[str]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{split_dir} has no class folders; expected {IMAGEFOLDER_LAYOUT}")
    try:
        samples = make_dataset(str(split_dir), {c: i for i, c in enumerate(classes)},
                               extensions=IMG_EXTENSIONS)
    except FileNotFoundError as exc:
        raise DataError(f"{exc}; expected {IMAGEFOLDER_LAYOUT}") from None
    return samples, classes


def load_imagefolder(root: Path, name: str, hflip: bool, image_size: int | None) -> ImageData:
    """Decode an ImageFolder tree (``train/`` + ``test/`` or ``val/``) to uint8 tensors.

    Images are converted to RGB; when their sizes differ (or ``image_size`` is
    given) each is resized on its shorter side and centre-cropped to a square.
    The decoded tensors are cached, keyed by the folder, its file count and size.

    Raises:
        DataError: a missing folder or split, no class folders, no images, mismatched
            class folders between splits, or an undecodable file (named).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; expected {IMAGEFOLDER_LAYOUT}")
    test_name = next((s for s in ("test", "val") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or test_name is None:
        raise DataError(f"{root} lacks train/ and test/ (or val/) subfolders; "
                        f"expected {IMAGEFOLDER_LAYOUT}")
    (train_samples, classes), (test_samples, test_classes) = (
        _list_split(root / "train"), _list_split(root / test_name))
    if classes != test_classes:
        raise DataError(f"{root}/train and {root}/{test_name} have different class folders")

    key = hashlib.sha1(f"{root.resolve()}|{len(train_samples)}|{len(test_samples)}|{image_size}"
                       .encode()).hexdigest()[:16]
    cached = cache_dir() / "decoded" / f"{name.replace(':', '_').replace('/', '_')[:40]}-{key}.pt"
    if cached.exists():
        blob = torch.load(cached, weights_only=True)
        return ImageData(name, blob["xtr"], blob["ytr"], blob["xte"], blob["yte"], classes, hflip)

    size = image_size
    if size is None:
        from PIL import Image

        with Image.open(train_samples[0][0]) as first:
            size = first.size[0] if first.size[0] == first.size[1] else IMAGEFOLDER_DEFAULT_SIZE
    splits = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for samples in (train_samples, test_samples):
            arrays = list(pool.map(lambda s: _decode(s[0], size), samples, chunksize=256))
            images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
            splits.append((images, torch.tensor([s[1] for s in samples], dtype=torch.long)))
    (xtr, ytr), (xte, yte) = splits
    atomic_torch_save({"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte}, cached)
    return ImageData(name, xtr, ytr, xte, yte, classes, hflip)
