"""``imagefolder:<path>``: your own images in ImageFolder layout (or unlabeled), decoded once
and cached."""

from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ssl_bench.core.errors import DataError
from ssl_bench.core.memory import check_decoded_fits
from ssl_bench.core.rundir import atomic_torch_save
from ssl_bench.datasets.base import ImageData, cache_dir, check_label_counts

#: Accepted names of the scored split, in order of preference.
TEST_SPLIT_NAMES = ("test", "val", "validation", "valid")
IMAGEFOLDER_LAYOUT = ("<root>/train/<class>/<image> and <root>/test/<class>/<image> "
                      f"(or {', '.join(n + '/' for n in TEST_SPLIT_NAMES[1:])} instead of test/)")
#: The folder of pretraining images that need no classes.
UNLABELED_SPLIT = "unlabeled"
UNLABELED_LAYOUT = (f"<root>/{UNLABELED_SPLIT}/<any depth>/<image> for pretraining (train/ + "
                    "test/ beside it optional), or a folder of images without train/ and test/ "
                    "(pretraining only: give --eval-dataset)")
IMAGEFOLDER_DEFAULT_SIZE = 64  # px, when --image-size is not given
#: Bumped when decoding changes, so copies cached by an older decoder are not reused
#: (2: 16-bit images are scaled to 8 bit; they came out white before).
DECODER = 2
#: File name endings taken as images (torchvision's ``IMG_EXTENSIONS``; any case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _decode(path: str, size: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = _to_8bit(im, path).convert("RGB")
            if size is not None and im.size != (size, size):
                im = _resize_center_crop(im, size)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None


def _to_8bit(im, path: str):
    """``im`` with 8-bit channels. PIL's ``convert`` clips 16-bit grey (modes ``I;16``,
    ``I``) at 255, which made such images white; it is scaled here by
    round(v · 255 / 65535). (PIL itself reads a 16-bit colour PNG as 8-bit by keeping each
    value's high byte, at most one level below that rounding.)

    Raises:
        DataError: 32-bit float pixels (mode ``F``), whose range no file states.
    """
    from PIL import Image

    if im.mode == "F":
        raise DataError(f"cannot decode image {path}: 32-bit float pixels have no fixed "
                        "range; save it with 8 or 16 bits per channel")
    if im.mode == "I" or im.mode.startswith("I;16"):  # PIL scales 16-bit PGMs to 65535 too
        return Image.fromarray(_scale_16_to_8(np.asarray(im)))
    return im


