"""Data input: refusals in one line that name the option (exit 2, nothing written), and
image folders that used to decode silently wrong (16-bit images, symlink loops)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_bench.cli import main
from ssl_bench.datasets import load_dataset
from test_bad_input import FAST, make_folder, refused, snapshot

# 16-bit levels and the 8-bit level nearest to each, round(v · 255 / 65535): black,
# the first value that rounds up, mid grey, the last value that rounds down, one that
# rounds up to white, white
LEVELS_16 = [0, 129, 32896, 383, 65408, 65535]
LEVELS_8 = [0, 1, 128, 1, 255, 255]
# what PIL makes of a 16-bit colour PNG: each value's high byte, v // 256
HIGH_BYTES = [v >> 8 for v in LEVELS_16]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))


def _write_png16(path: Path, pixels: np.ndarray) -> None:
    """A real 16-bit colour PNG (colour type 2 or 6) of ``uint16`` ``(H, W, 3 or 4)``:
    PIL writes 16 bits for grey only."""
    height, width, channels = pixels.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)  # filter 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, {3: 2, 4: 6}[channels], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
                     chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _sixteen_bit_tree(root: Path, kind: str) -> Path:
    """train/ and test/ with classes a and b of 8×8 16-bit images, each one level of
    :data:`LEVELS_16` (grey) or that level in R with G and B fixed (colour), ending
    ``.png`` or ``.tif``."""
    for split in ("train", "test"):
        for c in "ab":
            (root / split / c).mkdir(parents=True)
            for i, level in enumerate(LEVELS_16):
                grey = np.full((8, 8), level, dtype=np.uint16)
                if kind == "grey":
                    Image.fromarray(grey).save(root / split / c / f"{i}.png")  # mode I;16
                elif kind == "tiff":
                    Image.fromarray(grey).save(root / split / c / f"{i}.tif")
                else:
                    extra = [np.full_like(grey, 257 * 10), np.full_like(grey, 65535)]
                    alpha = [np.full_like(grey, 65535)] if kind == "rgba" else []
                    _write_png16(root / split / c / f"{i}.png",
                                 np.stack([grey, *extra, *alpha], axis=-1))
    return root


@pytest.mark.parametrize("kind", ["grey", "tiff", "rgb", "rgba"])
def test_sixteen_bit_images_decode_to_their_8_bit_levels(tmp_path, kind):
    root = _sixteen_bit_tree(tmp_path / "deep", kind)
    data = load_dataset(f"imagefolder:{root}", image_size=8)
    # every image is flat, so resizing is a no-op; the first pixel of each image says it all
    first = data.train_images[:, 0, 0, 0].tolist()  # classes a, b; grey ones were white
    assert first == (LEVELS_8 if kind in ("grey", "tiff") else HIGH_BYTES) * 2
    if kind in ("grey", "tiff"):
        assert data.channels == 1
    else:
        assert data.channels == 3
        assert set(data.train_images[:, 1].flatten().tolist()) == {10}
        assert set(data.train_images[:, 2].flatten().tolist()) == {255}


def test_sixteen_bit_images_beside_8_bit_ones_decode_alike(tmp_path):
    root = make_folder(tmp_path / "mixed", grey=True, size=8)
    eight = load_dataset(f"imagefolder:{root}", image_size=8).train_images
    for path in sorted((root / "train").rglob("*.png")):  # the same pixels, 16 bits deep
        Image.fromarray(np.asarray(Image.open(path)).astype(np.uint16) * 257).save(path)
    assert np.array_equal(load_dataset(f"imagefolder:{root}", image_size=8).train_images,
                          eight)


def test_float_images_are_refused_naming_the_file(capsys, tmp_path):
    root = make_folder(tmp_path / "floats", size=8)
    bad = root / "train" / "a" / "0.tif"
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(bad)  # mode F
    out = tmp_path / "runs"
    out.mkdir()
    assert main(["run", "--task", "random-init", *FAST, "--dataset", f"imagefolder:{root}",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    # found while decoding: after the line announcing the decode
    assert err.splitlines()[-1] == (f"error: cannot decode image {bad}: 32-bit float pixels "
                                    "have no fixed range; save it with 8 or 16 bits per channel")
    assert "Traceback" not in err and not any(out.iterdir())
    assert not any((tmp_path / "cache").rglob("*.pt"))


@pytest.mark.parametrize("link, target", [
    ("train/a/loop", "train/a"), ("train/a/nested/up", "train/a"),
    ("unlabeled/loop", "unlabeled"),
])
def test_a_symlink_loop_lists_each_image_once(tmp_path, link, target):
    root = make_folder(tmp_path / "photos", size=8)
    if link.startswith("unlabeled"):
        (root / "unlabeled").mkdir()
        Image.new("RGB", (8, 8)).save(root / "unlabeled" / "x.png")
    (root / link).parent.mkdir(exist_ok=True)
    (root / link).symlink_to(root / target)  # each image listed 41 times before
    data = load_dataset(f"imagefolder:{root}", image_size=8)
    assert len(data.train_images) == 6 and data.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(data.pretraining) == (1 if link.startswith("unlabeled") else 6)


def test_a_folder_linked_twice_is_listed_once_and_a_linked_folder_is_followed(tmp_path):
    root = make_folder(tmp_path / "photos", size=8)
    elsewhere = tmp_path / "more"
    elsewhere.mkdir()
    Image.new("RGB", (8, 8)).save(elsewhere / "x.png")
    for name in ("m1", "m2"):
        (root / "train" / "b" / name).symlink_to(elsewhere)
    data = load_dataset(f"imagefolder:{root}", image_size=8)
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("extra, expected", [
    (["--dataset", "imagefolder:"], "--dataset imagefolder: names no folder"),
    (["--eval-dataset", "imagefolder:"], "--eval-dataset imagefolder: names no folder"),
    (["--eval-dataset", "nosuch"], "unknown dataset 'nosuch' for --eval-dataset; valid: "),
    (["--dataset", "nosuch"], "unknown dataset 'nosuch' for --dataset; valid: "),
    (["--image-size", "100000"], "--image-size 100000: the 1,797 images of digits would take "
                                 "18.0 TB decoded (1,797 × 1 channel(s) × 100000² bytes)"),
    (["--dataset", "mnist", "--image-size", "100000"], "the 70,000 images of mnist"),
    # 36 TB: more than any machine this runs on
    (["--dataset", "FOLDER", "--image-size", "1000000"], "the 12 images of imagefolder:"),
])
def test_data_options_are_refused_in_one_line_and_nothing_is_written(
        capsys, tmp_path, monkeypatch, extra, expected):
    folder = make_folder(tmp_path / "photos", size=8)
    extra = [e.replace("FOLDER", f"imagefolder:{folder}") for e in extra]
    monkeypatch.chdir(folder / "train" / "a")  # "imagefolder:" scanned this folder before
    out = tmp_path / "runs"
    out.mkdir()
    before = snapshot(tmp_path)
    refused(capsys, ["run", "--task", "random-init", *FAST, *extra, "--out", str(out)], out,
            expected)
    written = set(snapshot(tmp_path)) - set(before)
    # an --eval-dataset is loaded after --dataset: digits' own copy may be cached first
    assert not written or extra[0] == "--eval-dataset" and all(
        "digits-sklearn" in path for path in written), written
