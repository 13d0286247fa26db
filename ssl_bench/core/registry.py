"""Name → class registries for pretext tasks, backbones, datasets and evaluators.

Every registry fills itself the same way, on its first full lookup: it imports
every module of its package (so a module's ``@REGISTRY.register("name")`` runs)
and then loads the entry points of its group, ``ssl_bench.<kind>s``, through
which third-party packages add entries. Nothing is imported when this module is.

Looking one name up imports only the package modules whose source registers that
name literally (``.register("name")``), and fills the registry completely only
when they do not: a run then imports neither timm nor the other tasks' libraries
when its task and backbone do not need them (2–3 s of a CPU run's start-up).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path
from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

from ssl_bench.core.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of classes or factories, filled by :meth:`register`.

    Args:
        kind: what the entries are ("task", "backbone", …); used in error messages
            and in the entry-point group ``ssl_bench.<kind>s``.
        option: the command-line option that selects an entry (e.g. ``--task``).
        package: the package whose modules hold the built-in entries.
    """

    def __init__(self, kind: str, option: str, package: str) -> None:
        self.kind, self.option, self.package = kind, option, package
        self._entries: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name`` and sets ``obj.name = name``
        (the one place a task's, backbone's, dataset's or evaluator's name is written).

        Raises:
            ValueError: if another object is already registered as ``name``.
        """

        def decorator(obj: T) -> T:
            if self._entries.get(name, obj) is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            obj.name = name
            self._entries[name] = obj
            return obj

        return decorator

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")
        for ep in entry_points(group=f"ssl_bench.{self.kind}s"):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plug-in must not take the built-ins down
                print(f"warning: skipped {self.kind} {ep.name!r} of entry-point group "
                      f"ssl_bench.{self.kind}s ({ep.value}): {exc.__class__.__name__}: {exc}",
                      file=sys.stderr)
                continue
            if ep.name not in self._entries:
                self.register(ep.name)(obj)

    def _import_registering(self, name: str) -> None:
        """Import the modules of the package whose source contains a literal
        ``register("name")`` call (a cheap text search; a false hit only imports a
        module that a full discovery would import too)."""
        package = importlib.import_module(self.package)
        calls = (f'register("{name}")', f"register('{name}')")
        for module in pkgutil.iter_modules(package.__path__):
            path = Path(module.module_finder.path) / f"{module.name}.py"
            if module.name.startswith("_") or not path.is_file():
                continue
            source = path.read_text(encoding="utf-8")
            if any(call in source for call in calls):
                importlib.import_module(f"{self.package}.{module.name}")

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._discover()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The entry registered under ``name``.

        Raises:
            UnknownNameError: naming ``self.option`` and listing the valid names.
        """
        if not self._discovered and name not in self._entries:
            self._import_registering(name)
        if name not in self._entries:
            self._discover()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r} for {self.option}; "
                                   f"valid: {', '.join(self.names())}") from None

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs, sorted by name."""
        return [(n, self._entries[n]) for n in self.names()]


TASKS: Registry = Registry("task", "--task", "tasks")
BACKBONES: Registry = Registry("backbone", "--backbone", "backbones")
DATASETS: Registry = Registry("dataset", "--dataset", "ssl_bench.datasets")
EVALUATORS: Registry = Registry("evaluator", "--evaluators", "eval")
