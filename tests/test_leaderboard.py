"""The leaderboard tables from results.json files: per run and aggregated over seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ssl_bench.errors import DataError, OptionError
from ssl_bench.leaderboard import (COLUMNS, aggregate_seeds, confidence_interval, config_name,
                                   leaderboard_frame, write_leaderboard)
from ssl_bench.rundir import atomic_write_json


def _fake_run(root, name, task, knn, seed=0, linear=50.0, **extra):
    atomic_write_json(root / name / "results.json", {
        "task": task, "backbone": "convnet", "dataset": "digits", "epochs": 1, "images_seen": 10,
        "seed": seed, "metrics": {"knn_top1_k20": knn, "linear_top1": linear},
        "pretext": {"psnr_db": 20.0 + seed}, "cost": {"train_seconds": 1.0 + seed},
        "command": f"ssl-bench run --task {task} --seed {seed}", **extra})


def test_leaderboard_rows_and_columns(tmp_path):
    _fake_run(tmp_path / "runs", "a", "denoising", 60.0)
    _fake_run(tmp_path / "runs", "b", "random-init", 70.0)
    (tmp_path / "runs" / "unfinished").mkdir()
    summary, runs = write_leaderboard([tmp_path / "runs"], tmp_path / "out" / "lb.csv")
    assert list(runs["task"]) == ["random-init", "denoising"]  # sorted by k-NN top-1
    assert list(summary["task"]) == ["random-init", "denoising"]
    per_run = pd.read_csv(tmp_path / "out" / "lb_runs.csv")
    assert [c for c, _ in COLUMNS] == list(per_run.columns[:len(COLUMNS)])
    assert {"pretext_psnr_db", "config", "run", "command"} <= set(per_run.columns)
    assert list(per_run["run"]) == ["b", "a"]
    assert (tmp_path / "out" / "lb.md").read_text().startswith("|")


def test_confidence_interval_matches_scipy_t_interval():
    values = [31.2, 33.0, 30.1, 32.4, 29.8]
    expected = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                                scale=stats.sem(values))
    assert confidence_interval(values) == pytest.approx(expected, rel=1e-12)
    assert confidence_interval(values, 0.99) == pytest.approx(
        stats.t.interval(0.99, 4, loc=np.mean(values), scale=stats.sem(values)), rel=1e-12)
    # hand-checked: mean 2, s = 1, t(0.975, 2) = 4.302653 → 2 ± 4.302653/√3
    assert confidence_interval([1.0, 2.0, 3.0]) == pytest.approx((2 - 2.484138, 2 + 2.484138),
                                                                 abs=1e-6)
    # missing values are ignored
    assert confidence_interval([1.0, None, 3.0, float("nan")]) == pytest.approx(
        confidence_interval([1.0, 3.0]))


def test_confidence_interval_of_one_value_is_nan():
    assert all(math.isnan(v) for v in confidence_interval([42.0]))
    assert all(math.isnan(v) for v in confidence_interval([]))
    with pytest.raises(OptionError, match="between 0 and 1"):
        confidence_interval([1.0, 2.0], level=95)


@pytest.mark.parametrize("name, config", [
    ("jigsaw-convnet-cifar10-s12-433c200a", "jigsaw-convnet-cifar10-433c200a"),
    ("random-init-convnet-digits-s0", "random-init-convnet-digits"),
    ("mae-timm_vit_s16-digits-s3", "mae-timm_vit_s16-digits"),
    ("my-custom-name", "my-custom-name"),
])
def test_config_name_drops_only_the_seed(name, config):
    assert config_name(name) == config


def test_aggregation_groups_seeds_and_keeps_per_run_rows(tmp_path):
    root = tmp_path / "runs"
    knn = [60.0, 62.0, 67.0]
    for seed, value in enumerate(knn):
        _fake_run(root, f"jigsaw-convnet-digits-s{seed}-0123abcd", "jigsaw", value, seed=seed,
                  linear=None if seed == 2 else 50.0 + seed)
    _fake_run(root, "jigsaw-convnet-digits-s0-89abcdef", "jigsaw", 40.0)  # another config
    _fake_run(root, "random-init-convnet-digits-s0", "random-init", 30.0)
    summary, runs = write_leaderboard([root], tmp_path / "out" / "leaderboard.csv")

    assert len(runs) == 5 and len(pd.read_csv(tmp_path / "out" / "leaderboard_runs.csv")) == 5
    csv = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert len(csv) == 3
    row = csv.set_index("config").loc["jigsaw-convnet-digits-0123abcd"]
    assert (row["n"], row["seeds"]) == (3, "0,1,2")
    assert row["knn_top1_k20_mean"] == pytest.approx(np.mean(knn))
    assert row["knn_top1_k20_std"] == pytest.approx(np.std(knn, ddof=1), abs=1e-4)
    low, high = stats.t.interval(0.95, 2, loc=np.mean(knn), scale=stats.sem(knn))
    assert (row["knn_top1_k20_ci95_low"], row["knn_top1_k20_ci95_high"]) == pytest.approx(
        (low, high), abs=1e-4)
    # a metric one seed did not record is aggregated over the others
    assert (row["linear_top1_n"], row["linear_top1_mean"]) == (2, pytest.approx(50.5))
    assert row["pretext_psnr_db_mean"] == pytest.approx(21.0)
    assert row["epochs"] == 1

    single = csv.set_index("config").loc["random-init-convnet-digits"]
    assert single["n"] == 1 and single["knn_top1_k20_mean"] == 30.0
    assert np.isnan(single["knn_top1_k20_std"]) and np.isnan(single["knn_top1_k20_ci95_low"])

    md = (tmp_path / "out" / "leaderboard.md").read_text()
    table = {cells[3]: cells for cells in (
        [c.strip() for c in line.split("|")[1:-1]] for line in md.splitlines()
        if line.startswith("|"))}
    assert table["config"][:6] == ["task", "backbone", "dataset", "config", "n", "k-NN top-1 (%)"]
    assert table["jigsaw-convnet-digits-0123abcd"][4:6] == ["3", f"63.0 ± {(high - low) / 2:.1f}"]
    assert table["random-init-convnet-digits"][4:6] == ["1", "30.0"]  # n = 1: no interval
    assert "leaderboard_runs.csv" in md


def test_aggregate_seeds_of_single_runs_does_not_crash(tmp_path):
    _fake_run(tmp_path, "vae-convnet-digits-s0", "vae", 55.0, metrics={})
    summary = aggregate_seeds(leaderboard_frame([tmp_path]))
    assert summary.loc[0, "n"] == 1
    assert np.isnan(summary.loc[0, "knn_top1_k20_mean"])
    with pytest.raises(DataError, match="no runs"):
        aggregate_seeds(pd.DataFrame())


def test_leaderboard_without_runs(tmp_path):
    with pytest.raises(DataError, match="no finished runs"):
        write_leaderboard([tmp_path], tmp_path / "lb.csv")
    with pytest.raises(DataError, match="does not exist"):
        write_leaderboard([tmp_path / "missing"], tmp_path / "lb.csv")
