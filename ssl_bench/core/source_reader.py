"""Facts read from Python source with :mod:`ast`, without importing (or running) it.

:class:`SourceReader` finds a module's file the way the import system would, resolves a
name used in a module to the dotted name of what it refers to (through ``import`` and
``from … import``), finds the statement that defines a dotted name, looks a class
attribute up through single inheritance and evaluates literals and arithmetic on
literals. Whatever the source does not state that plainly (a name bound twice, a
computed value, a metaclass, a star import, …) raises :class:`Unreadable`: the caller
then imports the code instead. Nothing is ever executed or ``eval``-ed.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import operator
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_,
          ast.Invert: operator.invert}
_NUMBERS = (int, float, complex)  # bool is an int
_MAX_EXPONENT = 256  # keeps ``10 ** 10 ** 9`` from hanging the reader
_MAX_BITS = 1 << 16  # and ``(10 ** 256) ** 256 ** …`` too
_MAX_DEPTH = 32  # names followed to a value; a cycle ends here
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_NO_SCOPE: Counter = Counter()  # an expression at module level: no class body to look in
_GLOBAL = re.compile(rb"^[ \t]*global[ \t]", re.MULTILINE)


class Unreadable(Exception):
    """A fact the source does not state plainly; only importing the code can tell."""


def run_at_import(body: list[ast.stmt], classes: bool = True) -> Iterator[ast.AST]:
    """Every node of ``body`` that runs when ``body`` runs, in source order: function
    and lambda bodies are left out (they run when called), and so are class bodies
    unless ``classes`` (a class body runs, but binds names in its own scope)."""
    stack: list[ast.AST] = list(reversed(body))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, _SCOPES):
            children = [node.args]  # defaults run now, the body later
            if not isinstance(node, ast.Lambda):
                children[:0] = node.decorator_list
        elif isinstance(node, ast.ClassDef) and not classes:
            children = [*node.decorator_list, *node.bases, *node.keywords]
        else:
            children = list(ast.iter_child_nodes(node))
        stack.extend(reversed(children))


def bindings(body: list[ast.stmt]) -> Counter:
    """How many statements of a module or class ``body`` bind each name in that scope
    (``"*"`` counts star imports)."""
    count: Counter = Counter()
    for node in run_at_import(body, classes=False):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            count[node.id] += 1
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            count[node.name] += 1
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            count.update(a.asname or a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            count[node.name] += 1
        elif isinstance(node, (ast.Global, ast.Nonlocal, ast.Match)):
            count["*"] += 1  # names bound from elsewhere or by patterns: trust none
    return count


@functools.lru_cache(maxsize=1024)
def class_scope(node: ast.ClassDef) -> Counter:
    """:func:`bindings` of a class body (read-only: shared by every caller)."""
    return bindings(node.body)


def _binds(stmt: ast.stmt) -> list[str]:
    """The names a plain top-level statement binds (empty for any other statement)."""
    if isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return [stmt.name]
    if isinstance(stmt, ast.Assign):
        return [t.id for t in stmt.targets if isinstance(t, ast.Name)]
    if isinstance(stmt, ast.AnnAssign) and stmt.value and isinstance(stmt.target, ast.Name):
        return [stmt.target.id]
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return [a.asname or a.name.split(".")[0] for a in stmt.names if a.name != "*"]
    return []


class Module:
    """One parsed source file: its dotted ``name``, ``tree``, the nodes that run when it
    is imported (:func:`run_at_import`), the package its relative imports start from,
    the bindings of its top-level scope and the plain statement binding each name there."""

    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path = name, path
        try:
            source = path.read_bytes()
            self.tree = ast.parse(source, filename=str(path))
        except (SyntaxError, ValueError, OSError) as exc:
            raise Unreadable(f"{path}: {exc}") from None
        self.package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        self.at_import = list(run_at_import(self.tree.body))
        self.bound = bindings(self.tree.body)
        if _GLOBAL.search(source):  # a function may rebind a module name: count that too
            for node in ast.walk(self.tree):
                if isinstance(node, ast.Global):
                    self.bound.update(node.names)
        self.defs = {n: stmt for stmt in self.tree.body for n in _binds(stmt)}

    def absolute(self, node: ast.ImportFrom) -> str:
        """The module a ``from … import`` statement imports from."""
        if not node.level:
            return node.module or ""
        parts = self.package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1])
        return f"{base}.{node.module}" if node.module else base

    def imported(self) -> Iterator[str]:
        """Dotted names of the modules its import-time code imports, parents first
        (``from a import b`` also names ``a.b``, which may be a module or not)."""
        for node in self.at_import:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = self.absolute(node)
                names = [base, *(f"{base}.{a.name}" for a in node.names if a.name != "*")]
            else:
                continue
            for name in names:
                parts = name.split(".")
                yield from (".".join(parts[:i]) for i in range(1, len(parts) + 1))


@dataclass(frozen=True)
class Found:
    """A definition: the statement ``node`` of ``module``, in the body of the class
    ``owner`` (``None``: at module level)."""

    module: Module
    node: ast.stmt
    owner: ast.ClassDef | None = None

    @property
    def scope(self) -> Counter:
        """The names bound in the class body the statement's expressions run in first."""
        return class_scope(self.owner) if self.owner else _NO_SCOPE


