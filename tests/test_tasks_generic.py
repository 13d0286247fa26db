"""Every registered pretext task honours the PretextTask contract."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import GRAY28, RGB32, build_small_task
from ssl_bench.core.errors import IncompatibleError
from ssl_bench.core.registry import TASKS
from tasks.base import HELD_OUT_SEED

TASK_NAMES = TASKS.names()


def _build_or_skip(name, spec):
    try:
        return build_small_task(name, spec)
    except IncompatibleError as exc:  # split-brain on grayscale: a clear refusal is the contract
        assert str(exc)
        pytest.skip(f"{name} refuses {spec.name}: {exc}")


@pytest.mark.parametrize("spec", [RGB32, GRAY28], ids=["rgb32", "gray28"])
@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_contract(name, spec):
    task = _build_or_skip(name, spec)
    images = torch.rand(8, spec.channels, spec.image_size, spec.image_size)

    task.train()
    if task.pretrains:
        optimizers = task.configure_optimizers(task.default_optim(batch_size=8))
        labels = {"labels": torch.randint(0, spec.num_classes, (8,))} if task.uses_labels else {}
        logs = task.training_step(images, optimizers, **labels)
        assert "loss" in logs and torch.isfinite(torch.as_tensor(float(logs["loss"])))

    task.eval()
    feats = task.features(images)
    assert feats.ndim == 2 and feats.shape[0] == 8 and torch.isfinite(feats).all()
    stages = task.feature_stages(images)
    assert all(s.ndim == 4 and s.shape[0] == 8 for s in stages)
    one_pass_feats, one_pass_stages = task.features_and_stages(images)
    torch.testing.assert_close(one_pass_feats, feats)
    assert len(one_pass_stages) == len(stages)
    for a, b in zip(one_pass_stages, stages):
        torch.testing.assert_close(a, b)
    metrics = task.pretext_metrics(images)
    assert all(isinstance(v, float) for v in metrics.values())
    json.dumps(task.summary())
    figure = task.render(images[:4])
    if figure is not None:
        import matplotlib.pyplot as plt

        assert figure.axes
        plt.close(figure)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_held_out_metrics_are_the_loss_logs_at_a_fixed_seed(name):
    """Whatever the global RNG has done, the same test images give the same held-out
    metrics: the task's own loss and logs, in eval mode, drawn at HELD_OUT_SEED."""
    task = _build_or_skip(name, RGB32)
    images = torch.rand(6, 3, 32, 32)
    first = task.held_out_metrics([images[:4], images[4:]])
    torch.rand(100)  # advance the global RNG
    state = torch.get_rng_state()
    assert task.held_out_metrics([images[:4], images[4:]]) == first
    assert torch.equal(torch.get_rng_state(), state) and task.training
    if not task.pretrains or task.uses_labels:
        assert first == {}
        return
    task.eval()
    torch.manual_seed(HELD_OUT_SEED)
    with torch.no_grad():
        loss, logs = task.loss(images)
    task.train()
    held_out = task.held_out_metrics([images])
    assert held_out.keys() == {"loss", *logs}
    assert held_out["loss"] == pytest.approx(float(loss))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_has_paper_and_docstring(name):
    cls = TASKS.get(name)
    assert cls.paper and cls.__doc__ and len(cls.__doc__) > 80


@pytest.mark.parametrize("name", TASK_NAMES)
def test_state_dict_round_trip(name):
    task = _build_or_skip(name, RGB32)
    clone = _build_or_skip(name, RGB32)
    clone.load_state_dict(task.state_dict())
    task.eval()
    clone.eval()
    images = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(task.features(images), clone.features(images))
