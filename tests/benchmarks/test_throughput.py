"""Throughput of one training step per pretext task (pytest-benchmark).

Run with ``python -m pytest tests/benchmarks --benchmark-enable``. Each task's
step runs on a fixed batch of 64 RGB 32×32 images with the default ``convnet``
(``vit_tiny`` for tasks that need a ViT), next to the plain forward + backward of
the same backbone on the same images. ``extra_info["images_per_s"]`` is the batch
size divided by the mean step time. Without ``--benchmark-enable`` each step runs
once as a smoke test.
"""

from __future__ import annotations

import pytest
import torch

from conftest import RGB32
from ssl_bench.build import build_task
from ssl_bench.core.errors import IncompatibleError
from ssl_bench.core.registry import TASKS

BATCH = 64
PRETRAINING_TASKS = [n for n in TASKS.names() if TASKS.get(n).pretrains]


def _task(name: str):
    try:
        return build_task(name, "convnet", RGB32), "convnet"
    except IncompatibleError:
        return build_task(name, "vit_tiny", RGB32), "vit_tiny"


def _record(benchmark, **info) -> None:
    benchmark.extra_info.update(info, batch_size=BATCH)
    if benchmark.stats is not None:  # None when benchmarks are disabled
        benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats.stats.mean


@pytest.mark.parametrize("name", PRETRAINING_TASKS)
def test_pretext_training_step(benchmark, name):
    torch.manual_seed(0)
    task, backbone = _task(name)
    task.train()
    images = torch.rand(BATCH, 3, 32, 32)
    optimizers = task.configure_optimizers(task.default_optim(BATCH))
    labels = {"labels": torch.randint(0, 10, (BATCH,))} if task.uses_labels else {}
    logs = benchmark(task.training_step, images, optimizers, **labels)
    assert torch.isfinite(torch.as_tensor(float(logs["loss"])))
    _record(benchmark, task=name, backbone=backbone)


@pytest.mark.parametrize("backbone_name", ["convnet", "vit_tiny"])
def test_backbone_forward_backward(benchmark, backbone_name):
    from backbones import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone(backbone_name, 3, 32)
    images = torch.rand(BATCH, 3, 32, 32)

    def step():
        backbone.zero_grad(set_to_none=True)
        backbone(images).square().mean().backward()

    benchmark(step)
    _record(benchmark, task="backbone only", backbone=backbone_name)