class SourceReader:
    """Reads modules by dotted name from their source files, each parsed once.

    Args:
        roots: the top-level packages it reads; modules of others (the standard
            library, torch, …) count as having no source.
        harmless: dotted names of class decorators that leave class attributes alone
            (e.g. ``dataclasses.dataclass``); any other decorator makes a class's
            attributes unreadable.
    """

    def __init__(self, roots: frozenset[str], harmless: frozenset[str] = frozenset()) -> None:
        self.roots, self.harmless = roots, harmless
        self._modules: dict[str, Module | None] = {}

    def module(self, name: str) -> Module | None:
        """The parsed source of module ``name``; ``None`` when it has no ``.py`` source
        (not installed, a compiled extension, not a module) or is outside ``roots``.

        Raises:
            Unreadable: the source does not parse.
        """
        if name not in self._modules:
            path = _source_path(name) if name.split(".")[0] in self.roots else None
            self._modules[name] = Module(name, path) if path else None
        return self._modules[name]

    def qualname(self, module: Module, expr: ast.expr, scope: Counter = _NO_SCOPE) -> str:
        """The dotted name a ``Name`` or ``a.b.c`` expression of ``module`` refers to,
        looked up in ``scope`` (a class body's bindings, see :attr:`Found.scope`) first.

        Raises:
            Unreadable: another expression, a name bound in ``scope``, a name not bound
                exactly once at the module's top level (a builtin, a star import, …).
        """
        if isinstance(expr, ast.Attribute):
            return f"{self.qualname(module, expr.value, scope)}.{expr.attr}"
        if not isinstance(expr, ast.Name) or scope[expr.id]:
            raise Unreadable(f"{module.name}: {ast.unparse(expr)} is not a plain name")
        stmt = module.defs.get(expr.id)
        if stmt is None or module.bound[expr.id] != 1 or module.bound["*"]:
            raise Unreadable(f"{module.name}: {expr.id} is not bound once at top level")
        if isinstance(stmt, ast.Import):
            alias = next(a for a in stmt.names if (a.asname or a.name.split(".")[0]) == expr.id)
            return alias.name if alias.asname else expr.id
        if isinstance(stmt, ast.ImportFrom):
            alias = next(a for a in stmt.names if (a.asname or a.name) == expr.id)
            return f"{module.absolute(stmt)}.{alias.name}"
        return f"{module.name}.{expr.id}"

    def resolve(self, qualname: str, depth: int = 0) -> Found:
        """The statement that defines ``qualname`` (a class, function or assignment),
        through imports and class attributes.

        Raises:
            Unreadable: no source, a module rather than a definition, or a lookup
                :meth:`qualname` or :meth:`class_attr` cannot make.
        """
        if depth > _MAX_DEPTH:
            raise Unreadable(f"{qualname}: too many indirections")
        module, rest = self._locate(qualname)
        if not rest:
            raise Unreadable(f"{qualname} is a module")
        stmt = module.defs.get(rest[0])
        if stmt is None or module.bound[rest[0]] != 1 or module.bound["*"]:
            raise Unreadable(f"{module.name}: {rest[0]} is not bound once at top level")
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            target = self.qualname(module, ast.Name(rest[0], ast.Load()))
            return self.resolve(".".join([target, *rest[1:]]), depth + 1)
        found = Found(module, stmt)
        for attr in rest[1:]:
            found = self.class_attr(self.as_class(found, depth), attr, depth + 1)
        return found

    def canonical(self, qualname: str) -> str:
        """``qualname`` with re-exports and plain aliases (``X = a.b``) followed to the
        module-level name the object is made under; unchanged where the source cannot
        say more (no source, a class attribute, a name bound twice, …)."""
        for _ in range(_MAX_DEPTH):
            try:
                module, rest = self._locate(qualname)
            except Unreadable:
                return qualname
            stmt = module.defs.get(rest[0]) if len(rest) == 1 else None
            if stmt is None or module.bound[rest[0]] != 1 or module.bound["*"]:
                return qualname
            value = stmt.value if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else None
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                value = ast.Name(rest[0], ast.Load())
            if not isinstance(value, (ast.Name, ast.Attribute)):
                return qualname
            try:
                qualname = self.qualname(module, value)
            except Unreadable:
                return qualname
        return qualname

    def class_of(self, module: Module, expr: ast.expr, scope: Counter = _NO_SCOPE) -> Found:
        """The ``class`` statement an expression of ``module`` refers to.

        Raises:
            Unreadable: see :meth:`qualname` and :meth:`resolve`; or not a class.
        """
        return self.as_class(self.resolve(self.qualname(module, expr, scope)), 0)

    def class_attr(self, cls: Found, name: str, depth: int = 0) -> Found:
        """The statement that binds attribute ``name`` of class ``cls``: in its body,
        else in its base's (single inheritance only).

        Raises:
            Unreadable: a metaclass or class keyword, a decorator not in ``harmless``,
                ``__init_subclass__``, the name bound more than once or by anything but
                a plain assignment or ``class`` statement, several bases or none.
        """
        node = cls.node
        assert isinstance(node, ast.ClassDef)
        if depth > _MAX_DEPTH:
            raise Unreadable(f"{cls.module.name}.{node.name}: too many bases")
        if node.keywords:
            raise Unreadable(f"{cls.module.name}.{node.name}: a metaclass or class keywords")
        for decorator in node.decorator_list:
            func = decorator.func if isinstance(decorator, ast.Call) else decorator
            if self.qualname(cls.module, func, cls.scope) not in self.harmless:
                raise Unreadable(f"{cls.module.name}.{node.name}: {ast.unparse(decorator)}")
        bound = class_scope(node)
        if bound["__init_subclass__"] or bound["*"]:
            raise Unreadable(f"{cls.module.name}.{node.name}: attributes set by code")
        if bound[name]:
            stmts = [s for s in node.body if name in _binds(s)]
            if bound[name] != 1 or len(stmts) != 1 or isinstance(stmts[0], _SCOPES):
                raise Unreadable(f"{cls.module.name}.{node.name}.{name}: not plainly bound")
            return Found(cls.module, stmts[0], node)
        if len(node.bases) != 1:
            raise Unreadable(f"{cls.module.name}.{node.name}: {len(node.bases)} bases")
        base = self.as_class(self.resolve(self.qualname(cls.module, node.bases[0], cls.scope),
                                           depth + 1), depth)
        return self.class_attr(base, name, depth + 1)

    def literal(self, module: Module, expr: ast.expr, scope: Counter = _NO_SCOPE,
                depth: int = 0) -> Any:
        """The value of a literal (numbers, strings, ``True``/``None``, tuples of them),
        of arithmetic on literals (``1 / 32``, ``2**63 - 1``) or of a name bound to one
        (a module constant, here or imported), computed without ``eval``.

        Raises:
            Unreadable: any other expression (a call, a list, a comprehension, …), a name
                used before its assignment, arithmetic that fails or is too large.
        """
        if depth > _MAX_DEPTH:
            raise Unreadable(f"{module.name}: too many indirections")
        if isinstance(expr, ast.Constant):
            return expr.value
        if isinstance(expr, ast.Tuple):
            return tuple(self.literal(module, e, scope, depth) for e in expr.elts)
        if isinstance(expr, ast.UnaryOp) and type(expr.op) in _UNARY:
            operand = self.literal(module, expr.operand, scope, depth)
            return _arithmetic(_UNARY[type(expr.op)], operand)
        if isinstance(expr, ast.BinOp) and type(expr.op) in _BINARY:
            left = self.literal(module, expr.left, scope, depth)
            right = self.literal(module, expr.right, scope, depth)
            if isinstance(expr.op, ast.Pow) and _too_large(left, right):
                raise Unreadable(f"{module.name}: {ast.unparse(expr)} is too large")
            return _arithmetic(_BINARY[type(expr.op)], left, right)
        if isinstance(expr, (ast.Name, ast.Attribute)):
            found = self.resolve(self.qualname(module, expr, scope), depth + 1)
            node = found.node
            if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
                raise Unreadable(f"{module.name}: {ast.unparse(expr)} is not a constant")
            if found.module is module and found.owner is None and node.lineno >= expr.lineno:
                raise Unreadable(f"{module.name}: {ast.unparse(expr)} is used before it is set")
            return self.literal(found.module, node.value, found.scope, depth + 1)
        raise Unreadable(f"{module.name}:{expr.lineno}: {ast.unparse(expr)} is not a literal")

    def as_class(self, found: Found, depth: int = 0) -> Found:
        """``found`` if it is a ``class`` statement, else what a plain alias
        (``Options = NoOptions``) names, followed to a ``class`` statement.

        Raises:
            Unreadable: neither, or a name :meth:`qualname` cannot follow.
        """
        for _ in range(_MAX_DEPTH - depth):
            node = found.node
            if isinstance(node, ast.ClassDef):
                return found
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            if not isinstance(value, (ast.Name, ast.Attribute)):
                raise Unreadable(f"{found.module.name}:{node.lineno}: not a class")
            found = self.resolve(self.qualname(found.module, value, found.scope), depth + 1)
        raise Unreadable(f"{found.module.name}: too many indirections")

    def _locate(self, qualname: str) -> tuple[Module, list[str]]:
        """The longest module prefix of ``qualname`` that has source, and the rest."""
        parts = qualname.split(".")
        for i in range(len(parts), 0, -1):
            module = self.module(".".join(parts[:i]))
            if module is not None:
                return module, parts[i:]
        raise Unreadable(f"{qualname}: no Python source")


