"""The leaderboard tables from results.json files: per run and aggregated over seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ssl_bench.core.errors import DataError, OptionError
from ssl_bench.core.rundir import atomic_write_json
from ssl_bench.leaderboard import (IDENTITY, aggregate_seeds, confidence_interval,
                                   headline_metrics, leaderboard_frame, leaderboard_markdown,
                                   write_leaderboard)


def _fake_run(root, name, task, knn, seed=0, linear=50.0, config_id=None, **extra):
    atomic_write_json(root / name / "results.json", {
        "task": task, "backbone": "convnet", "dataset": "digits", "epochs": 1, "images_seen": 10,
        "seed": seed, "config_id": config_id or f"id-{task}", "reference": task == "random-init",
        "metrics": {"knn_top1_k20": knn, "linear_top1": linear},
        "pretext": {"psnr_db": 20.0 + seed}, "cost": {"train_seconds": 1.0 + seed},
        "command": f"ssl-bench run --task {task} --seed {seed}", **extra})


def test_leaderboard_rows_and_columns(tmp_path):
    _fake_run(tmp_path / "runs", "a", "denoising", 60.0)
    _fake_run(tmp_path / "runs", "b", "random-init", 70.0)
    (tmp_path / "runs" / "unfinished").mkdir()
    summary, runs = write_leaderboard([tmp_path / "runs"], tmp_path / "out" / "lb.csv")
    assert list(runs["task"]) == ["random-init", "denoising"]  # sorted by k-NN top-1
    assert list(summary["task"]) == ["random-init", "denoising"]
    assert list(summary["reference"]) == [True, False]  # recorded by the run, not by name
    per_run = pd.read_csv(tmp_path / "out" / "lb_runs.csv")
    assert list(per_run.columns[:len(IDENTITY)]) == IDENTITY
    assert {"pretext_psnr_db", "config_id", "run", "command"} <= set(per_run.columns)
    assert list(per_run["run"]) == ["b", "a"]
    assert (tmp_path / "out" / "lb.md").read_text().startswith("|")


def test_columns_come_from_the_recorded_metrics(tmp_path):
    """Any evaluator, low-shot percentage or layer a run recorded gets a column;
    directory names play no part."""
    _fake_run(tmp_path, "whatever-name-1", "jigsaw", 60.0, metrics={
        "knn_top1_k10": 61.0, "knn_top1_k50": 59.0, "linear_top1": 55.0,
        "linear_top1_5pct": 41.0, "linear_top1_0.5pct": 22.0, "svm_top1": 57.0},
        layers=[{"name": "stage1", "linear_top1": 44.0}, {"name": "stage2", "linear_top1": 47.0}])
    runs = leaderboard_frame([tmp_path])
    assert {"knn_top1_k10", "knn_top1_k50", "linear_top1_5pct", "linear_top1_0.5pct",
            "svm_top1", "layer_stage1_linear_top1", "layer_stage2_linear_top1"} <= set(runs)
    summary = aggregate_seeds(runs)
    headers = [header for _, header, _ in headline_metrics(summary)]
    assert headers[:4] == ["k-NN top-1, k=10 (%)", "linear top-1 (%)",
                           "linear top-1, 0.5% labels (%)", "linear top-1, 5% labels (%)"]
    md = (write_leaderboard([tmp_path], tmp_path / "lb.csv")[0], (tmp_path / "lb.md").read_text())
    assert "5% labels" in md[1] and "41.0" in md[1]


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


def test_aggregation_groups_seeds_and_keeps_per_run_rows(tmp_path):
    root = tmp_path / "runs"
    knn = [60.0, 62.0, 67.0]
    for seed, value in enumerate(knn):
        _fake_run(root, f"run{seed}", "jigsaw", value, seed=seed, config_id="0123abcd",
                  linear=None if seed == 2 else 50.0 + seed)
    _fake_run(root, "run3", "jigsaw", 40.0, config_id="89abcdef")  # another configuration
    _fake_run(root, "run4", "random-init", 30.0, config_id="ri")
    summary, runs = write_leaderboard([root], tmp_path / "out" / "leaderboard.csv")

    assert len(runs) == 5 and len(pd.read_csv(tmp_path / "out" / "leaderboard_runs.csv")) == 5
    csv = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert len(csv) == 3
    row = csv.set_index("config_id").loc["0123abcd"]
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

    single = csv.set_index("config_id").loc["ri"]
    assert single["n"] == 1 and single["knn_top1_k20_mean"] == 30.0
    assert np.isnan(single["knn_top1_k20_std"]) and np.isnan(single["knn_top1_k20_ci95_low"])

    md = (tmp_path / "out" / "leaderboard.md").read_text()
    table = {cells[3]: cells for cells in (
        [c.strip() for c in line.split("|")[1:-1]] for line in md.splitlines()
        if line.startswith("|"))}
    assert table["config_id"][:6] == ["task", "backbone", "dataset", "config_id", "n",
                                      "k-NN top-1, k=20 (%)"]
    assert table["0123abcd"][4:6] == ["3", f"63.0 ± {(high - low) / 2:.1f}"]
    assert table["ri"][4:6] == ["1", "30.0"]  # n = 1: no interval
    assert table["ri"][0] == "random-init (ref.)"
    assert "leaderboard_runs.csv" in md


def test_a_repeated_seed_of_one_configuration_counts_once(tmp_path, capsys):
    _fake_run(tmp_path, "a", "random-init", 30.0, epochs=1)
    _fake_run(tmp_path, "b", "random-init", 30.0, epochs=20)  # random-init ignores epochs
    summary = aggregate_seeds(leaderboard_frame([tmp_path]))
    assert summary.loc[0, "n"] == 1
    assert "repeats configuration" in capsys.readouterr().err


def test_aggregate_seeds_of_single_runs_does_not_crash(tmp_path):
    _fake_run(tmp_path, "vae-convnet-digits-s0", "vae", 55.0, metrics={})
    summary = aggregate_seeds(leaderboard_frame([tmp_path]))
    assert summary.loc[0, "n"] == 1
    assert "knn_top1_k20_mean" not in summary  # nothing recorded, no column
    with pytest.raises(DataError, match="no runs"):
        aggregate_seeds(pd.DataFrame())


def test_leaderboard_without_runs(tmp_path):
    with pytest.raises(DataError, match="no finished runs"):
        write_leaderboard([tmp_path], tmp_path / "lb.csv")
    with pytest.raises(DataError, match="does not exist"):
        write_leaderboard([tmp_path / "missing"], tmp_path / "lb.csv")


def test_gain_over_step0_with_its_interval_and_the_pretext_beside_chance(tmp_path):
    step0 = {"metrics": {"knn_top1_k20": 50.0, "linear_top1": 40.0, "linear_lr": 0.1},
             "pretext": {"top1": 12.0}}
    for seed, (linear, pretext) in enumerate([(45.0, 20.0), (47.0, 22.0), (46.0, 21.0)]):
        _fake_run(tmp_path, f"learns{seed}", "relative-patch", 55.0, seed=seed, linear=linear,
                  step0=step0, pretext={"top1": pretext}, pretext_chance={"top1": 12.5})
    for seed, linear in enumerate([39.0, 42.0, 40.5]):
        _fake_run(tmp_path, f"flat{seed}", "jigsaw", 50.0, seed=seed, linear=linear, step0=step0)
    runs = leaderboard_frame([tmp_path])
    assert runs.loc[runs["run"] == "learns0", "gain_linear_top1"].item() == 5.0
    assert "gain_linear_lr" not in runs  # a probe's choice is not a measurement
    summary = aggregate_seeds(runs).set_index("task")
    assert summary.loc["relative-patch", "gain_linear_top1_mean"] == pytest.approx(6.0)
    assert summary.loc["relative-patch", "pretext_top1_chance"] == 12.5
    md = leaderboard_markdown(summary.reset_index())
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("|")}
    assert "top1 21 (chance 12.5, step 0 12)" in rows["relative-patch"]
    assert "†" not in rows["relative-patch"] and "†" in rows["jigsaw"]  # its CI includes 0


def test_configurations_of_one_task_are_labelled_by_the_options_they_differ_in(tmp_path):
    for seed in (0, 1):
        for adversarial in (True, False):
            _fake_run(tmp_path, f"ce-{adversarial}-{seed}", "context-encoder", 40.0, seed=seed,
                      config_id=f"id-{adversarial}", config={"task_options": {
                          "mask": "center", "adversarial": adversarial}})
    _fake_run(tmp_path, "jig", "jigsaw", 30.0, config={"task_options": {"mask": "center"}})
    md = leaderboard_markdown(aggregate_seeds(leaderboard_frame([tmp_path])))
    assert "context-encoder (adversarial=false)" in md
    assert "context-encoder (adversarial=true)" in md
    assert "| jigsaw " in md and "mask=" not in md  # a shared option labels nothing


def test_a_reference_gain_over_step0_is_a_dash_not_a_dagger(tmp_path):
    """A reference's step 0 is itself: its gain is 0 by construction, not a finding."""
    for seed in range(3):
        step0 = {"metrics": {"knn_top1_k20": 30.0 + seed, "linear_top1": 40.0 + seed}}
        _fake_run(tmp_path, f"ri{seed}", "random-init", 30.0 + seed, seed=seed,
                  linear=40.0 + seed, step0=step0)
    md = leaderboard_markdown(aggregate_seeds(leaderboard_frame([tmp_path])))
    row = next(line for line in md.splitlines() if line.startswith("| random-init"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    header = next(line for line in md.splitlines() if line.startswith("| task"))
    gain = [c.strip() for c in header.split("|")[1:-1]].index(
        "linear top-1 gain over step 0 (points)")
    assert cells[gain] == "–" and "†" not in row
