"""``imagefolder:<path>``: your own images in ImageFolder layout, decoded once and cached."""

from __future__ import annotations

import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ssl_bench.core.errors import DataError
from ssl_bench.core.rundir import atomic_torch_save
from ssl_bench.datasets.base import ImageData, cache_dir, check_label_counts

#: Accepted names of the scored split, in order of preference.
TEST_SPLIT_NAMES = ("test", "val", "validation", "valid")
IMAGEFOLDER_LAYOUT = ("<root>/train/<class>/<image> and <root>/test/<class>/<image> "
                      f"(or {', '.join(n + '/' for n in TEST_SPLIT_NAMES[1:])} instead of test/)")
IMAGEFOLDER_DEFAULT_SIZE = 64  # px, when --image-size is not given


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

    # hidden folders (.git, .ipynb_checkpoints) are not classes
    classes = sorted(d.name for d in split_dir.iterdir()
                     if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir} has no class folders; expected {IMAGEFOLDER_LAYOUT}")
    try:
        samples = make_dataset(str(split_dir), {c: i for i, c in enumerate(classes)},
                               extensions=IMG_EXTENSIONS)
    except FileNotFoundError as exc:
        raise DataError(f"{exc}; expected {IMAGEFOLDER_LAYOUT}") from None
    return samples, classes


def _cache_key(root: Path, samples: list[tuple[str, int]], image_size: int | None) -> str:
    """16 hex digits that change when any image is added, removed, moved to another
    class folder, replaced or rewritten (relative path, byte size and modification
    time of every file), or when the decode size changes."""
    digest = hashlib.sha1(f"{root.resolve()}|{image_size}".encode())
    for path, _ in samples:
        stat = Path(path).stat()
        digest.update(f"|{Path(path).relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}"
                      .encode())
    return digest.hexdigest()[:16]


def load_imagefolder(root: Path, name: str, hflip: bool, image_size: int | None,
                     num_classes: int | None = None) -> ImageData:
    """Decode an ImageFolder tree (``train/`` + ``test/``, or one of
    :data:`TEST_SPLIT_NAMES` for the scored split) to uint8 tensors.

    ``train/`` gives the pretraining images and the evaluators' labelled images (their
    validation part is carved from it); the scored split is used for test top-1 only.
    Images are decoded as RGB, or as one channel when every image of the tree is grey
    (R = G = B), each resized on its shorter side and centre-cropped to a square of
    ``image_size`` px (``None``: :data:`IMAGEFOLDER_DEFAULT_SIZE`). Hidden folders are skipped.
    The decoded tensors are cached under ``$SSL_BENCH_CACHE``, keyed by every file's
    relative path, size and modification time (see :func:`_cache_key`).

    Args:
        num_classes: the class count a known dataset must have (``None``: any).

    Raises:
        DataError: a missing folder or split, no class folders, no images, mismatched
            class folders between splits, another class count than ``num_classes``,
            too few classes or images to score, or an undecodable file (named).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; expected {IMAGEFOLDER_LAYOUT}")
    test_name = next((s for s in TEST_SPLIT_NAMES if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or test_name is None:
        raise DataError(f"{root} lacks train/ and test/ subfolders; expected {IMAGEFOLDER_LAYOUT}")
    unused = [s for s in TEST_SPLIT_NAMES if s != test_name and (root / s).is_dir()]
    if unused:
        print(f"{name}: scoring on {test_name}/; {', '.join(u + '/' for u in unused)} unused",
              file=sys.stderr)
    (train_samples, classes), (test_samples, test_classes) = (
        _list_split(root / "train"), _list_split(root / test_name))
    if classes != test_classes:
        raise DataError(f"{root}/train and {root}/{test_name} have different class folders")

    if num_classes is not None and len(classes) != num_classes:  # e.g. CIFAR-10 as cifar100
        raise DataError(f"--data-root {root} has {len(classes)} class folders; "
                        f"--dataset {name} has {num_classes}")
    check_label_counts(name, torch.tensor([label for _, label in train_samples]), len(classes),
                       len(test_samples))  # before decoding anything
    key = _cache_key(root, train_samples + test_samples, image_size)
    cached = cache_dir() / "decoded" / f"{name.replace(':', '_').replace('/', '_')[:40]}-{key}.pt"
    if cached.exists():
        blob = torch.load(cached, weights_only=True)
        return ImageData(name, blob["xtr"], blob["ytr"], blob["xte"], blob["yte"], classes, hflip)

    size = image_size or IMAGEFOLDER_DEFAULT_SIZE
    print(f"{name}: decoding {len(train_samples)} train and {len(test_samples)} {test_name} "
          f"images at {size}×{size} px (resized on the short side, centre-cropped; "
          f"--image-size changes it), cached in {cached.parent}", file=sys.stderr)
    splits = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for samples in (train_samples, test_samples):
            arrays = list(pool.map(lambda s: _decode(s[0], size), samples, chunksize=256))
            images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
            splits.append((images, torch.tensor([s[1] for s in samples], dtype=torch.long)))
    (xtr, ytr), (xte, yte) = splits
    if all(_is_grey(x) for x in (xtr, xte)):  # keep one channel: no fake colour for colour tasks
        xtr, xte = xtr[:, :1].contiguous(), xte[:, :1].contiguous()
    atomic_torch_save({"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte}, cached)
    return ImageData(name, xtr, ytr, xte, yte, classes, hflip)


def _is_grey(images: torch.Tensor) -> bool:
    """Whether every image of ``uint8`` ``(N, 3, H, W)`` has R = G = B."""
    return bool((images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all())
