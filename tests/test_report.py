"""``ssl-bench report``: Markdown + figures from fake run directories."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_bench.cli import main
from ssl_bench.core.errors import DataError
from ssl_bench.report import build_report, first_seeds, layer_frame, load_runs
from ssl_bench.core.rundir import atomic_write_json

PNG = b"\x89PNG\r\n\x1a\n"
LAYERS = {"convnet": ["stage1", "stage2", "stage3", "stage4"],
          "vit_tiny": ["block3", "block6", "block9", "block12"], "pixels": ["pixels"]}


def _fake_run(root, task, backbone, seed, picture=True, sample=True, layers=True):
    name = f"{task}-{backbone}-digits-s{seed}-0123abcd"
    run = root / name
    run.mkdir(parents=True)
    acc = 40.0 + 5 * seed + len(task)
    record = {
        "task": task, "backbone": backbone, "dataset": "digits", "seed": seed, "epochs": 2,
        "config_id": f"{task}-id", "reference": task in ("random-init", "pixels"),
        "batch_size": 64, "pretrain_images": 1000, "eval_train_images": 900, "test_images": 360,
        "images_seen": 1984, "steps": 31,
        "metrics": {"knn_top1_k20": acc, "linear_top1": acc + 3, "linear_top1_1pct": acc - 9,
                    "layer_best_linear_top1": acc + 4},
        "layers": [{"name": n, "depth": i, "linear_top1": acc - 4 + 2 * i}
                   for i, n in enumerate(LAYERS[backbone], 1)] if layers else [],
        "layer_best": LAYERS[backbone][-1], "pretext": {},
        "cost": {"train_seconds": 12.5 + seed, "backbone_params": 1000},
        "command": f"ssl-bench run --task {task} --backbone {backbone} --seed {seed} --epochs 2",
        "figures": {"task": f"{task}.png" if picture else None, "loss": None},
        "feature_sample": "test_features_sample.pt" if sample else None}
    atomic_write_json(run / "results.json", record)
    if picture:
        Image.new("RGB", (16, 8), (seed * 100, 0, 0)).save(run / f"{task}.png")
    if sample:
        labels = torch.arange(30) % 3
        features = torch.randn(30, 8) + 4 * torch.nn.functional.one_hot(labels, 8)
        torch.save({"features": features.half(), "labels": labels,
                    "class_names": ["zero", "one", "two"]}, run / "test_features_sample.pt")
    return run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for seed in (1, 0):
        _fake_run(root, "jigsaw", "convnet", seed)
        _fake_run(root, "mae", "vit_tiny", seed)
    _fake_run(root, "random-init", "convnet", 0, picture=False)
    _fake_run(root, "pixels", "pixels", 0, picture=False, sample=False)
    (root / "unfinished").mkdir()
    return root


def _links(readme):
    return re.findall(r"\]\((figures/[^)]+)\)", readme.read_text())


def test_report_links_every_figure(runs, tmp_path):
    out = tmp_path / "results"
    readme = build_report([runs], out, title="Digits sweep",
                          sweep_commands=["ssl-bench sweep --seeds 0 1 --epochs 2"])
    assert readme == out / "README.md"
    text = readme.read_text()
    links = _links(readme)
    pngs = sorted(p.relative_to(out).as_posix() for p in (out / "figures").glob("*.png"))
    assert sorted(links) == pngs  # every figure is linked, every link exists
    assert all((out / link).read_bytes().startswith(PNG) for link in links)
    assert {"figures/leaderboard_bars.png", "figures/accuracy_vs_cost.png",
            "figures/layer_probes.png", "figures/projection_digits.png",
            "figures/task_jigsaw_convnet_digits_jigsaw-id.png",
            "figures/task_mae_vit_tiny_digits_mae-id.png"} == set(links)
    # the picture is the lowest seed's (seed 0 is black, seed 1 red)
    picture = out / "figures/task_jigsaw_convnet_digits_jigsaw-id.png"
    assert Image.open(picture).getpixel((0, 0)) == (0, 0, 0)

    assert text.startswith("# Digits sweep\n")
    assert "6 finished runs of 4 configurations" in text
    assert "ssl-bench sweep --seeds 0 1 --epochs 2" in text
    assert "ssl-bench run --task jigsaw --backbone convnet --seed N --epochs 2" in text
    assert "--seed 0" not in text and "--seed 1" not in text
    assert "| jigsaw " in text and "| 0,1 " in text  # budget table with the seeds
    for name in ("leaderboard.csv", "leaderboard_runs.csv", "leaderboard.md"):
        assert (out / name).is_file()
        assert f"]({name})" in text or name == "leaderboard.md"


def test_report_without_optional_data_says_what_is_missing(tmp_path):
    root = tmp_path / "runs"
    _fake_run(root, "vae", "convnet", 0, picture=False, sample=False, layers=False)  # n = 1
    readme = build_report([root], tmp_path / "out")
    assert _links(readme) == ["figures/leaderboard_bars.png", "figures/accuracy_vs_cost.png"]
    text = readme.read_text()
    assert "Not drawn: no run probed two or more layers" in text
    assert "Not drawn: no run saved a test-feature sample" in text
    assert "Not drawn: no run saved a task picture" in text


def test_report_with_no_runs_is_a_data_error(tmp_path, capsys):
    with pytest.raises(DataError, match="no finished runs"):
        build_report([tmp_path], tmp_path / "out")
    assert not (tmp_path / "out" / "README.md").exists()
    assert main(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: run directory")


def test_report_cli(runs, tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["report", str(runs), "-o", str(out), "--title", "T",
                 "--sweep-command", "first", "--sweep-command", "second"]) == 0
    text = (out / "README.md").read_text()
    assert "```\nfirst\nsecond\n```" in text
    assert str(out / "README.md") in capsys.readouterr().out


def test_layer_frame_and_first_seeds(runs):
    loaded = load_runs([runs])
    chosen = first_seeds(loaded)
    assert sorted((r["task"], r["seed"]) for _, r in chosen) == [
        ("jigsaw", 0), ("mae", 0), ("pixels", 0), ("random-init", 0)]
    layers = layer_frame(loaded)
    assert len(layers) == 4 * 4 + 4 + 1  # jigsaw, mae (2 seeds × 4 layers), random-init, pixels
    jigsaw = layers[(layers["task"] == "jigsaw") & (layers["seed"] == 0)]
    assert list(jigsaw["index"]) == [1, 2, 3, 4]
    assert list(jigsaw["layer"]) == LAYERS["convnet"]
    assert set(layers["config_id"]) >= {"jigsaw-id"}
    assert np.allclose(jigsaw["linear_top1"], [44, 46, 48, 50])
