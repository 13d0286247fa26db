"""Frozen evaluation helpers: BatchNorm statistics re-estimated on clean images."""

from __future__ import annotations

import torch

from conftest import RGB32, build_small_task
from ssl_bench.evaluate import recalibrated_batchnorm


def test_recalibrated_batchnorm_uses_the_given_images_and_restores_the_task():
    task = build_small_task("denoising", RGB32).eval()
    first_norm = task.backbone.stages[0][1]
    first_norm.running_mean.fill_(100.0)  # statistics of some other input distribution
    before = {k: v.clone() for k, v in task.state_dict().items()}
    images = (torch.rand(40, 3, 32, 32) * 255).to(torch.uint8)

    with recalibrated_batchnorm(task, images, batch_size=20, device=torch.device("cpu")):
        conv = task.backbone.stages[0][0]
        with torch.no_grad():
            expected = conv(task.normalize(images.float() / 255)).mean(dim=(0, 2, 3))
        torch.testing.assert_close(first_norm.running_mean, expected, rtol=1e-4, atol=1e-5)
        assert not first_norm.training and first_norm.momentum is None
    after = task.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # training is unaffected
    assert first_norm.momentum == 0.1


def test_recalibration_is_a_no_op_without_batchnorm():
    task = build_small_task("mae", RGB32).eval()  # a ViT: LayerNorm only
    images = (torch.rand(4, 3, 32, 32) * 255).to(torch.uint8)
    x = torch.rand(2, 3, 32, 32)
    reference = task.features(x)
    with recalibrated_batchnorm(task, images, batch_size=2, device=torch.device("cpu")):
        torch.testing.assert_close(task.features(x), reference)
