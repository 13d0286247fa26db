"""Bad input is refused in one line that names the option or file (exit 2), and
changes nothing on disk; unusual but valid input gets the correct behaviour."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ssl_bench.cli import main
from ssl_bench.config import RunConfig, run_name
from ssl_bench.datasets import load_dataset
from ssl_bench.sweep import Sweep

# the cheapest finished run: untrained, k-NN only, no low-shot, no layer probes
FAST = ["--evaluators", "knn", "--lowshot", "--no-layer-probes", "--no-step0"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))


def make_folder(root: Path, classes=("a", "b"), per_class=3, size=12, grey=False,
                test="test") -> Path:
    """A tiny ImageFolder tree of random PNGs."""
    rng = np.random.default_rng(0)
    for split in ("train", test):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                image = Image.fromarray(pixels).convert("L" if grey else "RGB")
                image.save(root / split / c / f"{i}.png")
    return root


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """An --out folder with one finished random-init run called ``mine`` and one
    unfinished denoising run (its config.yaml only) called ``half``."""
    out = tmp_path_factory.mktemp("out")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_BENCH_CACHE", str(out.parent / "cache"))
        assert main(["run", "--task", "random-init", "--name", "mine", "--out", str(out),
                     *FAST]) == 0
    (out / "half").mkdir()
    (out / "half" / "config.yaml").write_text(yaml.safe_dump(
        {**RunConfig(task="denoising").to_dict(), "task_overrides": {}}))
    return out


def refused(capsys, argv: list[str], out: Path, expected: str) -> None:
    before = snapshot(out)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert expected in lines[0]
    assert snapshot(out) == before


@pytest.mark.parametrize("extra, expected", [
    (["--name", ".", "--overwrite"], "--name '.' is not valid"),
    (["--name", "../x"], "--name '../x' is not valid"),
    (["--name", "a/b"], "--name 'a/b' is not valid"),
    (["--task", "denoising", "--name", "mine", "--resume"], "other settings (task"),
    (["--task", "random-init", "--name", "half", "--resume"], "other settings (task"),
    (["--task", "denoising", "--epochs", "0"], "--epochs 0 would record an untrained"),
    (["--task", "denoising", "--batch-size", "100000"], "--batch-size 100000 is larger"),
    (["--task", "denoising", "--train-subset", "1"], "--batch-size 128 is larger than the 1"),
    (["--backbone-opt", "width=0"], "--backbone-opt width=0"),
    (["--backbone-opt", "width=abc"], "--backbone-opt width='abc'"),
    (["--warmup-epochs", "-5"], "--warmup-epochs must be"),
    (["--lr", "-1"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--weight-decay", "-1"], "--weight-decay must be"),
    (["--precision", "fp16"], "argument --precision: invalid choice: 'fp16'"),
])
def test_run_refuses_in_one_line_and_touches_nothing(capsys, finished, extra, expected):
    argv = ["run", "--task", "random-init", *FAST, *extra, "--out", str(finished)]
    refused(capsys, argv, finished, expected)


@pytest.mark.parametrize("out_under_file", ["", "sub"])
def test_out_that_is_a_file_is_refused(capsys, tmp_path, out_under_file):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / out_under_file
    refused(capsys, ["run", "--task", "random-init", *FAST, "--out", str(out)], tmp_path,
            "is a file, not a folder")


def test_leaderboard_output_under_a_file_is_refused(capsys, finished, tmp_path):
    (tmp_path / "afile").write_text("x")
    refused(capsys, ["leaderboard", str(finished), "-o", str(tmp_path / "afile" / "lb.csv")],
            tmp_path, "-o ")


@pytest.mark.parametrize("make, option, expected", [
    (lambda r: make_folder(r, classes=("only",)), "imagefolder", "1 class(es)"),
    (lambda r: make_folder(r, classes=("a", "b"), per_class=1), "imagefolder", "2 train images"),
    (lambda r: make_folder(r, classes=tuple("abcdefghij"), per_class=2), "cifar100",
     "has 10 class folders; --dataset cifar100 has 100"),
])
def test_data_no_score_can_be_read_on_is_refused(capsys, tmp_path, make, option, expected):
    root = make(tmp_path / "data")
    out = tmp_path / "runs"
    out.mkdir()
    dataset = (["--dataset", f"imagefolder:{root}"] if option == "imagefolder" else
               ["--dataset", option, "--data-root", str(root)])
    refused(capsys, ["run", "--task", "random-init", *FAST, *dataset, "--out", str(out)], out,
            expected)


def test_grey_folder_loads_as_one_channel_and_colour_tasks_refuse_it(capsys, tmp_path):
    root = make_folder(tmp_path / "grey", grey=True)
    assert load_dataset(f"imagefolder:{root}").channels == 1
    out = tmp_path / "runs"
    assert main(["sweep", "--tasks", "split-brain", "--seeds", "0", "--datasets",
                 f"imagefolder:{root}", "--batch-size", "4", "--out", str(out), *FAST]) == 0
    assert "incompatible" in capsys.readouterr().err and not out.exists()


def test_hidden_folders_are_not_classes_and_validation_is_a_test_split(tmp_path):
    root = make_folder(tmp_path / "photos", test="validation")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (12, 12)).save(root / "train" / ".ipynb_checkpoints" / "x.png")
    data = load_dataset(f"imagefolder:{root}")
    assert data.class_names == ["a", "b"] and len(data.test_labels) == 6


def test_cache_follows_replaced_and_relabelled_images(tmp_path):
    root = make_folder(tmp_path / "photos")
    first = load_dataset(f"imagefolder:{root}")
    moved = root / "train" / "b" / "moved.png"
    (root / "train" / "a" / "0.png").rename(moved)  # relabelled: a → b
    relabelled = load_dataset(f"imagefolder:{root}")
    assert relabelled.train_labels.tolist() != first.train_labels.tolist()
    Image.new("RGB", (12, 12), (255, 0, 0)).save(moved)  # replaced
    replaced = load_dataset(f"imagefolder:{root}")
    assert replaced.train_images.float().mean() != relabelled.train_images.float().mean()


def test_folders_differing_in_non_ascii_letters_get_different_run_names():
    names = {run_name(RunConfig(task="jigsaw", dataset=f"imagefolder:/data/{d}"))
             for d in ("café", "cafè", "caf_")}
    assert len(names) == 3


def test_sweep_never_skips_a_run_made_with_other_settings(finished):
    # a finished run directory whose recorded settings differ from the sweep's
    config = RunConfig(task="random-init", name="mine", out=str(finished), evaluators=["linear"],
                       lowshot=[], layer_probes=False, step0=False)
    before = snapshot(finished)
    outcome = Sweep([config], run=lambda c: pytest.fail("must not run"), log=lambda _: None).run()
    assert not outcome.skipped and outcome.failed and "evaluators" in outcome.failed[0][1]
    assert snapshot(finished) == before


def test_leaderboard_skips_a_broken_results_file_with_a_warning(capsys, finished, tmp_path):
    broken = tmp_path / "runs" / "broken"
    broken.mkdir(parents=True)
    text = (finished / "mine" / "results.json").read_text()
    (broken / "results.json").write_text(text[:100])
    (tmp_path / "runs" / "mine").symlink_to(finished / "mine")
    assert main(["leaderboard", str(tmp_path / "runs"), "-o", str(tmp_path / "lb.csv")]) == 0
    assert "warning: skipping" in capsys.readouterr().err
    assert json.loads(text)["task"] in (tmp_path / "lb.csv").read_text()


def test_dataset_given_as_a_path_suggests_imagefolder(capsys, tmp_path):
    root = make_folder(tmp_path / "photos")
    refused(capsys, ["run", "--task", "random-init", *FAST, "--dataset", str(root), "--out",
                     str(tmp_path)], tmp_path, f"--dataset imagefolder:{root}")


def test_divergence_names_the_first_bad_step_and_leaves_no_folder(capsys, tmp_path, monkeypatch):
    from tasks.denoising import Denoising

    step = Denoising.training_step
    calls = {"n": 0}

    def nan_from_step_3(self, *args, **kwargs):
        calls["n"] += 1
        logs = step(self, *args, **kwargs)
        return {**logs, "loss": logs["loss"] * float("nan")} if calls["n"] >= 3 else logs

    monkeypatch.setattr(Denoising, "training_step", nan_from_step_3)
    out = tmp_path / "runs"
    assert main(["run", "--task", "denoising", *FAST, "--epochs", "1", "--train-subset", "640",
                 "--batch-size", "64", "--out", str(out)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "stopped being finite at step 3" in last
    assert not out.exists()  # it failed before its first checkpoint, and made --out


def test_files_follow_the_umask(finished):
    mode = (finished / "mine" / "results.json").stat().st_mode & 0o777
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask


def test_out_without_write_permission_is_refused(capsys, tmp_path, monkeypatch):
    # as root every folder is writable, so the permission answer is simulated
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    refused(capsys, ["run", "--task", "random-init", *FAST, "--out", str(tmp_path / "runs")],
            tmp_path, "no permission to write in")
