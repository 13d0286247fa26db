"""The training loop shared by every pretext task.

One loop serves all tasks: the uint8 train split lives on the device, and each
step indexes a seeded batch there, converts and flips it as one tensor (channels
last), calls ``task.training_step`` under the run's precision (which steps however
many optimizers the task has) and steps one warm-up + cosine scheduler per
optimizer. Nothing in a step waits for the device: the loss is checked for NaN/inf
on the device and read back only every ``log_every`` steps. It checkpoints every
epoch and on Ctrl-C, and resumes bit-for-bit on CPU: the batch order of an epoch
derives from (seed, epoch), and the global RNG states travel in the checkpoint.

Under ``torchrun`` (:mod:`ssl_bench.distributed`) each rank trains on its contiguous
shard of every global batch of that order, with gradients and buffers averaged over
ranks and its random draws seeded by (seed, step, rank); only rank 0 writes files.
The checkpoint holds the global position, so a run resumes at any world size.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ssl_bench import distributed
from ssl_bench.core.errors import Diverged, Interrupted, SslBenchError
from ssl_bench.core.images import random_hflip, to_float
from ssl_bench.core.precision import autocast
from ssl_bench.core.rundir import (CHECKPOINT, METRICS, append_jsonl, atomic_torch_save,
                                   atomic_write_text, load_checkpoint)
from ssl_bench.summary import per_second
from tasks.base import OptimConfig, PretextTask


@dataclass
class TrainConfig:
    """Settings of the training loop.

    Attributes:
        epochs: passes over the (subset of the) train split.
        batch_size: images per step, over all ranks (divisible by the world size).
        seed: seeds the batch order of every epoch.
        log_every: steps between ``metrics.jsonl`` lines and progress updates.
    """

    epochs: int
    batch_size: int
    seed: int = 0
    log_every: int = 20


@dataclass
class TrainStats:
    """What training cost.

    Attributes:
        steps: optimization steps taken in total (over all sessions of a resumed run).
        images_seen: training images processed by all ranks, counting repeats over epochs.
        train_seconds: wall-clock seconds spent in the loop (checkpoint writes excluded).
        images_per_s: ``images_seen / train_seconds``.
    """

    steps: int
    images_seen: int
    train_seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images_seen / self.train_seconds if self.train_seconds > 0 else 0.0


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warm-up from 0 over ``warmup_steps``, then half-cosine
    decay to 0 at ``total_steps`` (Loshchilov & Hutter 2017, SGDR without restarts)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The batch order of ``epoch``: a permutation of ``range(n)`` fixed by (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _StopOnSigint:
    """Within the block, the first SIGINT (Ctrl-C) or SIGTERM (what ``timeout``, ``kill``
    and job schedulers send) only sets :attr:`requested`, so the loop can stop at a step
    boundary; a second one raises KeyboardInterrupt as usual. Outside the main thread
    signals cannot be caught, and both behave as usual."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step "
              "(send it again to stop at once)", file=sys.stderr)

    def __enter__(self) -> "_StopOnSigint":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _logged_step(line: str) -> float:
    """The step of a ``metrics.jsonl`` line; infinite (dropped) for a blank line or one
    torn by a full disk or a kill mid-write."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return math.inf


class Trainer:
    """Pretrains ``task`` on ``images``, writing ``metrics.jsonl`` and ``checkpoint.pt``.

    Args:
        task: the pretext task (moved to ``device`` by the caller).
        images: the train split, ``uint8`` ``(N, C, H, W)``; moved to ``device`` once.
        labels: ``int64`` ``(N,)`` class indices, given to tasks that set
            ``uses_labels`` (the ``supervised`` reference) and to no other.
        hflip: flip batches horizontally at random (natural images only).
        config: loop settings.
        optims: one :class:`OptimConfig` per optimizer of the task.
        run_dir: where ``metrics.jsonl`` and ``checkpoint.pt`` go.
        device: where the steps run.
        precision: ``"fp32"`` or ``"bf16"`` (autocast; see :mod:`ssl_bench.core.precision`).
        compile: compile the task's modules with ``torch.compile`` (their weights,
            and so checkpoints, are unchanged).

    The task's modules are put in channels-last memory format, the faster layout
    for convolutions on CPUs and GPUs; checkpoints hold the same values either way.
    """

    def __init__(self, task: PretextTask, images: torch.Tensor, hflip: bool, config: TrainConfig,
                 optims: list[OptimConfig], run_dir: Path, device: torch.device,
                 labels: torch.Tensor | None = None, precision: str = "fp32",
                 compile: bool = False) -> None:
        if task.uses_labels and labels is None:
            raise SslBenchError(f"task {task.name!r} trains with labels but none were given")
        self.task, self.hflip, self.config = task, hflip, config
        self.images = images.to(device)  # uint8 on the device: CIFAR-10's is 150 MB
        self.labels = labels.to(device) if task.uses_labels else None
        self.run_dir, self.device, self.precision = Path(run_dir), device, precision
        task.to(memory_format=torch.channels_last)
        if compile:
            for module in task.children():
                module.compile()
        self.batch_size = min(config.batch_size, len(images))
        self.steps_per_epoch = max(1, len(images) // self.batch_size)  # drop the last partial batch
        self.total_steps = self.steps_per_epoch * config.epochs
        # untrained references (random-init, pixels) need no optimizer; pixels has no parameters
        self.optimizers = task.configure_optimizers(optims) if config.epochs else []
        self.world, self.rank = distributed.world_size(), distributed.rank()
        distributed.broadcast_module(task)
        for opt in self.optimizers:
            distributed.average_gradients(opt)
        self.schedulers = [
            torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(
                self.total_steps, min(self.total_steps // 2,
                                      round(o.warmup_epochs * self.steps_per_epoch))))
            for opt, o in zip(self.optimizers, optims)]
        self.epoch = self.batch = self.step = self.images_seen = 0
        self.train_seconds = 0.0
        #: Called on rank 0 after each checkpoint is written (``--overwrite`` swaps its
        #: run folder in there); may change :attr:`run_dir`.
        self.after_checkpoint: Callable[[], None] | None = None

    # ------------------------------------------------------------- checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def save_checkpoint(self) -> None:
        """Write the full training state atomically (model, optimizers, schedulers,
        RNG states, position in the epoch, cost so far); rank 0 alone writes it."""
        if not distributed.is_main():
            return
        atomic_torch_save({
            "task": self.task.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "images_seen": self.images_seen, "train_seconds": self.train_seconds,
            "rng": _rng_state(),
        }, self.checkpoint_path)
        if self.after_checkpoint is not None:
            self.after_checkpoint()

    def load_checkpoint(self) -> None:
        """Restore the state written by :meth:`save_checkpoint` and drop ``metrics.jsonl``
        lines logged after it (they will be logged again).

        Raises:
            DataError: a damaged checkpoint file.
            SslBenchError: if the checkpoint does not match this task/configuration.
        """
        state = load_checkpoint(self.checkpoint_path, self.device)
        try:
            self.task.load_state_dict(state["task"])
            for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
                opt.load_state_dict(s)
            for sched, s in zip(self.schedulers, state["schedulers"], strict=True):
                sched.load_state_dict(s)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise SslBenchError(f"checkpoint {self.checkpoint_path} does not match this run's "
                                f"task and settings ({exc.__class__.__name__}); use --overwrite "
                                "to start afresh") from None
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.images_seen, self.train_seconds = state["images_seen"], state["train_seconds"]
        _set_rng_state(state["rng"])
        self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        path = self.run_dir / METRICS
        if not distributed.is_main() or not path.exists():
            return
        kept = [line for line in path.read_text().splitlines()
                if _logged_step(line) <= self.step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    # ------------------------------------------------------------- loop

    def _batch(self, order: torch.Tensor, b: int) -> tuple[torch.Tensor, dict]:
        """This rank's shard of batch ``b`` of the epoch (all of it in a world of one),
        and ``{"labels": …}`` for label tasks."""
        shard = self.batch_size // self.world
        start = b * self.batch_size + self.rank * shard
        idx = order[start:start + shard]  # (B / world,) on the device
        x = to_float(self.images[idx]).contiguous(memory_format=torch.channels_last)
        extra = {} if self.labels is None else {"labels": self.labels[idx]}
        return (random_hflip(x) if self.hflip else x), extra

    def first_batch(self) -> tuple[torch.Tensor, dict]:
        """This rank's shard of the first batch of epoch 0, as :meth:`fit` makes it
        (``(B / world, C, H, W)`` float, flipped where the data is), and its targets.
        The flip draws from torch's generator: call it under
        :func:`~tasks.base.held_out_rng` to leave training's draws as they are."""
        order = epoch_order(len(self.images), self.config.seed, 0).to(self.device)
        return self._batch(order, 0)

    def fit(self, resume: bool = False) -> TrainStats:
        """Train until ``config.epochs`` are done.

        The first Ctrl-C (SIGINT) lets the current step finish, saves a checkpoint
        at that step boundary and raises :class:`Interrupted`; a second one stops at
        once, keeping the checkpoint of the last finished epoch.

        Args:
            resume: continue from ``checkpoint.pt`` if it exists.

        Raises:
            Interrupted: on Ctrl-C, after saving a checkpoint.
            Diverged: on a NaN/inf loss (no checkpoint of the diverged state).
        """
        if resume and self.checkpoint_path.exists():
            self.load_checkpoint()
        else:
            self._truncate_metrics()  # steps logged before a kill with no checkpoint
        # the first step whose loss was not finite (0: none yet), kept on the device so
        # the check needs no host sync per step
        self._first_nonfinite = torch.zeros((), dtype=torch.long, device=self.device)
        self.task.train()
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   desc=f"{self.task.name} pretraining",
                   disable=None if distributed.is_main() else True)
        with _StopOnSigint() as stop:
            try:
                while self.epoch < self.config.epochs:
                    order = epoch_order(len(self.images), self.config.seed,
                                        self.epoch).to(self.device)
                    window_start, window_images = time.perf_counter(), 0
                    while self.batch < self.steps_per_epoch:
                        t0 = time.perf_counter()
                        if self.world > 1:
                            torch.manual_seed(distributed.step_seed(self.config.seed, self.step))
                        x, extra = self._batch(order, self.batch)
                        with autocast(self.precision, self.device):
                            logs = self.task.training_step(x, self.optimizers, **extra)
                        distributed.average_buffers(self.task)
                        self._note_nonfinite(logs.get("loss"), self.step + 1)
                        for sched in self.schedulers:
                            sched.step()
                        self.batch += 1
                        self.step += 1
                        self.images_seen += len(x) * self.world
                        window_images += len(x) * self.world
                        if self.step % self.config.log_every == 0 or \
                                self.batch == self.steps_per_epoch:
                            values = self._check(logs)
                            if self.device.type == "cuda":
                                torch.cuda.synchronize()
                            now = time.perf_counter()
                            rate = window_images / max(now - window_start, 1e-9)
                            window_start, window_images = now, 0
                            self._log(values, rate)
                            bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=per_second(rate))
                        self.train_seconds += time.perf_counter() - t0
                        bar.update(1)
                        if distributed.any_rank(stop.requested):  # all ranks stop together
                            self.save_checkpoint()
                            distributed.barrier()
                            raise Interrupted(
                                f"interrupted at step {self.step}/{self.total_steps}; checkpoint "
                                f"saved to {self.checkpoint_path}; continue with --resume")
                    self.epoch += 1
                    self.batch = 0
                    self.save_checkpoint()
                    if distributed.is_main():
                        rate = self.images_seen / max(self.train_seconds, 1e-9)
                        tqdm.write(f"epoch {self.epoch}/{self.config.epochs}: "
                                   f"loss {values['loss']:.4f}, {per_second(rate)} images/s",
                                   file=sys.stderr)
            finally:
                bar.close()
        return TrainStats(self.step, self.images_seen, self.train_seconds)

    def _note_nonfinite(self, loss: Any, step: int) -> None:
        """Remember ``step`` if its loss is the first that is not finite."""
        if loss is not None:
            loss = torch.as_tensor(loss, device=self.device).detach()
            bad = ~torch.isfinite(loss) & (self._first_nonfinite == 0)
            self._first_nonfinite = torch.where(bad, step, self._first_nonfinite)

    def _check(self, logs: dict) -> dict[str, float]:
        """The logs as floats, averaged over ranks (one host sync per logging step).

        Raises:
            Diverged: naming the first step whose loss was not finite on any rank.
        """
        first = int(self._first_nonfinite)  # 0: none; the earliest over ranks otherwise
        first = distributed.minimum(first or self.total_steps + 1) % (self.total_steps + 1)
        if first:
            raise Diverged(f"the {self.task.name} loss stopped being finite at step {first}; "
                           "lower --lr or check the task options")
        keys = list(logs)  # float64 holds a float32 tensor or a Python float exactly
        values = distributed.mean(torch.stack([
            torch.as_tensor(logs[k], device=self.device).to(torch.float64).reshape(())
            for k in keys]))
        return dict(zip(keys, values.tolist()))

    def _log(self, values: dict[str, float], rate: float) -> None:
        if not distributed.is_main():
            return
        record = {"step": self.step, "epoch": self.epoch + self.batch / self.steps_per_epoch,
                  **values, "lr": [s.get_last_lr()[0] for s in self.schedulers],
                  "images_per_s": rate}
        append_jsonl(self.run_dir / METRICS, record)
