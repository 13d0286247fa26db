"""The reference rows: ``random-init`` (untrained), ``supervised`` (labels, same budget)
and ``pixels`` (raw pixels)."""

from __future__ import annotations

import pytest
import torch

from backbones.base import Backbone
from conftest import GRAY28, RGB32
from ssl_bench.build import build_task
from ssl_bench.core.errors import IncompatibleError, SslBenchError
from ssl_bench.core.registry import TASKS
from ssl_bench.train import TrainConfig, Trainer
from tasks.base import count_parameters
from tasks.options import NoOptions

REFERENCES = ["pixels", "random-init", "supervised"]


def test_supervised_loss_falls_on_a_fixed_labelled_batch():
    task = build_task("supervised", "convnet", RGB32, {}, {"width": 8})
    images, labels = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    optimizers = task.configure_optimizers(task.default_optim(32))
    first = task.training_step(images, optimizers, labels=labels)
    assert set(first) == {"loss", "top1"}
    for _ in range(30):
        last = task.training_step(images, optimizers, labels=labels)
    assert float(last["loss"]) < 0.5 * float(first["loss"])
    assert float(last["top1"]) > 50


def test_supervised_logits_and_top1():
    task = build_task("supervised", "convnet", GRAY28, {}, {"width": 8})
    images, labels = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    logits = task.logits(images)
    assert logits.shape == (6, GRAY28.num_classes)
    loss, logs = task.loss(images, labels)
    expected = (logits.argmax(1) == labels).float().mean() * 100
    assert float(logs["top1"]) == pytest.approx(float(expected))
    assert loss.requires_grad and not logs["top1"].requires_grad
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels))


def test_supervised_needs_labels(tmp_path):
    task = build_task("supervised", "convnet", RGB32, {}, {"width": 8})
    optimizers = task.configure_optimizers(task.default_optim(8))
    with pytest.raises(ValueError, match="needs labels"):
        task.training_step(torch.rand(8, 3, 32, 32), optimizers)
    with pytest.raises(SslBenchError, match="trains with labels"):
        Trainer(task, torch.zeros(8, 3, 32, 32, dtype=torch.uint8), True, TrainConfig(1, 4, 0),
                task.default_optim(4), tmp_path, torch.device("cpu"))


def test_only_the_supervised_reference_sees_labels():
    assert [name for name, cls in TASKS.items() if cls.uses_labels] == ["supervised"]


def test_reference_rows_are_flagged():
    assert sorted(name for name, cls in TASKS.items() if cls.reference) == REFERENCES


@pytest.mark.parametrize("name", REFERENCES)
def test_references_report_no_held_out_metrics(name):
    task = build_task(name, "convnet", RGB32, {}, {"width": 8})
    batches = [torch.rand(4, 3, 32, 32), torch.rand(2, 3, 32, 32)]
    first = task.held_out_metrics(batches)
    torch.rand(100)  # advance the global RNG
    assert task.held_out_metrics(batches) == first == {}


def test_random_init_is_the_checked_untrained_backbone():
    task = build_task("random-init", "convnet", RGB32, {}, {"width": 8}).eval()
    assert not task.pretrains and task.reference
    images = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(task.features(images), task.backbone((images - 0.5) / 0.25))
    assert task.summary()["parameters"] == {"backbone": count_parameters(task.backbone)}


class _BrokenBackbone(Backbone):
    """A backbone that cannot process its own input size."""

    family, in_chans, img_size = "cnn", 3, 32

    def forward_stages(self, x):
        raise RuntimeError("too small")


def test_random_init_probes_its_backbone():
    def factory(in_chans=None, img_size=None, width_multiplier=1.0):
        return _BrokenBackbone()

    factory.name = "broken"
    with pytest.raises(IncompatibleError, match="cannot process 32×32"):
        TASKS.get("random-init")(factory, RGB32, NoOptions())


def test_pixels_features_are_the_standardized_image():
    task = build_task("pixels", "convnet", RGB32, {}, {}).eval()
    images = torch.rand(4, 3, 32, 32)
    standardized = (images - 0.5) / 0.25
    torch.testing.assert_close(task.features(images), standardized.flatten(1))
    (stage,) = task.feature_stages(images)
    torch.testing.assert_close(stage, standardized)
    assert count_parameters(task) == 0 and not task.pretrains
    summary = task.summary()
    assert summary["backbone_not_used"] == "convnet" and summary["parameters"] == {}
