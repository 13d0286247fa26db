"""What ``ssl-bench list`` shows of the registries, read from the source, not imported.

Filling a registry imports every module of its package, and those import torch, timm,
torchvision, faiss, … (seconds). The listing needs only the registered names, each
task's ``paper`` and ``reference`` attributes and the defaults of its ``Options``
dataclass, all plain statements of the source. :class:`Catalog` reads them with
:class:`~ssl_bench.core.source_reader.SourceReader`: it follows what a registry's first
lookup would import (its package's modules and, transitively, the project modules they
import) and finds the registrations written as ``@REGISTRY.register("name")`` on a
top-level class or function, or ``REGISTRY.register("name")(…)`` as a top-level statement.

What it cannot read, it imports the normal way:

- a task attribute or option default that is not a literal: that task's module, and the
  task is read from the imported class;
- a registration it cannot read (a computed name, a call in a loop, a dynamic import,
  a module without source, a name registered twice) or any plug-in in the registry's
  entry-point group ``ssl_bench.<kind>s``: the live registry answers.

It cannot see a registration hidden in a helper function that a module calls at import,
nor an ``Options.__post_init__`` that rejects its own defaults (it checks that such a
method sets no attribute). tests/test_catalog.py compares the catalog with the live
registries entry by entry, so the built-in entries never drift.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pkgutil
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from ssl_bench.core.registry import Registry
from ssl_bench.core.source_reader import Found, Module, SourceReader, Unreadable, class_scope

#: The name patterns ``backbone_names()`` and ``dataset_names()`` end with
#: (tests/test_catalog.py keeps them equal).
PATTERNS = {"backbone": "timm:<name>", "dataset": "imagefolder:<path>"}

_OPTION = "tasks.options.option"  # option(default, *, low=…, …): a field with that default
_FIELD = "dataclasses.field"
_DATACLASS = "dataclasses.dataclass"
# @dataclass(...) flags that change neither the fields nor their defaults and cannot make
# the class statement fail (``frozen`` can: a frozen dataclass from a non-frozen base)
_FLAGS = frozenset({"repr", "eq", "match_args", "kw_only"})
# calls that import or run code the reader cannot follow
_DYNAMIC = frozenset({"importlib.import_module", "importlib.__import__", "runpy.run_module",
                      "runpy.run_path"})
_DYNAMIC_BUILTINS = frozenset({"__import__", "exec", "eval"})
_ALL = "*"  # stands for every registry in the set of those only importing can tell
# names through which a method could set an attribute without an ``x.a = …`` statement
_SETTERS = frozenset({"setattr", "delattr", "super", "vars", "exec", "eval"})


@dataclass(frozen=True)
class TaskInfo:
    """What ``ssl-bench list`` shows of a pretext task.

    Attributes:
        name: the ``--task`` name.
        paper: the task's ``paper`` attribute (its source and sections).
        reference: whether it is a reference row (pixels, random init, supervised).
        options: ``(field name, default)`` of its ``Options`` dataclass, in field order.
    """

    name: str
    paper: str
    reference: bool
    options: tuple[tuple[str, Any], ...]


def live_task_info(name: str, cls: type) -> TaskInfo:
    """The :class:`TaskInfo` of an imported task class (what the catalog must match)."""
    defaults = cls.Options()
    return TaskInfo(name, str(cls.paper), bool(cls.reference),
                    tuple((f.name, getattr(defaults, f.name))
                          for f in dataclasses.fields(defaults)))


class Catalog:
    """The entries of the registries defined in ``registry_module``, read from source.

    Like the live registries it stands for, it reads a registry's package on the first
    question about that registry, and counts registrations in every module read so far.

    Args:
        registry_module: the module whose top-level :class:`Registry` objects it reads.
    """

    def __init__(self, registry_module: str = "ssl_bench.core.registry") -> None:
        namespace = vars(importlib.import_module(registry_module))
        self._registries = {f"{registry_module}.{var}": r for var, r in namespace.items()
                            if isinstance(r, Registry)}
        # the project: where registrations may be, and the modules the reader reads
        self._tops = frozenset({registry_module.split(".")[0],
                                *(r.package.split(".")[0] for r in self._registries.values())})
        self._reader = SourceReader(self._tops, frozenset(
            {_DATACLASS, *(f"{q}.register" for q in self._registries)}))
        self._entries: dict[str, dict[str, Found]] = {q: {} for q in self._registries}
        self._unknown: set[str] = set()  # registries only importing can tell
        self._read: set[str] = set()  # modules whose import-time code was read
        self._discovered: set[str] = set()

    def names(self, registry: Registry) -> list[str]:
        """The registered names, sorted, as ``registry.names()`` gives them."""
        entries = self.static_entries(registry)
        return registry.names() if entries is None else sorted(entries)

    def listed_names(self, registry: Registry) -> list[str]:
        """:meth:`names` followed by the registry's name pattern, if it has one
        (``timm:<name>``, ``imagefolder:<path>``)."""
        return self.names(registry) + [p for k, p in PATTERNS.items() if k == registry.kind]

    def tasks(self, registry: Registry) -> list[TaskInfo]:
        """A :class:`TaskInfo` per task of ``registry``, sorted by name; a task the source
        does not describe plainly is imported (its module only)."""
        entries = self.static_entries(registry)
        if entries is None:
            return [live_task_info(name, cls) for name, cls in registry.items()]
        infos = []
        for name in sorted(entries):
            try:
                infos.append(self.static_task(name, entries[name]))
            except Unreadable:
                importlib.import_module(entries[name].module.name)
                cls = registry.loaded(name) or registry.get(name)
                infos.append(live_task_info(name, cls))
        return infos

    def static_entries(self, registry: Registry) -> dict[str, Found] | None:
        """Each registered name and the top-level statement that registers it, read from
        source; ``None`` when only importing can tell (see the module docstring)."""
        qualname = next(q for q, r in self._registries.items() if r is registry)
        self._discover(qualname)
        plugins = entry_points(group=f"ssl_bench.{registry.kind}s")
        if self._unknown & {qualname, _ALL} or len(plugins):
            return None
        return dict(self._entries[qualname])

    def static_task(self, name: str, found: Found) -> TaskInfo:
        """The :class:`TaskInfo` of the task class that ``found`` registers.

        Raises:
            Unreadable: not a class, or an attribute or option default that is not a
                literal (see :meth:`SourceReader.literal`).
        """
        if not isinstance(found.node, ast.ClassDef):
            raise Unreadable(f"{name}: registered by a call, not on a class")
        reader = self._reader
        paper = self._value(reader.class_attr(found, "paper"))
        reference = self._value(reader.class_attr(found, "reference"))
        options = self._defaults(reader.as_class(reader.class_attr(found, "Options")))
        return TaskInfo(name, str(paper), bool(reference), tuple(options.items()))

    def _value(self, found: Found) -> Any:
        """The literal an attribute is assigned."""
        node = found.node
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
            raise Unreadable(f"{found.module.name}:{node.lineno}: not an assignment")
        return self._reader.literal(found.module, node.value, found.scope)

    def _defaults(self, cls: Found) -> dict[str, Any]:
        """Field name → default of a ``@dataclass`` class and its dataclass bases, in
        field order (an overridden field keeps its base's place, as ``dataclasses`` does).

        Raises:
            Unreadable: not a plain dataclass (other decorators, several bases, a
                method that may set attributes, a ``ClassVar``/``InitVar`` annotation, a
                field without a default or with a factory, …).
        """
        node, reader = cls.node, self._reader
        assert isinstance(node, ast.ClassDef)
        if len(node.decorator_list) != 1 or node.keywords or len(node.bases) > 1:
            raise Unreadable(f"{cls.module.name}.{node.name}: not a plain dataclass")
        (decorator,) = node.decorator_list
        call = decorator if isinstance(decorator, ast.Call) else None
        if reader.qualname(cls.module, call.func if call else decorator, cls.scope) \
                != _DATACLASS or call and (call.args or {k.arg for k in call.keywords} - _FLAGS):
            raise Unreadable(f"{cls.module.name}.{node.name}: {ast.unparse(decorator)}")
        defaults = (self._defaults(reader.class_of(cls.module, node.bases[0], cls.scope))
                    if node.bases else {})
        scope = class_scope(node)
        for stmt in node.body:
            if isinstance(stmt, ast.Pass) or isinstance(stmt, ast.Expr) and \
                    isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
                continue  # the docstring
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    scope[stmt.name] == 1 and not _may_set_attributes(stmt) and \
                    (stmt.name == "__post_init__" or not stmt.name.startswith("__")):
                continue  # a method, a check of the values: neither changes a default
            annotation = ast.unparse(stmt.annotation) if isinstance(stmt, ast.AnnAssign) else ""
            if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name) \
                    or stmt.value is None or scope[stmt.target.id] != 1 or \
                    any(word in annotation for word in ("ClassVar", "InitVar", "KW_ONLY")):
                raise Unreadable(f"{cls.module.name}:{stmt.lineno}: not a plain field")
            defaults[stmt.target.id] = self._default(cls.module, stmt.value, scope)
        return defaults

    def _default(self, module: Module, value: ast.expr, scope: Counter) -> Any:
        """The default a field's ``= …`` gives: ``option(default, …)``,
        ``field(default=…)`` or a literal."""
        if isinstance(value, ast.Call):
            kind = self._reader.qualname(module, value.func, scope)
            keywords = {k.arg: k.value for k in value.keywords}
            if kind == _OPTION and (value.args or "default" in keywords):
                value = value.args[0] if value.args else keywords["default"]
            elif kind == _FIELD and not value.args and "default" in keywords \
                    and "default_factory" not in keywords:
                value = keywords["default"]
            else:
                raise Unreadable(f"{module.name}:{value.lineno}: {ast.unparse(value)}")
        return self._reader.literal(module, value, scope)

    def _discover(self, qualname: str) -> None:
        """Read what the registry's first lookup imports: its package and every
        module of it whose name does not start with ``_``."""
        if qualname in self._discovered:
            return
        self._discovered.add(qualname)
        package = self._registries[qualname].package
        try:
            init = self._reader.module(package)
            if init is None or init.path.name != "__init__.py":
                raise Unreadable(f"{package}: not a package with source")
            self._read_closure(package)
            for info in pkgutil.iter_modules([str(init.path.parent)]):
                if not info.name.startswith("_"):
                    if self._reader.module(f"{package}.{info.name}") is None:
                        raise Unreadable(f"{package}.{info.name}: no Python source")
                    self._read_closure(f"{package}.{info.name}")
        except Unreadable:
            self._unknown.add(_ALL)

    def _read_closure(self, name: str) -> None:
        """Read module ``name``, its packages and the project modules they import."""
        parts = name.split(".")
        stack = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
        while stack:
            dotted = stack.pop()
            if dotted in self._read:
                continue
            self._read.add(dotted)
            module = self._reader.module(dotted)  # None: a name imported from a module
            if module is not None:
                self._scan(module)
                stack.extend(m for m in module.imported()
                             if m.split(".")[0] in self._tops and m not in self._read)

    def _scan(self, module: Module) -> None:
        """Record the registrations of ``module``; note the registries it registers
        into in ways the reader cannot follow."""
        plain = set()
        for stmt in module.tree.body:
            calls = (stmt.decorator_list if isinstance(stmt, (ast.ClassDef, ast.FunctionDef))
                     else [stmt.value.func] if isinstance(stmt, ast.Expr)
                     and isinstance(stmt.value, ast.Call) else [])
            for call in calls:
                registration = self._registration(module, call)
                if registration:
                    qualname, name = registration
                    if name is not None and name not in self._entries[qualname]:
                        self._entries[qualname][name] = Found(module, stmt)
                        plain.add(call)
        for node in module.at_import:
            if isinstance(node, ast.Call) and node not in plain:
                registration = self._registration(module, node)
                if registration or self._dynamic(module, node):
                    self._unknown.add(registration[0] if registration else _ALL)

    def _registration(self, module: Module, call: ast.expr) -> tuple[str, str | None] | None:
        """``(registry, name)`` if ``call`` is ``<registry>.register(…)`` (name ``None``
        unless it is one string literal); ``(_ALL, None)`` for a ``.register(…)`` call on
        something the reader cannot name; ``None`` for any other expression."""
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr == "register"):
            return None
        try:
            receiver = self._reader.canonical(self._reader.qualname(module, call.func.value))
        except Unreadable:
            return _ALL, None
        if receiver not in self._registries:
            return (_ALL, None) if receiver.split(".")[0] in self._tops else None
        literal = (len(call.args) == 1 and not call.keywords
                   and isinstance(call.args[0], ast.Constant)
                   and isinstance(call.args[0].value, str))
        return receiver, call.args[0].value if literal else None

    def _dynamic(self, module: Module, call: ast.Call) -> bool:
        """Whether ``call`` imports or runs code by a computed name (``__import__``,
        ``importlib.import_module``, ``exec``, …)."""
        func = call.func
        if isinstance(func, ast.Name) and func.id in _DYNAMIC_BUILTINS:
            return not module.bound[func.id]
        try:
            return self._reader.canonical(self._reader.qualname(module, func)) in _DYNAMIC
        except Unreadable:
            return False


def _may_set_attributes(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether a method may set or delete an attribute: it assigns or deletes one,
    reaches a dunder attribute (``__dict__``, ``__setattr__``), names ``setattr``,
    ``super`` or the like, or hands its first argument (``self``) to other code."""
    positional = func.args.posonlyargs + func.args.args
    me = positional[0].arg if positional else None
    uses = reads = 0  # of ``me``: all, and as ``me.attribute`` reads
    for node in ast.walk(func):
        if isinstance(node, ast.Attribute):
            if not isinstance(node.ctx, ast.Load) or node.attr.startswith("__"):
                return True
            reads += isinstance(node.value, ast.Name) and node.value.id == me
        elif isinstance(node, ast.Name):
            if node.id in _SETTERS:
                return True
            uses += node.id == me
    return uses > reads
