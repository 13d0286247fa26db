"""Unlabeled pretraining data: flat folders, ``unlabeled/`` splits, ``--eval-dataset`` and
STL-10's ``unlabeled`` split (a tiny fake copy in torchvision's binary layout)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ssl_bench.cli import main
from ssl_bench.datasets import load_dataset
from ssl_bench.datasets.stl10 import read_images

TINY = ["--epochs", "1", "--batch-size", "8", "--backbone-opt", "width=8", "--no-step0",
        "--evaluators", "knn", "--no-layer-probes", "--lowshot", "--image-size", "16"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))


def _images(folder, count, seed, size=20):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")


def _labelled(root, per_class=3):
    for split in ("train", "test"):
        for c, name in enumerate(("cat", "dog")):
            _images(root / split / name, per_class, seed=10 * c + len(split))
    return root


def _run(tmp_path, *argv):
    out = tmp_path / "runs"
    code = main(["run", "--task", "denoising", *TINY, "--out", str(out), *argv])
    return code, out


def _records(out):
    (run,) = out.iterdir()
    return (yaml.safe_load((run / "config.yaml").read_text()),
            json.loads((run / "results.json").read_text()))


def test_flat_folder_pretrains_with_eval_dataset(tmp_path, capsys):
    _images(tmp_path / "flat", 10, seed=0)
    _images(tmp_path / "flat" / "nested" / "deeper", 6, seed=1)  # any depth counts
    (tmp_path / "flat" / ".hidden").mkdir()
    _images(tmp_path / "flat" / ".hidden", 4, seed=2)  # hidden folders do not
    labelled = _labelled(tmp_path / "pets")
    code, out = _run(tmp_path, "--dataset", f"imagefolder:{tmp_path / 'flat'}",
                     "--eval-dataset", f"imagefolder:{labelled}")
    assert code == 0
    config, results = _records(out)
    assert results["pretrain_images"] == 16 and config["data"]["pretrain_images"] == 16
    assert (results["eval_train_images"], results["test_images"]) == (6, 6)
    assert config["eval_dataset"] == f"imagefolder:{labelled}"
    assert config["data"]["labelled_from"] == f"imagefolder:{labelled}"
    assert "knn_top1_k20" in results["metrics"]
    assert "16 pretraining images (all images); 6 labelled / 6 test images of imagefolder:" \
        in capsys.readouterr().err


def test_unlabeled_split_pretrains_and_train_test_evaluate(tmp_path):
    root = _labelled(tmp_path / "photos", per_class=4)
    _images(tmp_path / "photos" / "unlabeled" / "batch1", 9, seed=5)
    _images(tmp_path / "photos" / "unlabeled", 3, seed=6)
    data = load_dataset(f"imagefolder:{root}", image_size=16)
    assert data.pretraining.shape == (12, 3, 16, 16) and data.pretrain_split == "unlabeled/"
    assert data.train_images.shape == (8, 3, 16, 16) and data.class_names == ["cat", "dog"]
    code, out = _run(tmp_path, "--dataset", f"imagefolder:{root}")
    assert code == 0
    config, results = _records(out)
    assert (results["pretrain_images"], results["eval_train_images"],
            results["test_images"]) == (12, 8, 8)
    assert config["data"]["pretrain_split"] == "unlabeled/"


def test_flat_folder_without_eval_dataset_is_refused(tmp_path, capsys):
    _images(tmp_path / "flat", 10, seed=0)
    code, out = _run(tmp_path, "--dataset", f"imagefolder:{tmp_path / 'flat'}")
    err = capsys.readouterr().err  # refused before decoding: nothing cached either
    assert code == 2 and err.startswith("error: ") and "--eval-dataset" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert not (tmp_path / "cache").exists()


def test_supervised_on_unlabeled_data_is_refused(tmp_path, capsys):
    _images(tmp_path / "flat", 10, seed=0)
    out = tmp_path / "runs"
    code = main(["run", "--task", "supervised", *TINY, "--out", str(out), "--dataset",
                 f"imagefolder:{tmp_path / 'flat'}", "--eval-dataset",
                 f"imagefolder:{_labelled(tmp_path / 'pets')}"])
    err = capsys.readouterr().err
    assert code == 2 and "--task supervised" in err and "unlabeled" in err
    assert not out.exists()


def test_eval_dataset_with_other_channels_is_refused(tmp_path, capsys):
    _images(tmp_path / "flat", 10, seed=0)  # RGB; digits is grey
    code, out = _run(tmp_path, "--dataset", f"imagefolder:{tmp_path / 'flat'}",
                     "--eval-dataset", "digits")
    err = capsys.readouterr().err
    assert code == 2 and "--eval-dataset digits has 1 channel(s)" in err and not out.exists()


def _fake_stl10(root, unlabeled=40, train=20, test=10):
    """STL-10's binaries as torchvision reads them: uint8 images stored channel by
    channel, each channel column-major; labels 1…10; one class name a line."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {}
    for split, n in (("unlabeled", unlabeled), ("train", train), ("test", test)):
        images[split] = rng.integers(0, 255, (n, 3, 96, 96), dtype=np.uint8)
        images[split].transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")
    for split, n in (("train", train), ("test", test)):
        (np.arange(n) % 10 + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    (folder / "fold_indices.txt").write_text("0 1 2\n" * 10)
    return images


def test_stl10_reads_like_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.stl10 as tv_stl10

    _fake_stl10(tmp_path)
    monkeypatch.setattr(tv_stl10, "check_integrity", lambda *a, **k: True)  # fake MD5s
    for split in ("unlabeled", "train", "test"):
        ours = read_images(tmp_path / "stl10_binary" / f"{split}_X.bin")
        theirs = tv_stl10.STL10(str(tmp_path), split=split).data
        assert ours.is_contiguous() and torch.equal(ours, torch.from_numpy(theirs.copy()))
    data = load_dataset("stl10", tmp_path, download=False)
    assert data.class_names == tv_stl10.STL10(str(tmp_path), split="test").classes
    assert data.test_labels.tolist() == tv_stl10.STL10(str(tmp_path), split="test").labels.tolist()


def test_stl10_pretrains_on_unlabeled_and_evaluates_on_train_test(tmp_path, capsys):
    images = _fake_stl10(tmp_path / "stl")
    data = load_dataset("stl10", tmp_path / "stl", download=False)
    assert data.pretraining.shape == (40, 3, 96, 96) and data.pretrain_split == "unlabeled"
    assert torch.equal(data.pretraining, torch.from_numpy(images["unlabeled"]))
    assert (len(data.train_images), len(data.test_images)) == (20, 10)
    assert data.train_labels.tolist() == [i % 10 for i in range(20)]
    code, out = _run(tmp_path, "--dataset", "stl10", "--data-root", str(tmp_path / "stl"),
                     "--no-download", "--train-subset", "24")
    assert code == 0
    config, results = _records(out)
    assert (results["pretrain_images"], results["eval_train_images"],
            results["test_images"]) == (24, 20, 10)
    assert config["data"]["image_size"] == 16 and config["data"]["pretrain_split"] == "unlabeled"
    assert "24 pretraining images (unlabeled)" in capsys.readouterr().err


def test_stl10_missing_files_are_named(tmp_path, capsys):
    _fake_stl10(tmp_path / "stl")
    (tmp_path / "stl" / "stl10_binary" / "unlabeled_X.bin").unlink()
    code, out = _run(tmp_path, "--dataset", "stl10", "--data-root", str(tmp_path / "stl"),
                     "--no-download")
    err = capsys.readouterr().err
    assert code == 2 and "lacks unlabeled_X.bin" in err and not out.exists()


def test_resume_checks_the_eval_dataset(tmp_path, capsys):
    _images(tmp_path / "flat", 10, seed=0)
    first, second = _labelled(tmp_path / "a"), _labelled(tmp_path / "b")
    flat = ["--dataset", f"imagefolder:{tmp_path / 'flat'}", "--name", "run"]
    assert _run(tmp_path, *flat, "--eval-dataset", f"imagefolder:{first}")[0] == 0
    before = sorted(p.name for p in (tmp_path / "runs" / "run").iterdir())
    capsys.readouterr()
    code, _ = _run(tmp_path, *flat, "--eval-dataset", f"imagefolder:{second}", "--resume")
    err = capsys.readouterr().err
    assert code == 2 and "eval_dataset" in err
    assert sorted(p.name for p in (tmp_path / "runs" / "run").iterdir()) == before
