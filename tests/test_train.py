"""The training loop: schedule, checkpoints, resume, interruption."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from ssl_bench.build import build_task
from ssl_bench.datasets import load_dataset
from ssl_bench.core.errors import Interrupted
from ssl_bench.train import TrainConfig, Trainer, epoch_order, warmup_cosine


def test_warmup_cosine_shape():
    f = warmup_cosine(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=1e-6)
    assert f(100) == pytest.approx(0.0, abs=1e-9)
    values = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_epoch_order_is_seeded():
    assert torch.equal(epoch_order(50, 1, 3), epoch_order(50, 1, 3))
    assert not torch.equal(epoch_order(50, 1, 3), epoch_order(50, 1, 4))
    assert sorted(epoch_order(50, 1, 3).tolist()) == list(range(50))


def _trainer(run_dir, epochs=2):
    data = load_dataset("digits")
    spec = data.spec()
    torch.manual_seed(0)
    task = build_task("denoising", "convnet", spec, {}, {"width": 8})
    return Trainer(task, data.train_images[:96], hflip=True,
                   config=TrainConfig(epochs=epochs, batch_size=32, seed=3, log_every=2),
                   optims=task.default_optim(32), run_dir=run_dir, device=torch.device("cpu"))


def test_resume_reproduces_uninterrupted_run(tmp_path):
    straight = _trainer(tmp_path / "straight")
    (tmp_path / "straight").mkdir()
    straight.fit()

    (tmp_path / "resumed").mkdir()
    interrupted = _trainer(tmp_path / "resumed")
    original_step = interrupted.task.training_step
    calls = {"n": 0}

    def step_then_interrupt(images, optimizers):
        calls["n"] += 1
        if calls["n"] == 5:  # Ctrl-C in the middle of the second epoch
            signal.raise_signal(signal.SIGINT)
        return original_step(images, optimizers)

    interrupted.task.training_step = step_then_interrupt
    with pytest.raises(Interrupted, match="--resume"):
        interrupted.fit()
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()

    assert calls["n"] == 5, "training went on after Ctrl-C"
    torch.manual_seed(123)  # a fresh process would start with other weights and RNG
    resumed = _trainer(tmp_path / "resumed")
    resumed.fit(resume=True)

    assert resumed.step == straight.step == 6
    for key, value in straight.task.state_dict().items():
        torch.testing.assert_close(resumed.task.state_dict()[key], value, rtol=0, atol=0,
                                   msg=f"{key} differs after resume")
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "metrics.jsonl repeats steps after resume"


def test_checkpoint_every_epoch(tmp_path):
    trainer = _trainer(tmp_path, epochs=1)
    stats = trainer.fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 1 and state["batch"] == 0 and state["step"] == stats.steps == 3
    assert stats.images_seen == 96 and stats.images_per_s > 0
