"""A task's options: each declared with its valid values beside its default
(:func:`option`), checked once (:func:`check_options`), set from ``--set key=value``
strings (:func:`options_from_strings`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ssl_bench.core.errors import OptionError


@dataclass
class NoOptions:
    """The options of a task that has none."""


def option(default: Any, *, low: float | None = None, high: float | None = None,
           choices: tuple | None = None, strict: bool = False) -> Any:
    """A field of a task's ``Options`` dataclass with its valid values declared
    beside its default; :func:`check_options` enforces them.

    Args:
        default: the paper-based default.
        low, high: the inclusive range of a number (exclusive when ``strict``).
        choices: the valid values of a categorical option.
    """
    return field(default=default, metadata={"low": low, "high": high, "choices": choices,
                                            "strict": strict})


def check_options(options: Any) -> None:
    """Check every field of an ``Options`` instance against its :func:`option` declaration.

    Raises:
        OptionError: naming ``--set <key>=<value>`` and the valid values.
    """
    if not dataclasses.is_dataclass(options):
        return
    for f in dataclasses.fields(options):
        rule, value = f.metadata, getattr(options, f.name)
        if rule.get("choices") is not None:
            check_choice(f.name, value, rule["choices"])
        if rule.get("low") is not None or rule.get("high") is not None:
            low = rule["low"] if rule["low"] is not None else float("-inf")
            high = rule["high"] if rule["high"] is not None else float("inf")
            check_range(f.name, value, low, high, strict=rule["strict"])


def options_from_strings(cls: type, overrides: dict[str, Any]) -> Any:
    """Build a task's ``Options`` dataclass from ``--set key=value`` strings.

    Values are parsed as YAML scalars (``0.5``, ``true``, ``[1, 2]``) and checked
    against the type of the field's default (ranges are checked by the task).

    Raises:
        OptionError: for an unknown key (lists the valid keys) or a value of the
            wrong type.
    """
    import yaml

    fields = {f.name: f for f in dataclasses.fields(cls)}
    if overrides and not fields:
        raise OptionError(f"this task takes no --set options; got {', '.join(overrides)}")
    kwargs = {}
    for key, text in overrides.items():
        if key not in fields:
            raise OptionError(f"unknown task option {key!r} for --set; valid: "
                              f"{', '.join(sorted(fields))}")
        value = yaml.safe_load(text) if isinstance(text, str) else text
        kwargs[key] = _coerce(key, value, _field_default(fields[key]))
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
    elif isinstance(default, float) and isinstance(value, (int, float)) \
            and not isinstance(value, bool):
        return float(value)
    elif isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(default, str) and isinstance(value, (str, int, float)):
        return str(value)
    elif isinstance(default, (tuple, list)) and isinstance(value, (list, tuple)):
        # each element like the default's first (YAML reads `false` as a bool, not 0)
        try:
            return type(default)(_coerce(key, v, default[0]) if default else v for v in value)
        except OptionError:
            raise OptionError(f"--set {key}={value!r}: expected a list of "
                              f"{type(default[0]).__name__} like the default {default!r}"
                              ) from None
    raise OptionError(f"--set {key}={value!r}: expected a {type(default).__name__} "
                      f"like the default {default!r}")


def check_choice(option: str, value: Any, choices: tuple) -> None:
    """Raise :class:`OptionError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise OptionError(f"--set {option}={value!r} is not valid; choose one of "
                          f"{', '.join(map(str, choices))}")


def check_range(option: str, value: float, low: float, high: float, strict: bool = False) -> None:
    """Raise :class:`OptionError` unless ``low <= value <= high`` (``low < value <
    high`` when ``strict``)."""
    inside = low < value < high if strict else low <= value <= high
    if not inside:
        bounds = f"({low}, {high})" if strict else f"[{low}, {high}]"
        raise OptionError(f"--set {option}={value} is out of range {bounds}")


def refuse_at_image_size(option: str, value: float, gives: str, image_size: int,
                         low: float, high: float) -> None:
    """Refuse a task option inside its declared range whose size derived at
    ``image_size`` px does not work (``gives`` says what it gives), naming the range
    ``[low, high]`` that works at this size.

    Raises:
        OptionError: always.
    """
    raise OptionError(f"--set {option}={value:g} gives {gives} on {image_size} px images; give "
                      f"{option} from {low:.3g} to {high:.3g} at this image size")
