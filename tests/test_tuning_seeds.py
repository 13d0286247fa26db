"""Tuning apart from the reported runs: its own seeds (refused in reports), a validation
split large enough to rank the grid, a close top two settled on more seeds, and one row
per task and fixed options. The tuning runs are simulated: what is tested is how tune
chooses and what it writes, not training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import ssl_bench.sweep
from ssl_bench.cli import main
from ssl_bench.config import RunConfig, run_name
from ssl_bench.core.rundir import RESULTS, atomic_write_json
from ssl_bench.datasets import load_dataset
from ssl_bench.tune import TUNING_SEEDS, apply_tuned, grid, row_key, validation_images
from test_bad_input import refused


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))


def _fake_tuning(monkeypatch, score):
    """Replace every run of a sweep by a ``results.json`` whose validation top-1 is
    ``score(config)``; returns the list of configs that ran, in order."""
    ran: list[RunConfig] = []

    def run(self):
        for config in self.configs:
            ran.append(config)
            atomic_write_json(Path(config.out) / run_name(config) / RESULTS,
                              {"metrics": {"linear_val_top1": score(config)}})
        return ssl_bench.sweep.SweepOutcome()

    monkeypatch.setattr(ssl_bench.sweep.Sweep, "run", run)
    return ran


def _apart(config) -> float:
    """Validation top-1 of a grid whose leader (×4, the default knob: 60 %) is clear:
    20 points ahead, where two standard errors of a difference on digits' validation
    split (136 images, 10 % of its train split) are at most 2·√(0.5/136) = 12 points."""
    return 10.0 * config.lr_scale + (0.0 if config.task_options.get("noise") == "masking"
                                     else 20.0)


def _tune(tmp_path, *extra) -> dict:
    out = tmp_path / "tuned.yaml"
    assert main(["tune", "--tasks", "denoising", *extra, "--out", str(tmp_path / "runs"),
                 "-o", str(out)]) == 0
    return yaml.safe_load(out.read_text())["digits/convnet"]["tasks"]


def _tuned_file(tmp_path, seeds=None, budget=None) -> Path:
    choice = {"lr_scale": 1.0, "set": {}}
    if seeds is not None:
        choice["seeds"] = seeds
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump({"digits/convnet": {
        "budget": budget or {}, "command": "x", "tasks": {"denoising": choice}}}))
    return path


# --------------------------------------------------------------- tuning seeds never reported

def test_tune_runs_at_its_own_seeds_and_records_them(tmp_path, monkeypatch):
    ran = _fake_tuning(monkeypatch, _apart)
    tasks = _tune(tmp_path)
    assert {c.seed for c in ran} == {TUNING_SEEDS[0]}
    assert tasks["denoising"]["seeds"] == [TUNING_SEEDS[0]]
    assert not set(TUNING_SEEDS) & {0, 1, 2}  # sweep's default seeds


@pytest.mark.parametrize("command", [["run", "--task", "denoising", "--seed", "1000"],
                                     ["sweep", "--tasks", "denoising", "--seeds", "3", "1000"]])
def test_a_run_at_a_tuning_seed_is_refused(capsys, tmp_path, command):
    tuned = _tuned_file(tmp_path, seeds=[1000, 1001])
    out = tmp_path / "runs"
    out.mkdir()
    refused(capsys, [*command, "--tuned", str(tuned), "--out", str(out)], out,
            f"seed 1000: --tuned {tuned} was tuned at seed(s) 1000 1001")


@pytest.mark.parametrize("budget, seed", [({"seed": 7}, "7"), ({}, "0")])
def test_files_older_than_the_seeds_field_count_as_tuned_at_their_budget_seed(
        capsys, tmp_path, budget, seed):
    tuned = _tuned_file(tmp_path, budget=budget)
    out = tmp_path / "runs"
    out.mkdir()
    refused(capsys, ["run", "--task", "denoising", "--seed", seed, "--tuned", str(tuned),
                     "--out", str(out)], out, f"seed {seed}: --tuned")
    assert apply_tuned(RunConfig(task="denoising", seed=1), tuned).tuned == str(tuned)


# --------------------------------------------------------------- validation split size

def test_tune_validates_on_5000_cifar10_images():
    # CIFAR-10's train split: 50,000 labels, 5,000 per class
    labels = torch.arange(10).repeat_interleave(5000)
    assert validation_images(labels) == 5000
    configs = grid(RunConfig(task="denoising", dataset="cifar10", eval_train_subset=5000), 3)
    assert all(c.eval_train_subset is None for c in configs)  # every labelled image


def test_tune_records_the_validation_size_and_refuses_a_smaller_labelled_subset(
        capsys, tmp_path, monkeypatch):
    _fake_tuning(monkeypatch, _apart)
    digits = validation_images(load_dataset("digits").train_labels)
    assert _tune(tmp_path)["denoising"]["val_images"] == digits
    out = tmp_path / "runs2"
    out.mkdir()
    refused(capsys, ["tune", "--tasks", "denoising", "--eval-train-subset", "5000", "--out",
                     str(out), "-o", str(out / "t.yaml")], out, "--eval-train-subset 5000")


# --------------------------------------------------------------- a close top two

def _close_top_two(config):
    """×1 and ×4 (default noise) lead at seed 1000, 0.5 points apart: within noise on
    any validation split under 80,000 images (2·100·√(0.5/n) > 0.5); ×4 wins on the
    mean over three seeds."""
    if config.task_options.get("noise") == "masking":
        return 10.0
    return {1.0: {1000: 50.0, 1001: 40.0, 1002: 40.0},
            4.0: {1000: 49.5, 1001: 45.0, 1002: 45.0}}.get(config.lr_scale, {}).get(
        config.seed, 20.0)


def test_a_close_top_two_runs_again_at_the_other_tuning_seeds(tmp_path, monkeypatch):
    ran = _fake_tuning(monkeypatch, _close_top_two)
    choice = _tune(tmp_path)["denoising"]
    extra = [(c.lr_scale, c.seed) for c in ran if c.seed != 1000]
    assert sorted(extra) == [(1.0, 1001), (1.0, 1002), (4.0, 1001), (4.0, 1002)]
    assert choice["lr_scale"] == 4.0 and choice["contested"]  # the better mean
    assert choice["linear_val_top1"] == pytest.approx((49.5 + 45 + 45) / 3)
    assert choice["seeds"] == [1000, 1001, 1002]


def test_a_clear_leader_needs_no_other_seed(tmp_path, monkeypatch):
    ran = _fake_tuning(monkeypatch, _apart)
    choice = _tune(tmp_path)["denoising"]
    assert {c.seed for c in ran} == {1000}
    assert choice["lr_scale"] == 4.0 and not choice["contested"]


# --------------------------------------------------------------- one row per fixed options

def test_the_reconstruction_only_context_encoder_is_its_own_row(capsys, tmp_path):
    assert row_key("context-encoder", {"adversarial": "false"}) == \
        "context-encoder adversarial=false"
    assert row_key("context-encoder", {"adversarial": "true", "mask": "center"}) == \
        "context-encoder"  # a default and the knob name no other row
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text(yaml.safe_dump({"digits/convnet": {"budget": {}, "command": "x", "tasks": {
        "context-encoder": {"lr_scale": 4.0, "set": {"mask": "center"}, "seeds": [1000]}}}}))
    out = tmp_path / "runs"
    out.mkdir()
    refused(capsys, ["run", "--task", "context-encoder", "--set", "adversarial=false",
                     "--tuned", str(tuned), "--out", str(out)], out,
            "no entry for task 'context-encoder' with adversarial=false on digits/convnet; run "
            "ssl-bench tune --tasks context-encoder --set adversarial=false")
    data = yaml.safe_load(tuned.read_text())
    data["digits/convnet"]["tasks"]["context-encoder adversarial=false"] = {
        "lr_scale": 0.25, "set": {}, "seeds": [1000]}
    tuned.write_text(yaml.safe_dump(data))
    config = apply_tuned(RunConfig(task="context-encoder",
                                   task_options={"adversarial": "false"}), tuned)
    assert config.lr_scale == 0.25 and config.task_options == {"adversarial": "false"}


def test_tune_writes_the_fixed_options_row(tmp_path, monkeypatch):
    ran = _fake_tuning(monkeypatch, _apart)
    out = tmp_path / "tuned.yaml"
    assert main(["tune", "--tasks", "context-encoder", "--set", "adversarial=false", "--out",
                 str(tmp_path / "runs"), "-o", str(out)]) == 0
    tasks = yaml.safe_load(out.read_text())["digits/convnet"]["tasks"]
    assert list(tasks) == ["context-encoder adversarial=false"]
    assert all(c.task_options["adversarial"] == "false" for c in ran)


# --------------------------------------------------------------- BN re-estimation decision

def test_the_bn_recalibration_table_compares_validation_not_test(tmp_path, capsys):
    import runpy

    script = runpy.run_path(str(Path(__file__).parents[1] / "results" / "bn_recalibration.py"))
    for seed, (run_val, bn_val) in enumerate([(40.0, 41.0), (42.0, 44.0)]):
        (tmp_path / "runs" / f"r{seed}").mkdir(parents=True)
        (tmp_path / "runs" / f"r{seed}" / RESULTS).write_text(json.dumps({
            "task": "jigsaw", "config": {"task_options": {}},
            "metrics": {"linear_val_top1": run_val, "linear_top1": 99.0, "knn_top1_k20": 99.0}}))
        (tmp_path / "bn").mkdir(exist_ok=True)
        (tmp_path / "bn" / f"r{seed}.json").write_text(json.dumps({"metrics": {
            "linear_val_top1": bn_val, "linear_top1": 1.0, "knn_top1_k20": 1.0}}))
    script["main"](str(tmp_path / "runs"), str(tmp_path / "bn"))
    table = capsys.readouterr().out
    assert "validation" in table and "41.0 → 42.5" in table  # means of the validation top-1
    assert "99.0" not in table and "k-NN" not in table  # nothing from test
