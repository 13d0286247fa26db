"""Datasets: embedded digits, image folders, real copies, subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CIFAR10_ROOT, MNIST_ROOT, needs_cifar10, needs_mnist
from ssl_bench.core.images import random_hflip
from ssl_bench.core.subsets import subset_indices
from ssl_bench.datasets import load_dataset
from ssl_bench.datasets.imagefolder import IMAGE_EXTENSIONS, _list_split
from ssl_bench.core.errors import DataError, OptionError, UnknownNameError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))


def make_imagefolder(root, classes=("cat", "dog"), per_class=3, size=(12, 12), test="test"):
    rng = np.random.default_rng(0)
    for split in ("train", test):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_digits_is_embedded_and_split():
    data = load_dataset("digits")
    assert data.train_images.dtype == torch.uint8
    assert data.train_images.shape[1:] == (1, 32, 32)
    assert len(data.train_images) + len(data.test_images) == 1797
    assert data.num_classes == 10 and set(data.test_labels.tolist()) == set(range(10))
    assert data.train_images.max() > 200


def test_subset_is_fixed_and_seeded():
    a, b, c = subset_indices(100, 10, 0), subset_indices(100, 10, 0), subset_indices(100, 10, 1)
    assert torch.equal(a, b) and not torch.equal(a, c) and len(set(a.tolist())) == 10
    assert torch.equal(subset_indices(5, None, 0), torch.arange(5))
    with pytest.raises(OptionError, match="--train-subset"):
        subset_indices(100, 101, 0)


def test_imagefolder_decodes_and_caches(tmp_path):
    root = make_imagefolder(tmp_path / "pets", test="val")
    data = load_dataset(f"imagefolder:{root}", image_size=12)
    assert data.train_images.shape == (6, 3, 12, 12) and data.class_names == ["cat", "dog"]
    assert data.test_labels.tolist() == [0, 0, 0, 1, 1, 1]
    again = load_dataset(f"imagefolder:{root}", image_size=12)
    assert torch.equal(again.train_images, data.train_images)
    assert load_dataset(f"imagefolder:{root}").train_images.shape[-1] == 64  # the default
    assert load_dataset(f"imagefolder:{root}", image_size=8).train_images.shape[-1] == 8


def test_imagefolder_mixed_sizes_are_cropped_square(tmp_path):
    root = make_imagefolder(tmp_path / "mixed", size=(40, 30))
    assert load_dataset(f"imagefolder:{root}").train_images.shape[-2:] == (64, 64)


@pytest.mark.parametrize("make, message", [
    (lambda r: None, "does not exist"),
    (lambda r: r.mkdir(), "lacks train/ and test/"),
    (lambda r: [(r / "train").mkdir(parents=True), (r / "test").mkdir()], "no class folders"),
])
def test_imagefolder_bad_layouts(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(f"imagefolder:{root}")
    assert "train/<class>" in str(err.value) or "no class folders" in str(err.value)


def test_imagefolder_lists_as_torchvision_does(tmp_path):
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    root = make_imagefolder(tmp_path / "pets")
    extra = root / "train" / "dog" / "nested" / "deeper"
    extra.mkdir(parents=True)
    for name in ("b.PNG", "a.jpeg", ".hidden.jpg", "notes.txt", "c.webp"):
        (extra / name).write_bytes(b"")
    (root / "train" / "cat" / "z.TIFF").write_bytes(b"")
    samples, classes = _list_split(root / "train")
    assert classes == ["cat", "dog"] and IMAGE_EXTENSIONS == IMG_EXTENSIONS
    assert samples == make_dataset(str(root / "train"), {"cat": 0, "dog": 1},
                                   extensions=IMG_EXTENSIONS)
    for image in (root / "test" / "dog").iterdir():
        image.unlink()
    with pytest.raises(DataError, match="test/dog holds no images"):
        load_dataset(f"imagefolder:{root}")


def test_corrupt_image_names_the_file(tmp_path):
    root = make_imagefolder(tmp_path / "pets")
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="broken.jpg"):
        load_dataset(f"imagefolder:{root}")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UnknownNameError, match="cifar10.*digits.*mnist"):
        load_dataset("imagenet-1k")


def test_missing_torchvision_copy_without_download(tmp_path):
    with pytest.raises(DataError, match="--data-root"):
        load_dataset("mnist", root=tmp_path, download=False)


def test_random_hflip_flips_about_half():
    x = torch.arange(4.0).view(1, 1, 1, 4).repeat(1000, 1, 1, 1)
    flipped = (random_hflip(x)[:, 0, 0, 0] == 3).float().mean()
    assert 0.4 < flipped < 0.6


@needs_mnist
def test_real_mnist_copy():
    data = load_dataset("mnist", root=MNIST_ROOT, download=False)
    assert data.train_images.shape == (60000, 1, 28, 28) and data.test_images.shape[0] == 10000
    assert data.num_classes == 10 and data.hflip is False


@needs_cifar10
def test_real_cifar10_imagefolder(monkeypatch):
    monkeypatch.delenv("SSL_BENCH_CACHE")  # share the decoded copy with real runs
    data = load_dataset("cifar10", root=CIFAR10_ROOT, download=False)
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape[0] == 10000
    assert data.class_names[0] == "airplane"
    assert data.train_labels.bincount().tolist() == [5000] * 10


def test_digits_cache_holds_the_same_split(tmp_path, monkeypatch):
    """The cached copy of digits is the split scikit-learn gives."""
    from ssl_bench.datasets.digits import _split_from_sklearn

    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path))
    fresh, cached = load_dataset("digits"), load_dataset("digits")
    assert list((tmp_path / "decoded").glob("digits-*.pt"))
    want = _split_from_sklearn()
    for data in (fresh, cached):
        assert torch.equal(data.train_images, want["xtr"])
        assert torch.equal(data.test_labels, want["yte"])
