"""The leaderboard table from results.json files."""

from __future__ import annotations

import pandas as pd
import pytest

from ssl_bench.errors import DataError
from ssl_bench.leaderboard import COLUMNS, write_leaderboard
from ssl_bench.rundir import atomic_write_json


def _fake_run(root, name, task, knn):
    atomic_write_json(root / name / "results.json", {
        "task": task, "backbone": "convnet", "dataset": "digits", "epochs": 1, "images_seen": 10,
        "seed": 0, "metrics": {"knn_top1_k20": knn, "linear_top1": 50.0},
        "pretext": {"psnr_db": 20.0}, "cost": {"train_seconds": 1.0}, "command": f"ssl-bench run --task {task}"})


def test_leaderboard_rows_and_columns(tmp_path):
    _fake_run(tmp_path / "runs", "a", "denoising", 60.0)
    _fake_run(tmp_path / "runs", "b", "random-init", 70.0)
    (tmp_path / "runs" / "unfinished").mkdir()
    frame = write_leaderboard([tmp_path / "runs"], tmp_path / "out" / "lb.csv")
    assert list(frame["task"]) == ["random-init", "denoising"]  # sorted by k-NN top-1
    csv = pd.read_csv(tmp_path / "out" / "lb.csv")
    assert [c for c, _ in COLUMNS] == list(csv.columns[:len(COLUMNS)])
    assert {"pretext_psnr_db", "run", "command"} <= set(csv.columns)
    assert (tmp_path / "out" / "lb.md").read_text().startswith("|")


def test_leaderboard_without_runs(tmp_path):
    with pytest.raises(DataError, match="no finished runs"):
        write_leaderboard([tmp_path], tmp_path / "lb.csv")
    with pytest.raises(DataError, match="does not exist"):
        write_leaderboard([tmp_path / "missing"], tmp_path / "lb.csv")
