"""Frozen-feature evaluation of a task as it stands: held-out pretext metrics, one
feature pass over the labelled and test images, and the evaluation protocol.

The runner calls :func:`evaluate_frozen` twice per run: before the first optimizer
step (the run's **step-0 reference**: the same task, seed and initialisation,
untrained) and after training; the leaderboard reports each row's gain over its
own initialisation. Every task is scored on its backbone's pooled output and
stages; a task's own representation (a code, μ) is scored besides (``code_*``).
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from eval.features import extract_features, extract_features_and_stages
from eval.protocol import Protocol
from ssl_bench.core.images import to_float
from ssl_bench.core.precision import autocast
from tasks.base import PretextTask


@dataclass
class EvalData:
    """The images and labels every evaluation of a run sees.

    Attributes:
        train_images: ``uint8`` ``(N_train, C, H, W)``, the labelled evaluation subset.
        train_labels: ``int64`` ``(N_train,)``.
        test_images: ``uint8`` ``(N_test, C, H, W)``.
        test_labels: ``int64`` ``(N_test,)``.
        num_classes: C.
        pretext_images: ``uint8`` test images for the held-out pretext metrics.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    pretext_images: torch.Tensor


@dataclass
class EvalSettings:
    """How features are extracted: ``batch_size`` images per pass, per-layer stage
    features when ``layer_probes`` (each pooled to at most ``layer_dims``), under
    bf16 autocast when ``precision`` is ``"bf16"`` (the held-out pretext metrics too),
    and with BatchNorm statistics re-estimated on clean train images when
    ``bn_recalibrate``."""

    batch_size: int
    layer_probes: bool
    layer_dims: int
    precision: str = "fp32"
    bn_recalibrate: bool = False


@contextmanager
def recalibrated_batchnorm(task: PretextTask, images: torch.Tensor, batch_size: int,
                           device: torch.device) -> Iterator[None]:
    """Within the block, every BatchNorm layer of ``task.backbone`` holds running
    statistics re-estimated on ``images`` (``uint8`` ``(N, C, H, W)``, clean and full
    size), seen the way evaluation sees them (:meth:`PretextTask.features`): a plain
    average over all batches (``momentum=None``), no labels, no gradients. Tasks
    that train on tiles, patches or corrupted images otherwise evaluate whole clean
    images with statistics of other inputs. Afterwards the task's buffers are
    restored, so training (e.g. after a step-0 evaluation) is unaffected."""
    norms = [m for m in task.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:  # e.g. a ViT: nothing to re-estimate
        yield
        return
    saved = {name: b.clone() for name, b in task.named_buffers()}
    momenta = [m.momentum for m in norms]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for chunk in images.split(batch_size):
                task.features(to_float(chunk.to(device)))
        for m in norms:
            m.eval()
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            m.eval()
        for name, buffer in task.named_buffers():
            buffer.copy_(saved[name])


def evaluate_frozen(task: PretextTask, data: EvalData, protocol: Protocol,
                    settings: EvalSettings, seed: int, device: torch.device
                    ) -> tuple[dict[str, Any], torch.Tensor]:
    """Evaluate the task's frozen features (eval mode, no gradients): held-out pretext
    metrics, the protocol on the pooled backbone features and its stages, and, for a
    task with a representation of its own (:meth:`PretextTask.task_features`), every
    evaluator on it (``code_*`` metrics).

    Returns:
        A record ``{"metrics", "layers", "layer_best", "pretext", "eval_seconds"}``
        (accuracies in %, seconds wall-clock; see :class:`eval.protocol.Evaluation`)
        and the test features ``float32`` ``(N_test, D)``.
    """
    task.eval()
    # The layout training leaves the task in (see Trainer), also for a checkpoint loaded
    # by `ssl-bench evaluate`: another layout runs other convolution kernels, whose ~1e-8
    # differences in fp32 are enough to flip a k-NN vote.
    task.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    with autocast(settings.precision, device):  # as in training: the losses stay fp32
        pretext = task.held_out_metrics(to_float(chunk.to(device)) for chunk
                                        in data.pretext_images.split(settings.batch_size))
    has_code = type(task).task_features is not PretextTask.task_features
    with (recalibrated_batchnorm(task, data.train_images, settings.batch_size, device)
          if settings.bn_recalibrate else nullcontext()):
        part, test_x = _backbone_part(task, data, protocol, settings, seed, device)
        code = _code_metrics(task, data, protocol, settings, seed, device) if has_code else {}
    record = {"metrics": {**part["metrics"], **code}, "layers": part["layers"],
              "layer_best": part["layer_best"], "pretext": _rounded(pretext),
              "eval_seconds": round(time.perf_counter() - start, 2)}
    return record, test_x


def _backbone_part(task: PretextTask, data: EvalData, protocol: Protocol,
                   settings: EvalSettings, seed: int, device: torch.device
                   ) -> tuple[dict[str, Any], torch.Tensor]:
    """The protocol on the pooled backbone features and stages: ``{"metrics", "layers",
    "layer_best"}`` (rounded) and the test features."""
    (train_x, train_stages), (test_x, test_stages) = (
        _encode(task, images, settings, device, split)
        for images, split in ((data.train_images, "train"), (data.test_images, "test")))
    result = protocol.evaluate(train_x, data.train_labels, test_x, data.test_labels,
                               data.num_classes, seed, train_stages, test_stages,
                               task.backbone.stage_names)
    return {"metrics": _rounded(result.metrics), "layers": [_rounded(r) for r in result.layers],
            "layer_best": result.layer_best}, test_x


def _code_metrics(task: PretextTask, data: EvalData, protocol: Protocol,
                  settings: EvalSettings, seed: int, device: torch.device) -> dict[str, float]:
    """:meth:`Protocol.evaluate_code` on :meth:`PretextTask.task_features` (rounded)."""
    autocast_dtype = torch.bfloat16 if settings.precision == "bf16" else None
    train_c, test_c = (extract_features(task.task_features, images, settings.batch_size, device,
                                        autocast_dtype, progress=f"{split} code")
                       for images, split in ((data.train_images, "train"),
                                             (data.test_images, "test")))
    return _rounded(protocol.evaluate_code(train_c, data.train_labels, test_c, data.test_labels,
                                           data.num_classes, seed))


def _encode(task: PretextTask, images: torch.Tensor, settings: EvalSettings,
            device: torch.device, split: str) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Frozen pooled features (and per-stage features when layer probes are on)."""
    autocast = torch.bfloat16 if settings.precision == "bf16" else None
    if not settings.layer_probes:
        return extract_features(task.features, images, settings.batch_size, device, autocast,
                                progress=f"{split} features"), None
    return extract_features_and_stages(task.features_and_stages, images, settings.batch_size,
                                       device, autocast, progress=f"{split} features",
                                       max_dims=settings.layer_dims)


def _rounded(values: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in values.items()}
