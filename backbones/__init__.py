"""The shared backbones: built by name for a given image size and channel count.

Every module of this package may register backbones in
:data:`ssl_bench.core.registry.BACKBONES`; the registry imports them on first use.

``convnet`` (a small CPU CNN), ``resnet18`` (timm, small-image stem for ≤ 64 px),
``vit_tiny`` (timm, patch size suited to the image) and ``timm:<name>`` for any
timm model. All are :class:`~backbones.base.Backbone` instances.
"""

from __future__ import annotations

import inspect

from backbones.base import Backbone
from ssl_bench.core.errors import OptionError
from ssl_bench.core.registry import BACKBONES

TIMM_PREFIX = "timm:"


def backbone_names() -> list[str]:
    """Registered backbone names plus the ``timm:<name>`` pattern."""
    return BACKBONES.names() + [f"{TIMM_PREFIX}<name>"]


def build_backbone(name: str, in_chans: int, img_size: int, width_multiplier: float = 1.0,
                   **options) -> Backbone:
    """Build the backbone called ``name`` for ``(N, in_chans, img_size, img_size)`` inputs.

    Args:
        name: a registered name or ``timm:<model>``.
        in_chans: input channels.
        img_size: input side in pixels.
        width_multiplier: width scale (split-brain's half-width sub-networks).
        **options: backbone options (e.g. ``width`` for convnet, ``global_pool``
            for ViTs), as given by ``--backbone-opt key=value``.

    Raises:
        UnknownNameError: unknown backbone name (lists the valid ones).
        OptionError: an option the backbone does not take.
        IncompatibleError: a size or width the backbone cannot be built at.
    """
    if name.startswith(TIMM_PREFIX):
        from backbones.timm_backbones import timm_backbone

        return timm_backbone(name[len(TIMM_PREFIX):], in_chans, img_size,
                                            width_multiplier, **options)
    factory = BACKBONES.get(name)
    params = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        valid = sorted(set(params) - {"in_chans", "img_size", "width_multiplier"})
        raise OptionError(f"backbone {name!r} takes no option {', '.join(unknown)}; "
                          f"valid --backbone-opt keys: {', '.join(valid) or 'none'}")
    for key, value in options.items():
        _check_option_type(name, key, value, params[key].default)
    return factory(in_chans=in_chans, img_size=img_size, width_multiplier=width_multiplier,
                   **options)


def _check_option_type(backbone: str, key: str, value: object, default: object) -> None:
    """Refuse a ``--backbone-opt`` value whose type differs from the default's (an int
    where an int is expected, a number where a float is, …).

    Raises:
        OptionError: naming the option, the value and the expected type.
    """
    if default is inspect.Parameter.empty or default is None:
        return
    expected = (int, float) if type(default) is float else type(default)
    if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
        kind = {bool: "true or false", int: "an integer", float: "a number"}.get(
            type(default), f"a {type(default).__name__}")
        raise OptionError(f"--backbone-opt {key}={value!r} is not valid for backbone "
                          f"{backbone!r}: it takes {kind} (default {default!r})")


__all__ = ["Backbone", "build_backbone", "backbone_names"]
