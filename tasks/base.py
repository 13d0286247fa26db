"""The pretext-task seam: one interface that every task module implements.

A task owns its heads, the corruption or labels it derives from raw images, its
loss and its optimizers. The harness gives it float images in [0, 1] of shape
``(N, C, H, W)`` and nothing else (never labels). To add a task, write one module
in ``tasks/`` with a subclass registered by ``@TASKS.register("name")``; the
package imports every module in ``tasks/`` on start-up.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from backbones.base import Backbone
from ssl_bench.data import DataSpec
from ssl_bench.errors import IncompatibleError, OptionError

Logs = dict[str, torch.Tensor | float]


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
        """The optimizer over ``params``.

        Raises:
            OptionError: for an unknown optimizer name.
        """
        if self.name == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, betas=tuple(self.betas),
                                     weight_decay=self.weight_decay)
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, betas=tuple(self.betas),
                                    weight_decay=self.weight_decay)
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                                   weight_decay=self.weight_decay)
        raise OptionError(f"--optimizer must be one of adamw, adam, sgd; got {self.name!r}")


class PretextTask(nn.Module):
    """Base class of pretext tasks.

    Subclasses set the class attributes, build ``self.backbone`` (the module
    whose features are evaluated) and heads in ``__init__``, and implement
    :meth:`loss` (or :meth:`training_step` for several optimizers),
    :meth:`pretext_metrics` and :meth:`render`.

    Class attributes:
        name: the ``--task`` name.
        paper: the source, e.g. ``"Noroozi & Favaro, ECCV 2016, §3"``.
        Options: a dataclass of hyperparameters with paper-based defaults; the
            CLI overrides them with ``--set key=value``.
        pretrains: ``False`` for baselines that are evaluated untrained.
        uses_labels: ``True`` only for the ``supervised`` reference: the trainer
            then calls ``training_step(images, optimizers, labels=labels)``.

    Args:
        make_backbone: builds backbones of the run's kind (see
            :class:`BackboneFactory`).
        spec: shapes and pixel statistics of the data.
        options: an instance of ``Options``.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Options: ClassVar[type] = type("NoOptions", (), {})
    pretrains: ClassVar[bool] = True
    uses_labels: ClassVar[bool] = False

    def __init__(self, make_backbone: BackboneFactory, spec: DataSpec, options: Any) -> None:
        super().__init__()
        self.spec = spec
        self.options = options
        self.register_buffer("pixel_mean", torch.tensor(spec.mean).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(spec.std).view(1, -1, 1, 1).clamp_min(1e-3),
                             persistent=False)

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
            A scalar loss tensor and extra values to log (detached).
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
        """Frozen evaluation features ``(N, D)`` float of images ``(N, C, H, W)`` in [0, 1].

        The default is the backbone's pooled output on :meth:`normalize`-d images;
        the VAE returns μ, split-brain both halves concatenated."""
        return self.backbone(self.normalize(images))

    @torch.no_grad()
    def feature_stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage feature maps ``(N, C_i, h_i, w_i)`` for per-layer probes."""
        return self.backbone.forward_stages(self.normalize(images))

    @torch.no_grad()
    def features_and_stages(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`features` and :meth:`feature_stages` from one backbone pass (what
        evaluation extracts); a task that overrides :meth:`features` overrides this too."""
        return self.backbone.forward_with_stages(self.normalize(images))

    @torch.no_grad()
    def pretext_metrics(self, images: torch.Tensor) -> dict[str, float]:
        """Held-out pretext performance on a batch of test images in [0, 1]
        (e.g. ``pretext_top1`` in %, ``psnr_db``); the harness averages over
        batches weighted by batch size. Called in eval mode."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Facts about the built task to store in ``results.json`` (e.g. the
        permutation set's Hamming distances, parameter counts of parts)."""
        return {}

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """A matplotlib Figure that shows what the task does on a few test images
        ``(n, C, H, W)`` in [0, 1] (e.g. corrupted input / reconstruction / original).
        Called in eval mode; ``None`` if there is nothing to show."""
        return None


# -------------------------------------------------------------------- options


def options_from_strings(cls: type, overrides: dict[str, str]) -> Any:
    """Build a task's ``Options`` dataclass from ``--set key=value`` strings.

    Values are parsed as YAML scalars (``0.5``, ``true``, ``[1, 2]``) and checked
    against the type of the field's default.

    Raises:
        OptionError: for an unknown key (lists the valid keys) or a value of the
            wrong type; ``Options.__post_init__`` may raise it for invalid values.
    """
    import yaml

    if not dataclasses.is_dataclass(cls):
        if overrides:
            raise OptionError(f"this task takes no --set options; got {', '.join(overrides)}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, text in overrides.items():
        if key not in fields:
            raise OptionError(f"unknown task option {key!r} for --set; valid: "
                              f"{', '.join(sorted(fields))}")
        value = yaml.safe_load(text) if isinstance(text, str) else text
        default = _field_default(fields[key])
        kwargs[key] = _coerce(key, value, default)
    return cls(**kwargs)


def options_to_dict(options: Any) -> dict[str, Any]:
    """A task's options as a plain dict (for ``config.yaml``)."""
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _coerce(key: str, value: Any, default: Any) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(default, str) and isinstance(value, (str, int, float)):
        return str(value)
    elif isinstance(default, (tuple, list)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    raise OptionError(f"--set {key}={value!r}: expected a {type(default).__name__} "
                      f"like the default {default!r}")


def check_choice(option: str, value: Any, choices: tuple) -> None:
    """Raise :class:`OptionError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise OptionError(f"--set {option}={value!r} is not valid; choose one of "
                          f"{', '.join(map(str, choices))}")


def check_range(option: str, value: float, low: float, high: float) -> None:
    """Raise :class:`OptionError` unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise OptionError(f"--set {option}={value} is out of range [{low}, {high}]")


def require_family(task: str, backbone: Backbone, family: str, hint: str = "") -> None:
    """Raise :class:`IncompatibleError` unless the backbone is of ``family``."""
    if backbone.family != family:
        raise IncompatibleError(f"task {task!r} needs a {family.upper()} backbone, got a "
                                f"{backbone.family.upper()}{'; ' + hint if hint else ''}")


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["PretextTask", "OptimConfig", "BackboneFactory", "Logs", "options_from_strings",
           "options_to_dict", "check_choice", "check_range", "require_family",
           "count_parameters", "field"]
