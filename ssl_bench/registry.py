"""Name → class registries for pretext tasks, backbones, datasets and evaluators.

Third-party packages add entries through Python entry points in the groups
``ssl_bench.tasks``, ``ssl_bench.backbones``, ``ssl_bench.datasets`` and
``ssl_bench.evaluators``; each entry point names an object to register under the
entry point's name.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

from ssl_bench.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories, filled by the :meth:`register` decorator.

    Args:
        kind: what the entries are ("task", "backbone", …); used in error messages.
        option: the command-line option that selects an entry (e.g. ``--task``).
    """

    def __init__(self, kind: str, option: str) -> None:
        self.kind = kind
        self.option = option
        self._entries: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``.

        Raises:
            ValueError: if ``name`` is already registered (a programming error).
        """

        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=f"ssl_bench.{self.kind}s"):
            self._entries.setdefault(ep.name, ep.load())

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._load_entry_points()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The entry registered under ``name``.

        Raises:
            UnknownNameError: naming ``self.option`` and listing the valid names.
        """
        self._load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(self.names())
            raise UnknownNameError(
                f"unknown {self.kind} {name!r} for {self.option}; valid: {valid}"
            ) from None

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs, sorted by name."""
        return [(n, self._entries[n]) for n in self.names()]


TASKS: Registry = Registry("task", "--task")
BACKBONES: Registry = Registry("backbone", "--backbone")
DATASETS: Registry = Registry("dataset", "--dataset")
EVALUATORS: Registry = Registry("evaluator", "--evaluators")


def load_builtins() -> None:
    """Import the built-in packages so that their entries register themselves."""
    import backbones  # noqa: F401
    import eval  # noqa: F401
    import ssl_bench.data  # noqa: F401
    import tasks  # noqa: F401
