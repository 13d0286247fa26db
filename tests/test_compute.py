"""Training compute, measured: backbone passes per image and GFLOPs of one real
training step, recorded in results.json, shown in the leaderboard and the
accuracy-against-compute figure, without changing the run."""

from __future__ import annotations

import json

import pytest
import torch

from ssl_bench.build import build_task
from ssl_bench.cli import main
from ssl_bench.datasets.base import DataSpec
from ssl_bench.leaderboard import aggregate_seeds, leaderboard_frame, leaderboard_markdown
from ssl_bench.report_figures import cost_scatter
from ssl_bench.runner import training_compute
from ssl_bench.train import TrainConfig, Trainer

SPEC = DataSpec("tiny", 3, 32, (0.5,) * 3, (0.25,) * 3, hflip=True)


def _trainer(task_name: str, tmp_path, epochs: int = 1):
    torch.manual_seed(0)
    task = build_task(task_name, "convnet", SPEC)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    optims = task.default_optim(8)
    (tmp_path / task_name).mkdir(parents=True)
    trainer = Trainer(task, images, SPEC.hflip, TrainConfig(epochs, 8, seed=0), optims,
                      tmp_path / task_name, torch.device("cpu"))
    return task, trainer, optims


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compute")
    return {t: training_compute(*_trainer(t, tmp), steps=10) for t in ("rotation", "denoising", "jigsaw", "relative-patch")}


def test_backbone_passes_per_image_are_counted_not_declared(measured):
    # rotation feeds 4 rotated copies of each image through the backbone, denoising
    # the one corrupted image, jigsaw 9 tiles, relative patch the 9 patches of a grid
    assert measured["denoising"]["train_backbone_passes"] == 1
    assert measured["rotation"]["train_backbone_passes"] == \
        4 * measured["denoising"]["train_backbone_passes"]
    assert measured["jigsaw"]["train_backbone_passes"] == 9
    assert measured["relative-patch"]["train_backbone_passes"] == 9


def test_training_gflops_are_a_measured_step_times_the_steps(measured):
    for record in measured.values():
        assert record["train_gflops_per_step"] > 0
        assert record["train_gflops"] == pytest.approx(10 * record["train_gflops_per_step"])
    # 4× the backbone work of denoising's encoder outweighs its decoder; no exact
    # ratio is asserted, so the decoder's FLOPs are not pinned
    assert measured["rotation"]["train_gflops_per_step"] > \
        measured["denoising"]["train_gflops_per_step"]


def test_an_untrained_reference_costs_nothing(tmp_path):
    record = training_compute(*_trainer("random-init", tmp_path, epochs=0), steps=0)
    assert record == {"train_backbone_passes": 0.0, "train_gflops_per_step": 0.0,
                      "train_gflops": 0.0}


def test_measuring_leaves_the_run_bit_identical(tmp_path):
    """The measurement steps a copy under held-out RNG: training afterwards gives the
    same weights, bit for bit, as training without it (the measurement even placed
    before training, the strictest spot)."""
    task, trainer, optims = _trainer("rotation", tmp_path / "plain")
    trainer.fit()
    measured_task, measured_trainer, measured_optims = _trainer("rotation", tmp_path / "measured")
    rng = torch.get_rng_state()
    training_compute(measured_task, measured_trainer, measured_optims, steps=2)
    assert torch.equal(rng, torch.get_rng_state())
    measured_trainer.fit()
    plain, other = task.state_dict(), measured_task.state_dict()
    assert plain.keys() == other.keys()
    assert all(torch.equal(plain[k], other[k]) for k in plain)


def test_a_run_records_its_compute_and_the_tables_show_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    assert main(["run", "--task", "rotation", "--evaluators", "knn", "--lowshot",
                 "--no-layer-probes", "--no-step0", "--epochs", "1", "--train-subset", "128",
                 "--batch-size", "64", "--eval-train-subset", "100", "--test-subset", "100",
                 "--out", str(out)]) == 0
    (results,) = out.glob("*/results.json")
    record = json.loads(results.read_text())
    cost = record["cost"]
    assert cost["train_backbone_passes"] == 4
    assert cost["train_gflops"] == pytest.approx(cost["train_gflops_per_step"] * record["steps"])
    runs = leaderboard_frame([out])
    md = leaderboard_markdown(aggregate_seeds(runs))
    header = next(line for line in md.splitlines() if line.startswith("| task"))
    assert "backbone passes per image" in header and "train compute (GFLOP)" in header
    fig = cost_scatter(runs)
    assert [ax.get_xlabel().split(":")[0] for ax in fig.axes[:3]] == [
        "equal data", "equal compute", "pretraining wall-clock time (s)"]
