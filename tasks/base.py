"""The pretext-task seam: one interface that every task module implements.

A task owns its heads, the corruption or labels it derives from raw images, its
loss and its optimizers. The harness gives it float images in [0, 1] of shape
``(N, C, H, W)`` and nothing else (never labels, except to the ``supervised``
reference). To add a task, write one module in ``tasks/`` (or in your own
package, registered through the ``ssl_bench.tasks`` entry-point group) with a
:class:`PretextTask` subclass decorated by ``@TASKS.register("name")``.

What the base class does for every task, so that a task module holds only its
method:

* checks each option against the range declared next to it
  (:func:`tasks.options.option`);
* checks the input the task needs (:attr:`PretextTask.channels`,
  :attr:`PretextTask.min_image_size`) and, in :meth:`PretextTask.build_backbone`,
  the backbone family and that the backbone can process the size it is built for;
* held-out pretext metrics: the task's own :meth:`PretextTask.loss` logs on test
  images, with every random draw (masks, corruptions, puzzles) from one fixed seed
  (:meth:`PretextTask.held_out_metrics`), so they do not depend on how long the
  run trained;
* ``summary`` with the parameter count of every part.

Log vocabulary (keys of the dict that ``loss`` returns beside the loss, and of the
held-out metrics): ``loss`` the total, ``<term>_loss`` its terms, ``top1`` the
pretext classification accuracy (%), ``psnr_db`` the reconstruction's PSNR (dB)
and ``input_psnr_db`` that of the corrupted or masked input it started from.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Iterator, Protocol

import torch
from torch import nn

from backbones.base import Backbone
from ssl_bench.core.errors import IncompatibleError, OptionError
from ssl_bench.core.spec import DataSpec
from tasks.options import NoOptions, check_options

Logs = dict[str, torch.Tensor | float]

#: Seed of every random draw of the held-out pretext metrics.
HELD_OUT_SEED = 0
#: How to ask for a backbone of each family in an error message.
_FAMILY_HINT = {"cnn": "e.g. --backbone convnet or resnet18", "vit": "e.g. --backbone vit_tiny"}


class BackboneFactory(Protocol):
    """Builds the run's backbone (same name and options) for the given input shape.

    Args:
        in_chans: input channels; ``None`` means the dataset's.
        img_size: input side in pixels; ``None`` means the dataset's.
        width_multiplier: width scale (split-brain builds half-width halves).

    Raises:
        IncompatibleError: if the backbone cannot be built that way.
    """

    name: str

    def __call__(self, in_chans: int | None = None, img_size: int | None = None,
                 width_multiplier: float = 1.0) -> Backbone: ...


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule of one optimizer of a task.

    The schedule is a linear warm-up over ``warmup_epochs`` followed by a
    half-cosine decay to 0 over the remaining steps (Loshchilov & Hutter 2017).

    Attributes:
        name: ``adamw``, ``adam`` or ``sgd``.
        lr: peak learning rate.
        weight_decay: decoupled for AdamW, L2 for Adam and SGD.
        betas: Adam(W) β1, β2.
        momentum: SGD momentum.
        warmup_epochs: warm-up length in epochs (fractions allowed).
    """

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    warmup_epochs: float = 1.0

    def build(self, params) -> torch.optim.Optimizer:
        """The optimizer over ``params`` (tensors or parameter groups). Adam and AdamW
        use torch's fused kernels on CPU and CUDA parameters: the same update, and on
        2 CPU cores 3 ms instead of 11 ms a step for jigsaw's 1.8M parameters.

        Raises:
            OptionError: for an unknown optimizer name.
        """
        params = list(params)
        tensors = [p for group in params
                   for p in (group["params"] if isinstance(group, dict) else [group])]
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
        if self.name == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, betas=tuple(self.betas),
                                     weight_decay=self.weight_decay, fused=fused or None)
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, betas=tuple(self.betas),
                                    weight_decay=self.weight_decay, fused=fused or None)
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                                   weight_decay=self.weight_decay)
        raise OptionError(f"--optimizer must be one of adamw, adam, sgd; got {self.name!r}")