def _arithmetic(op, *operands: Any) -> Any:
    """``op(*operands)`` on numbers only; a failure (``1 / 0``) is :class:`Unreadable`."""
    if not all(isinstance(x, _NUMBERS) for x in operands):
        raise Unreadable(f"arithmetic on {operands!r}")
    try:
        return op(*operands)
    except (ArithmeticError, TypeError, ValueError) as exc:
        raise Unreadable(f"arithmetic on {operands!r}: {exc}") from None


def _too_large(base: Any, exponent: Any) -> bool:
    """Whether ``base ** exponent`` could take long to compute (a huge integer)."""
    if not isinstance(base, _NUMBERS) or not isinstance(exponent, _NUMBERS):
        return False
    bits = abs(base).bit_length() if isinstance(base, int) else 1
    return abs(exponent) > _MAX_EXPONENT or bits * abs(exponent) > _MAX_BITS


def _source_path(name: str) -> Path | None:
    """The ``.py`` file module ``name`` would be imported from, found without importing
    it or its packages (only a top-level package's spec is asked for)."""
    top, *rest = name.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        origin = spec.origin
        return Path(origin) if origin and origin.endswith(".py") else None
    folders = [Path(p) for p in spec.submodule_search_locations or []]
    for part in rest[:-1]:
        folders = [f / part for f in folders if (f / part).is_dir()]
    for folder in folders:
        for path in (folder / f"{rest[-1]}.py", folder / rest[-1] / "__init__.py"):
            if path.is_file():
                return path
    return None
