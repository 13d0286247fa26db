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


def _trainer(run_dir, epochs=2, **options):
    data = load_dataset("digits")
    spec = data.spec()
    torch.manual_seed(0)
    task = build_task("denoising", "convnet", spec, {}, {"width": 8})
    return Trainer(task, data.train_images[:96], hflip=True,
                   config=TrainConfig(epochs=epochs, batch_size=32, seed=3, log_every=2),
                   optims=task.default_optim(32), run_dir=run_dir, device=torch.device("cpu"),
                   **options)


def test_bf16_autocast_changes_the_arithmetic_not_the_weights(tmp_path):
    fp32, bf16 = (_trainer(tmp_path / p, epochs=1, precision=p) for p in ("fp32", "bf16"))
    for trainer in (fp32, bf16):
        trainer.run_dir.mkdir()
        trainer.fit()
    weight = "backbone.stages.0.0.weight"
    assert bf16.task.state_dict()[weight].dtype == torch.float32
    assert not torch.equal(fp32.task.state_dict()[weight], bf16.task.state_dict()[weight])
    torch.testing.assert_close(fp32.task.state_dict()[weight], bf16.task.state_dict()[weight],
                               rtol=0.1, atol=0.02)


@pytest.mark.slow
def test_compiled_modules_train_and_keep_their_checkpoint_keys(tmp_path):
    compiled = _trainer(tmp_path, epochs=1, compile=True)
    keys = set(_trainer(tmp_path / "plain").task.state_dict())
    stats = compiled.fit()
    assert stats.steps == 3
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert set(state["task"]) == keys  # no "_orig_mod." prefixes: checkpoints stay portable


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_reproduces_uninterrupted_run(tmp_path, precision):
    straight = _trainer(tmp_path / "straight", precision=precision)
    (tmp_path / "straight").mkdir()
    straight.fit()

    (tmp_path / "resumed").mkdir()
    interrupted = _trainer(tmp_path / "resumed", precision=precision)
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
    resumed = _trainer(tmp_path / "resumed", precision=precision)
    resumed.fit(resume=True)

    assert resumed.step == straight.step == 6
    for key, value in straight.task.state_dict().items():
        assert resumed.task.state_dict()[key].dtype == value.dtype  # bf16 keeps fp32 weights
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