class PretextTask(nn.Module):
    """Base class of pretext tasks.

    Subclasses set the class attributes, build ``self.backbone`` (the module
    whose features are evaluated, through :meth:`build_backbone`) and heads in
    ``__init__``, and implement :meth:`loss` (or :meth:`training_step` for
    several optimizers) and :meth:`render`.

    Class attributes:
        name: the ``--task`` name, set by ``@TASKS.register``.
        paper: the source, e.g. ``"Noroozi & Favaro, ECCV 2016, §3"``.
        Options: a dataclass of hyperparameters declared with
            :func:`tasks.options.option`
            (paper-based defaults and valid ranges); ``--set key=value`` overrides.
        pretrains: ``False`` for references that are evaluated untrained.
        uses_labels: ``True`` only for the ``supervised`` reference: the trainer
            then calls ``training_step(images, optimizers, labels=labels)``.
        reference: a reference row (random-init, supervised, pixels), not a
            pretext task; reports draw it apart.
        backbone_family: ``"cnn"`` or ``"vit"`` when the task needs one.
        channels: the image channel counts the task accepts (``None``: any).
        min_image_size: the smallest image side in pixels the task accepts.
        tune_knob: two settings of the task's most important option (``--set``
            values; the first wins ties), crossed with the learning rate by
            ``ssl-bench tune``.

    Args:
        make_backbone: builds backbones of the run's kind (see
            :class:`BackboneFactory`).
        spec: shapes and pixel statistics of the data.
        options: an instance of ``Options``.

    Raises:
        OptionError: an option outside its declared range.
        IncompatibleError: data the task cannot use (channels, image size).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    pretrains: ClassVar[bool] = True
    uses_labels: ClassVar[bool] = False
    reference: ClassVar[bool] = False
    backbone_family: ClassVar[str | None] = None
    channels: ClassVar[tuple[int, ...] | None] = None
    min_image_size: ClassVar[int] = 8
    tune_knob: ClassVar[tuple[dict, dict]] = ({}, {})

    def __init__(self, make_backbone: BackboneFactory, spec: DataSpec, options: Any) -> None:
        super().__init__()
        check_options(options)
        if self.channels is not None and spec.channels not in self.channels:
            raise IncompatibleError(
                f"task {self.name!r} needs images with {' or '.join(map(str, self.channels))} "
                f"channel(s); dataset {spec.name!r} has {spec.channels}")
        if spec.image_size < self.min_image_size:
            raise IncompatibleError(f"task {self.name!r} needs images of at least "
                                    f"{self.min_image_size} px; got {spec.image_size} px "
                                    "(raise --image-size)")
        self.spec = spec
        self.options = options
        self.register_buffer("pixel_mean", torch.tensor(spec.mean).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(spec.std).view(1, -1, 1, 1).clamp_min(1e-3),
                             persistent=False)

    def build_backbone(self, make_backbone: BackboneFactory, in_chans: int | None = None,
                       img_size: int | None = None, width_multiplier: float = 1.0) -> Backbone:
        """A backbone of the run's kind for ``(N, in_chans, img_size, img_size)`` inputs
        (defaults: the dataset's), checked against :attr:`backbone_family` and probed
        with one forward pass at that size.

        Raises:
            IncompatibleError: a backbone of the wrong family, or one that cannot
                process inputs of that size.
        """
        backbone = make_backbone(in_chans=in_chans, img_size=img_size,
                                 width_multiplier=width_multiplier)
        family = self.backbone_family
        if family is not None and backbone.family != family:
            raise IncompatibleError(f"task {self.name!r} needs a {family.upper()} backbone, got "
                                    f"a {backbone.family.upper()}; {_FAMILY_HINT[family]}")
        backbone.feature_map_shape()
        return backbone

    # ---------------------------------------------------------------- training

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """Paper-based optimizer settings, one per optimizer (CLI flags override)."""
        return [OptimConfig()]

    def configure_optimizers(self, optims: list[OptimConfig]) -> list[torch.optim.Optimizer]:
        """One optimizer per entry of ``optims``; the default puts every parameter
        in a single optimizer. Tasks with a discriminator override this."""
        (optim,) = optims
        return [optim.build([p for p in self.parameters() if p.requires_grad])]

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """The pretext loss on a batch.

        Args:
            images: ``(N, C, H, W)`` float in [0, 1].

        Returns:
            A scalar loss tensor and detached one-element tensors to log, named in
            the module's log vocabulary; not Python floats, whose reading would make
            the host wait for the device every step (the trainer reads them every
            ``log_every`` steps).
        """
        raise NotImplementedError

    def training_step(self, images: torch.Tensor, optimizers: list[torch.optim.Optimizer],
                      **targets: torch.Tensor) -> Logs:
        """One optimization step on a batch; returns values to log (``loss`` first).

        The default serves single-optimizer tasks. Tasks with several optimizers
        (the context encoder's discriminator) override it and step each one.
        ``targets`` (``labels``, ``int64`` ``(N,)``) reach :meth:`loss` only for
        tasks that set ``uses_labels``; the trainer passes none to the others.
        """
        (optimizer,) = optimizers
        optimizer.zero_grad(set_to_none=True)
        loss, logs = self.loss(images, **targets)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach(), **logs}

    # ---------------------------------------------------------------- evaluation

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Standardize ``(N, C, H, W)`` images in [0, 1] with the dataset's channel
        mean and std (what the backbone sees at evaluation time by default)."""
        return (images - self.pixel_mean) / self.pixel_std

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen evaluation features ``(N, D)`` float of images ``(N, C, H, W)`` in [0, 1]:
        the backbone's pooled output on :meth:`normalize`-d images (split-brain's
        backbone concatenates its two halves). The headline metrics score every task
        on these, so that rows compare pretext tasks, not representation widths; a
        task's own representation (a code, μ) is :meth:`task_features`."""
        return self.backbone(self.normalize(images))

    @torch.no_grad()
    def task_features(self, images: torch.Tensor) -> torch.Tensor | None:
        """The task's own representation ``(N, K)`` float of images ``(N, C, H, W)`` in
        [0, 1] when it has one besides the pooled backbone (an autoencoder's code, the
        VAE's μ), scored as extra ``code_*`` metrics; ``None`` (the default) otherwise."""
        return None

    @torch.no_grad()
    def feature_stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage feature maps ``(N, C_i, h_i, w_i)`` for per-layer probes."""
        return self.backbone.forward_stages(self.normalize(images))

    @torch.no_grad()
    def features_and_stages(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`features` and :meth:`feature_stages` from one backbone pass (what
        evaluation extracts)."""
        return self.backbone.forward_with_stages(self.normalize(images))

    @torch.no_grad()
    def pretext_metrics(self, images: torch.Tensor) -> dict[str, float]:
        """Held-out pretext performance on a batch of test images ``(N, C, H, W)`` in
        [0, 1]: ``loss`` and the logs of :meth:`loss`. References (untrained, or
        trained with labels the test images do not bring) report nothing."""
        if not self.pretrains or self.uses_labels:
            return {}
        loss, logs = self.loss(images)
        return {"loss": float(loss), **{k: float(v) for k, v in logs.items()}}

    @classmethod
    def tune_choices(cls, channels: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The two settings of the option that matters most for this task
        (:attr:`tune_knob`; a task may make them depend on the data's ``channels``),
        which ``ssl-bench tune`` crosses with learning rate × {¼, 1, 4}."""
        return cls.tune_knob

    def pretext_chance(self) -> dict[str, float]:
        """The chance level of held-out metrics that have one, e.g. ``{"top1": 1.0}``
        for 100 permutations (%); reports print it beside the metric."""
        return {}

    @torch.no_grad()
    def held_out_metrics(self, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        """:meth:`pretext_metrics` averaged over batches (weighted by batch size), in
        eval mode, under one :func:`held_out_rng` for the whole pass: the same test
        images always get the same masks, corruptions and puzzles.

        Args:
            batches: ``(n, C, H, W)`` float images in [0, 1], on the task's device.
        """
        sums: dict[str, float] = {}
        count = 0
        was_training = self.training
        self.eval()
        try:
            with held_out_rng():
                for images in batches:
                    for key, value in self.pretext_metrics(images).items():
                        sums[key] = sums.get(key, 0.0) + value * len(images)
                    count += len(images)
        finally:
            self.train(was_training)
        return {key: total / count for key, total in sums.items()}

    def summary(self) -> dict[str, Any]:
        """Facts about the built task for ``results.json``: the trainable parameters
        of each part (``parameters``); tasks add what they derive (e.g. the
        permutation set's Hamming distances)."""
        parts = {name: count_parameters(module) for name, module in self.named_children()}
        parts.update({name: p.numel() for name, p in self.named_parameters(recurse=False)
                      if p.requires_grad})
        return {"parameters": {name: n for name, n in parts.items() if n}}

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """A matplotlib Figure that shows what the task does on a few test images
        ``(n, C, H, W)`` in [0, 1] (e.g. corrupted input / reconstruction / original).
        Called in eval mode under :func:`held_out_rng`; ``None`` if there is nothing
        to show."""
        return None


@contextmanager
def held_out_rng() -> Iterator[None]:
    """Within the block, torch's generators (CPU and every CUDA device) start from
    :data:`HELD_OUT_SEED`; afterwards they are back where they were. Held-out
    metrics and task pictures draw their randomness under it."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(HELD_OUT_SEED)
        yield


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["PretextTask", "OptimConfig", "BackboneFactory", "Logs", "held_out_rng",
           "count_parameters", "HELD_OUT_SEED"]
