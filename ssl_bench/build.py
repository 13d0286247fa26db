"""Assemble a pretext task with its backbone factory from names and options."""

from __future__ import annotations

from typing import Any

from backbones import Backbone, build_backbone
from ssl_bench.core.errors import IncompatibleError
from ssl_bench.core.registry import TASKS
from ssl_bench.core.spec import DataSpec
from tasks.base import PretextTask
from tasks.options import options_from_strings


class BackboneFactory:
    """Builds backbones called ``name`` with fixed options; a task calls it with the
    input shape it needs (tiles, patches, Lab channels). Implements
    :class:`tasks.base.BackboneFactory`.

    Args:
        name: ``--backbone`` value.
        spec: the dataset spec (default channels and image size).
        options: ``--backbone-opt`` values (e.g. ``width=64``).
    """

    def __init__(self, name: str, spec: DataSpec, options: dict[str, Any] | None = None) -> None:
        self.name = name
        self.spec = spec
        self.options = dict(options or {})

    def __call__(self, in_chans: int | None = None, img_size: int | None = None,
                 width_multiplier: float = 1.0) -> Backbone:
        return build_backbone(self.name, in_chans or self.spec.channels,
                              img_size or self.spec.image_size, width_multiplier, **self.options)


def build_task(task: str, backbone: str, spec: DataSpec, task_options: dict[str, Any] | None = None,
               backbone_options: dict[str, Any] | None = None) -> PretextTask:
    """Build the pretext task ``task`` on backbone ``backbone`` for data ``spec``.

    Args:
        task: ``--task`` name.
        backbone: ``--backbone`` name.
        spec: the dataset spec.
        task_options: ``--set`` overrides (strings or already-typed values).
        backbone_options: ``--backbone-opt`` overrides.

    Raises:
        UnknownNameError: unknown task or backbone.
        OptionError: bad task or backbone option.
        IncompatibleError: a task/backbone pair that cannot work (the task says why).
    """
    cls = TASKS.get(task)
    options = options_from_strings(cls.Options, dict(task_options or {}))
    factory = BackboneFactory(backbone, spec, backbone_options)
    model = cls(factory, spec, options)
    if not isinstance(getattr(model, "backbone", None), Backbone):
        raise IncompatibleError(f"task {task!r} did not build a backbone")
    return model
