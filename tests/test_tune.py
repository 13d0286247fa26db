"""``ssl-bench tune``: the same grid for every task, chosen without the test split."""

from __future__ import annotations

import pytest
import yaml

import ssl_bench.datasets
import ssl_bench.runner
from ssl_bench.cli import main
from ssl_bench.config import RunConfig
from ssl_bench.core.registry import TASKS
from ssl_bench.tune import LR_SCALES, apply_tuned, grid, is_tuned

TUNED_TASKS = [n for n in TASKS.names() if is_tuned(n)]
TINY = ["--epochs", "1", "--train-subset", "64", "--batch-size", "32",
        "--test-subset", "100"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", TUNED_TASKS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_task_gets_the_same_six_point_grid(name, channels):
    configs = grid(RunConfig(task=name), channels)
    points = [(c.lr_scale, tuple(sorted(c.task_options.items()))) for c in configs]
    assert len(set(points)) == len(points) == 2 * len(LR_SCALES)
    assert points[0][0] == 1.0  # the default learning rate first: it wins ties
    assert all(not c.step0 and not c.layer_probes and c.evaluators == ["linear"]
               for c in configs)


def _tuned_tasks(path):
    return {key: entry["tasks"] for key, entry in yaml.safe_load(path.read_text()).items()}


def test_shuffled_test_labels_leave_the_tuned_file_identical(tmp_path, monkeypatch):
    argv = ["tune", "--tasks", "denoising", "random-init", *TINY]
    assert main([*argv, "--out", str(tmp_path / "a"), "-o", str(tmp_path / "a.yaml")]) == 0

    real = ssl_bench.datasets.load_dataset

    def shuffled(*args, **kwargs):
        data = real(*args, **kwargs)
        data.test_labels = data.test_labels[torch_randperm(len(data.test_labels))]
        return data

    monkeypatch.setattr(ssl_bench.runner, "load_dataset", shuffled)
    monkeypatch.setattr(ssl_bench.datasets, "load_dataset", shuffled)
    assert main([*argv, "--out", str(tmp_path / "b"), "-o", str(tmp_path / "b.yaml")]) == 0
    first, second = _tuned_tasks(tmp_path / "a.yaml"), _tuned_tasks(tmp_path / "b.yaml")
    assert first == second
    assert set(first["digits/convnet"]) == {"denoising"}  # references keep their recipe
    assert len(first["digits/convnet"]["denoising"]["grid"]) == 6


def torch_randperm(n):
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(123))


def test_runs_take_the_tuned_settings_and_explicit_options_win(tmp_path, capsys):
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text(yaml.safe_dump({"digits/convnet": {"budget": {}, "command": "x", "tasks": {
        "denoising": {"lr_scale": 0.25, "set": {"noise": "masking", "fraction": 0.25},
                      "seeds": [1000]}}}}))
    config = apply_tuned(RunConfig(task="denoising"), tuned)
    assert config.lr_scale == 0.25 and config.task_options == {"noise": "masking",
                                                               "fraction": 0.25}
    config = apply_tuned(RunConfig(task="denoising", task_options={"fraction": "0.5"}), tuned)
    assert config.task_options["fraction"] == "0.5"
    assert apply_tuned(RunConfig(task="random-init"), tuned).lr_scale == 1.0  # a reference
    assert main(["run", "--task", "jigsaw", "--tuned", str(tuned), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tuned") and "no entry for task 'jigsaw'" in err
    (tmp_path / "bad.yaml").write_text("[1, 2]")
    assert main(["run", "--task", "denoising", "--tuned", str(tmp_path / "bad.yaml"),
                 "--out", str(tmp_path)]) == 2
    assert "give a file written by ssl-bench tune" in capsys.readouterr().err


def test_the_report_prints_the_grid_and_the_choice(tmp_path):
    from ssl_bench.report import tuning_section

    tuned = tmp_path / "tuned.yaml"
    grid_rows = [{"lr_scale": 1.0, "set": {}, "linear_val_top1": 50.0},
                 {"lr_scale": 4.0, "set": {"noise": "masking"}, "linear_val_top1": 61.0}]
    tuned.write_text(yaml.safe_dump({"cifar10/convnet": {
        "budget": {"epochs": 1}, "command": "ssl-bench tune --tasks denoising", "tasks": {
            "denoising": {"lr_scale": 4.0, "set": {"noise": "masking"}, "grid": grid_rows}}}}))
    text = tuning_section(tuned)
    assert "ssl-bench tune --tasks denoising" in text
    assert "×1 default → 50.0" in text and "**×4 {'noise': 'masking'} → 61.0**" in text