def _scale_16_to_8(pixels: np.ndarray) -> np.ndarray:
    """16-bit values (any integer dtype; clipped to 0…65535) → the nearest ``uint8`` level,
    round(v · 255 / 65535) = round(v / 257), same shape."""
    wide = np.clip(pixels.astype(np.int64), 0, 65535)
    return ((wide + 128) // 257).astype(np.uint8)


def _resize_center_crop(im, size: int):
    from PIL import Image

    scale = size / min(im.size)
    w, h = max(size, round(im.size[0] * scale)), max(size, round(im.size[1] * scale))
    im = im.resize((w, h), Image.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk(folder: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(folder, followlinks=True)`` entering each real folder once: a link back up
    the tree (``cat/loop -> .``) listed every image again at each level until the path
    grew too long (24 images made 504). Folders are walked in sorted order, so the copy kept of a folder
    linked twice does not depend on the file system's order. The caller may prune
    ``dirs`` in place, as with ``os.walk``."""
    seen: set[str] = set()
    for parent, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs.sort()
        yield parent, dirs, files


def _list_split(split_dir: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """The ``(path, class index)`` samples of a ``<split>/<class>/…`` folder and its
    class names, in torchvision's ``make_dataset`` order (classes sorted, then a sorted
    walk of each class folder; links followed, each real folder once). Listed here because
    importing torchvision for it took 2 s."""
    # hidden folders (.git, .ipynb_checkpoints) are not classes
    classes = sorted(d.name for d in split_dir.iterdir()
                     if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir} has no class folders; expected {IMAGEFOLDER_LAYOUT}")
    samples = []
    for index, name in enumerate(classes):
        found = [(os.path.join(parent, f), index)
                 for parent, _, files in sorted(_walk(split_dir / name))
                 for f in sorted(files) if _is_image(f)]
        if not found:
            raise DataError(f"{split_dir / name} holds no images ({', '.join(IMAGE_EXTENSIONS)}"
                            f"); expected {IMAGEFOLDER_LAYOUT}")
        samples += found
    return samples, classes


def _cache_key(root: Path, samples: list[tuple[str, int]], image_size: int | None) -> str:
    """16 hex digits that change when any image is added, removed, moved to another
    class folder, replaced or rewritten (relative path, byte size and modification
    time of every file), or when the decode size or :data:`DECODER` changes."""
    digest = hashlib.sha1(f"{root.resolve()}|{image_size}|{DECODER}".encode())
    start = len(os.path.join(root, ""))  # every sample path was joined onto root
    for path, _ in samples:
        stat = os.stat(path)
        digest.update(f"|{path[start:]}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _list_unlabeled(folder: Path) -> list[tuple[str, int]]:
    """Every image under ``folder`` at any depth (hidden files and folders skipped; links
    followed, each real folder once), sorted, each with label -1."""
    found = []
    for parent, dirs, files in _walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .git, .ipynb_checkpoints
        found += [os.path.join(parent, f) for f in files if not f.startswith(".") and _is_image(f)]
    return [(path, -1) for path in sorted(found)]


def _list_tree(root: Path, name: str, num_classes: int | None
               ) -> tuple[dict[str, list[tuple[str, int]]], list[str], str]:
    """The samples of each split of ``root`` (``train``, ``test``, ``unlabeled``; a
    missing split is an empty list), the class names and the name of the scored split."""
    test_name = next((s for s in TEST_SPLIT_NAMES if (root / s).is_dir()), None)
    has_train = (root / "train").is_dir()
    unlabeled_dir = root / UNLABELED_SPLIT
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": [], UNLABELED_SPLIT: []}
    classes: list[str] = []
    if has_train != (test_name is not None) or (num_classes is not None and not has_train):
        raise DataError(f"{root} lacks train/ and test/ subfolders; expected {IMAGEFOLDER_LAYOUT}")
    if has_train:
        unused = [s for s in TEST_SPLIT_NAMES if s != test_name and (root / s).is_dir()]
        if unused:
            print(f"{name}: scoring on {test_name}/; {', '.join(u + '/' for u in unused)} "
                  "unused", file=sys.stderr)
        (splits["train"], classes), (splits["test"], test_classes) = (
            _list_split(root / "train"), _list_split(root / test_name))
        if classes != test_classes:
            raise DataError(f"{root}/train and {root}/{test_name} have different class folders")
        if num_classes is not None and len(classes) != num_classes:  # CIFAR-10 as cifar100
            raise DataError(f"--data-root {root} has {len(classes)} class folders; "
                            f"--dataset {name} has {num_classes}")
        check_label_counts(name, torch.tensor([label for _, label in splits["train"]]),
                           len(classes), len(splits["test"]))  # before decoding anything
    if unlabeled_dir.is_dir() or not has_train:
        splits[UNLABELED_SPLIT] = _list_unlabeled(unlabeled_dir if unlabeled_dir.is_dir()
                                                  else root)
        if not splits[UNLABELED_SPLIT]:
            where = unlabeled_dir if unlabeled_dir.is_dir() else root
            raise DataError(f"{where} holds no images and {root} lacks train/ and test/ "
                            f"subfolders; expected {IMAGEFOLDER_LAYOUT}, or {UNLABELED_LAYOUT}")
    return splits, classes, test_name or "test"


def unlabeled_only(name: str, count: int, split: str) -> str:
    """The message refusing a ``--dataset`` of unlabeled images without ``--eval-dataset``."""
    return (f"--dataset {name} holds unlabeled images only ({count:,}, {split}); give "
            "--eval-dataset with labelled images for the evaluators, e.g. --eval-dataset "
            f"imagefolder:<root> with {IMAGEFOLDER_LAYOUT}")


def load_imagefolder(root: Path, name: str, hflip: bool, image_size: int | None,
                     num_classes: int | None = None, need_labels: bool = False) -> ImageData:
    """Decode an ImageFolder tree to uint8 tensors.

    Layouts (see :data:`IMAGEFOLDER_LAYOUT`, :data:`UNLABELED_LAYOUT`):

    * ``train/`` + ``test/`` (or one of :data:`TEST_SPLIT_NAMES` for the scored split):
      ``train/`` gives the pretraining images and the evaluators' labelled images (their
      validation part is carved from it); the scored split is used for test top-1 only.
    * ``unlabeled/`` (images at any depth, no classes): the pretraining images; a
      ``train/`` + ``test/`` beside it gives the labelled splits.
    * a folder of images (any depth) without ``train/`` and ``test/``: pretraining
      images only; the returned data has empty labelled splits.

    Images are decoded as RGB, or as one channel when every image of the tree is grey
    (R = G = B), each resized on its shorter side and centre-cropped to a square of
    ``image_size`` px (``None``: :data:`IMAGEFOLDER_DEFAULT_SIZE`). Hidden folders are skipped.
    The decoded tensors are cached under ``$SSL_BENCH_CACHE``, keyed by every file's
    relative path, size and modification time (see :func:`_cache_key`).

    Args:
        num_classes: the class count a known dataset must have (``None``: any); such a
            dataset needs ``train/`` + ``test/``.
        need_labels: refuse a tree without ``train/`` + ``test/`` before decoding it.

    Raises:
        DataError: a missing folder or split, no class folders, no images, mismatched
            class folders between splits, another class count than ``num_classes``,
            too few classes or images to score, no labels when ``need_labels``, or an
            undecodable file (named).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; expected {IMAGEFOLDER_LAYOUT}")
    splits, classes, test_name = _list_tree(root, name, num_classes)
    unlabeled = splits[UNLABELED_SPLIT]
    pretrain_split = ("train" if not unlabeled else
                      f"{UNLABELED_SPLIT}/" if (root / UNLABELED_SPLIT).is_dir() else "all images")
    if need_labels and not classes:
        raise DataError(unlabeled_only(name, len(unlabeled), pretrain_split))
    samples = [s for split_samples in splits.values() for s in split_samples]
    size = image_size or IMAGEFOLDER_DEFAULT_SIZE
    check_decoded_fits(name, len(samples), 3, size)  # decoded as RGB; grey is kept after
    key = _cache_key(root, samples, image_size)
    cached = cache_dir() / "decoded" / f"{name.replace(':', '_').replace('/', '_')[:40]}-{key}.pt"
    if cached.exists():
        blob = torch.load(cached, weights_only=True)
    else:
        counts = [f"{len(splits['train'])} train and {len(splits['test'])} {test_name}"
                  if classes else "", f"{len(unlabeled)} unlabeled" if unlabeled else ""]
        print(f"{name}: decoding {' and '.join(c for c in counts if c)} images at "
              f"{size}×{size} px (resized on the short side, centre-cropped; --image-size "
              f"changes it), cached in {cached.parent}", file=sys.stderr)
        blob = _decode_splits(splits, size)
        atomic_torch_save(blob, cached)
    return ImageData(name, blob["xtr"], blob["ytr"], blob["xte"], blob["yte"], classes, hflip,
                     blob.get("xun"), pretrain_split)


def _decode_splits(splits: dict[str, list[tuple[str, int]]], size: int) -> dict:
    """The cache blob: ``xtr``/``ytr``, ``xte``/``yte`` (``uint8`` ``(N, C, size, size)``,
    ``int64`` ``(N,)``; empty for a folder without labels) and, when there are
    unlabeled images, ``xun``; one channel when every image is grey."""
    images = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for split, samples in splits.items():
            arrays = list(pool.map(lambda s: _decode(s[0], size), samples, chunksize=256))
            images[split] = (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
                             if arrays else torch.empty(0, 3, size, size, dtype=torch.uint8))
    if all(_is_grey(x) for x in images.values()):  # one channel: no fake colour for colour tasks
        images = {split: x[:, :1].contiguous() for split, x in images.items()}
    blob = {"xtr": images["train"], "xte": images["test"],
            **{y: torch.tensor([s[1] for s in splits[split]], dtype=torch.long)
               for y, split in (("ytr", "train"), ("yte", "test"))}}
    if splits[UNLABELED_SPLIT]:
        blob["xun"] = images[UNLABELED_SPLIT]
    return blob


def _is_grey(images: torch.Tensor) -> bool:
    """Whether every image of ``uint8`` ``(N, 3, H, W)`` has R = G = B."""
    return bool((images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all())
