"""The reference rows: ``supervised`` (labels, same budget) and ``pixels`` (raw pixels)."""

from __future__ import annotations

import pytest
import torch

from conftest import RGB32
from ssl_bench.build import build_task
from ssl_bench.errors import SslBenchError
from ssl_bench.train import TrainConfig, Trainer
from tasks.base import count_parameters


def test_supervised_loss_falls_on_a_fixed_labelled_batch():
    task = build_task("supervised", "convnet", RGB32, {}, {"width": 8})
    images, labels = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    optimizers = task.configure_optimizers(task.default_optim(32))
    first = float(task.training_step(images, optimizers, labels=labels)["loss"])
    for _ in range(30):
        last = task.training_step(images, optimizers, labels=labels)
    assert float(last["loss"]) < 0.5 * first
    assert float(last["train_top1"]) > 50


def test_supervised_needs_labels(tmp_path):
    task = build_task("supervised", "convnet", RGB32, {}, {"width": 8})
    optimizers = task.configure_optimizers(task.default_optim(8))
    with pytest.raises(ValueError, match="needs labels"):
        task.training_step(torch.rand(8, 3, 32, 32), optimizers)
    with pytest.raises(SslBenchError, match="trains with labels"):
        Trainer(task, torch.zeros(8, 3, 32, 32, dtype=torch.uint8), True, TrainConfig(1, 4, 0),
                task.default_optim(4), tmp_path, torch.device("cpu"))


def test_only_the_supervised_reference_sees_labels():
    from ssl_bench.registry import TASKS, load_builtins

    load_builtins()
    assert [name for name, cls in TASKS.items() if cls.uses_labels] == ["supervised"]


def test_pixels_features_are_the_standardized_image():
    task = build_task("pixels", "convnet", RGB32, {}, {}).eval()
    images = torch.rand(4, 3, 32, 32)
    standardized = (images - 0.5) / 0.25
    torch.testing.assert_close(task.features(images), standardized.flatten(1))
    (stage,) = task.feature_stages(images)
    torch.testing.assert_close(stage, standardized)
    assert count_parameters(task) == 0 and not task.pretrains
    assert task.summary()["backbone_not_used"] == "convnet"
