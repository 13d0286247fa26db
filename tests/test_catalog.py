"""The static catalog says what the live registries say, and ``ssl-bench list`` uses it
without importing torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backbones import backbone_names
from ssl_bench.catalog import Catalog, live_task_info
from ssl_bench.core.registry import BACKBONES, DATASETS, EVALUATORS, TASKS
from ssl_bench.core.source_reader import SourceReader, Unreadable
from ssl_bench.datasets import dataset_names

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "numpy", "pandas", "faiss", "sklearn")


def _typed(info):
    """A TaskInfo with each default's type beside it (``1 == 1.0 == True`` print apart)."""
    return info.name, info.paper, info.reference, [(n, type(v), v) for n, v in info.options]


@pytest.fixture(scope="module")
def catalog():
    catalog = Catalog()
    catalog.tasks(TASKS)  # the order `ssl-bench list` reads the registries in
    for registry in (BACKBONES, DATASETS, EVALUATORS):
        catalog.names(registry)
    return catalog


@pytest.mark.parametrize("registry", [TASKS, BACKBONES, DATASETS, EVALUATORS],
                         ids=lambda r: r.kind)
def test_the_source_names_every_registered_entry(catalog, registry):
    entries = catalog.static_entries(registry)
    assert entries is not None, f"the {registry.kind}s' registrations are not read statically"
    assert sorted(entries) == registry.names()


@pytest.mark.parametrize("name", TASKS.names())
def test_a_task_read_from_source_matches_the_imported_class(catalog, name):
    static = catalog.static_task(name, catalog.static_entries(TASKS)[name])
    assert _typed(static) == _typed(live_task_info(name, TASKS.get(name)))


def test_listed_names_end_with_the_same_patterns(catalog):
    assert catalog.listed_names(BACKBONES) == backbone_names()
    assert catalog.listed_names(DATASETS) == dataset_names()
    assert catalog.listed_names(EVALUATORS) == EVALUATORS.names()


def _live_listing() -> str:
    """What ``ssl-bench list`` printed when it imported every registered module."""
    lines = ["tasks:"]
    for name, cls in TASKS.items():
        info = live_task_info(name, cls)
        lines.append(f"  {name:18s} {info.paper}" + (" [reference row]" if info.reference
                                                     else ""))
        opts = ", ".join(f"{n}={v:.4g}" if isinstance(v, float) else f"{n}={v!r}"
                         for n, v in info.options)
        if opts:
            lines.append(f"  {'':18s} --set {opts}")
    for title, names in (("backbones", backbone_names()), ("datasets", dataset_names()),
                         ("evaluators", EVALUATORS.names())):
        lines.append(f"{title}:\n  " + "\n  ".join(names))
    return "\n".join(lines) + "\n"


def _run_cli(argv: list[str]) -> subprocess.CompletedProcess:
    """``ssl-bench <argv>`` in a fresh interpreter that then fails if it imported torch
    (or another heavy library)."""
    code = ("import sys\nfrom ssl_bench.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\n"
            f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
            "assert not heavy, f'imported {heavy}'\n")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          cwd=ROOT)


def test_list_prints_the_live_listing_without_importing_torch():
    result = _run_cli(["list"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == _live_listing()


def test_help_does_not_import_torch():
    result = _run_cli(["--help"])
    assert result.returncode == 0, result.stderr
    assert "ssl-bench" in result.stdout


def test_one_lookup_imports_only_the_module_that_registers_the_name():
    """A run's task and backbone lookups import neither timm nor the other tasks; a name
    no module registers literally still gets the full discovery (and its error)."""
    code = ("import sys\nfrom ssl_bench.core.errors import UnknownNameError\n"
            "from ssl_bench.core.registry import BACKBONES, TASKS\n"
            "assert TASKS.get('jigsaw').name == 'jigsaw'\n"
            "assert BACKBONES.get('convnet').name == 'convnet'\n"
            "loaded = sorted(m for m in sys.modules if m == 'timm' or m.startswith('tasks.')\n"
            "                and m.split('.')[1] in {'mae', 'rotation', 'vae'})\n"
            "assert not loaded, loaded\n"
            "try:\n    TASKS.get('no-such-task')\nexcept UnknownNameError as e:\n"
            "    assert 'rotation' in str(e) and 'mae' in str(e), e\n"
            "else:\n    raise AssertionError('no error')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr


# A toy project: registries and packages outside ssl-bench, read the same way.
TOY_FILES = {
    "toyreg.py": """
        from ssl_bench.core.registry import Registry

        TOYS = Registry("toy", "--toy", "toytasks")
        NAMES = Registry("toyname", "--toyname", "toynames")
        PLUGS = Registry("toyplug", "--toyplug", "toyplugs")
        """,
    "toytasks/__init__.py": '"""Toy tasks."""',
    "toytasks/_base.py": """
        from dataclasses import dataclass


        @dataclass
        class NoOptions:
            '''None.'''


        class Base:
            paper = ""
            reference = False
            Options = NoOptions
        """,
    "toytasks/plain.py": """
        from dataclasses import dataclass, field

        from tasks.options import option
        from toyreg import TOYS
        from toytasks._base import Base

        SIZE = 2 ** 10 - 1


        @TOYS.register("plain")
        class Plain(Base):
            paper = "Toy et al. 2024, " "§1"

            @dataclass
            class Options:
                '''Every plain way to give a default.'''

                ratio: float = option(4 / 128, low=0.0)
                size: int = option(SIZE, low=1)
                angles: tuple = option((0, -90))
                mode: str = field(default="x")
                flag: bool = True

                def __post_init__(self) -> None:
                    if self.size < 1:
                        raise ValueError(self.size)


        @TOYS.register("child")
        class Child(Plain):
            reference = True

            @dataclass(repr=True)
            class Options(Plain.Options):
                size: int = 3
                extra: float = -1e-3
        """,
    "toytasks/bare.py": """
        from toyreg import TOYS
        from toytasks._base import Base
        from toytasks.plain import Child

        BASES = (Base,)


        @TOYS.register("grandchild")
        class Grandchild(Child):
            paper = "inherits Child's options from another module"


        @TOYS.register("bare")
        class Bare(BASES[0]):
            pass
        """,
    "toytasks/odd.py": """
        from dataclasses import dataclass

        from tasks.options import option
        from toyreg import TOYS
        from toytasks._base import Base


        @TOYS.register("odd")
        class Odd(Base):
            paper = "a default the source does not state"

            @dataclass
            class Options:
                width: float = option(float("inf"))
        """,
    "toynames/__init__.py": "",
    "toynames/a.py": """
        from toyreg import NAMES


        @NAMES.register("alpha")
        def alpha():
            return 1
        """,
    "toynames/b.py": """
        from toyreg import NAMES

        for name in ("beta", "gamma"):
            NAMES.register(name)(type(name, (), {}))
        """,
    "toyplugs/__init__.py": "",
    "toyplugs/native.py": """
        from toyreg import PLUGS

        PLUGS.register("native")(type("Native", (), {}))
        """,
    "toy_extra.py": "def extra():\n    return 2\n",
    "toy_extra-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: toy-extra\nVersion: 0.1\n",
    "toy_extra-0.1.dist-info/entry_points.txt": "[ssl_bench.toyplugs]\nextra = toy_extra:extra\n",
}


@pytest.fixture
def toy(tmp_path):
    """The toy project on ``sys.path``; its modules are forgotten afterwards."""
    root = tmp_path / "toy"
    for name, text in TOY_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip())
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))
        import toyreg

        yield toyreg
    for module in [m for m in sys.modules if m.split(".")[0].startswith("toy")]:
        del sys.modules[module]


def test_a_task_is_read_through_inheritance_and_module_constants(toy):
    catalog = Catalog("toyreg")
    entries = catalog.static_entries(toy.TOYS)
    assert sorted(entries) == ["bare", "child", "grandchild", "odd", "plain"]
    plain = catalog.static_task("plain", entries["plain"])
    assert plain.paper == "Toy et al. 2024, §1" and not plain.reference
    assert plain.options == (("ratio", 0.03125), ("size", 1023), ("angles", (0, -90)),
                             ("mode", "x"), ("flag", True))
    child = catalog.static_task("child", entries["child"])
    assert child.reference and child.paper == plain.paper
    assert [n for n, _ in child.options] == ["ratio", "size", "angles", "mode", "flag", "extra"]
    assert dict(child.options)["size"] == 3 and dict(child.options)["extra"] == -1e-3
    grandchild = catalog.static_task("grandchild", entries["grandchild"])
    assert grandchild.options == child.options and grandchild.reference
    assert "toytasks.plain" not in sys.modules  # read, never imported
    for name in ("plain", "child", "grandchild"):
        assert _typed(catalog.static_task(name, entries[name])) == \
            _typed(live_task_info(name, toy.TOYS.get(name)))


def test_what_the_source_does_not_state_is_imported(toy):
    catalog = Catalog("toyreg")
    entries = catalog.static_entries(toy.TOYS)
    for name in ("odd", "bare"):  # a computed default, a computed base class
        with pytest.raises(Unreadable):
            catalog.static_task(name, entries[name])
    infos = catalog.tasks(toy.TOYS)
    assert [_typed(i) for i in infos] == \
        [_typed(live_task_info(n, c)) for n, c in toy.TOYS.items()]
    assert dict(infos[[i.name for i in infos].index("odd")].options) == {"width": float("inf")}


def test_a_registration_by_computed_name_asks_the_live_registry(toy):
    catalog = Catalog("toyreg")
    assert catalog.static_entries(toy.NAMES) is None
    assert catalog.names(toy.NAMES) == ["alpha", "beta", "gamma"]


def test_an_entry_point_plugin_asks_the_live_registry(toy):
    catalog = Catalog("toyreg")
    assert catalog.static_entries(toy.PLUGS) is None
    assert catalog.names(toy.PLUGS) == ["extra", "native"]


@pytest.mark.parametrize("expr, value", [
    ("1 / 32", 0.03125), ("2**63 - 1", 2**63 - 1), ("-(3)", -3), ("7 / 96", 7 / 96),
    ("(1, 'a', None, True)", (1, "a", None, True)), ("CONSTANT * 2", 84)])
def test_literals_and_arithmetic_on_them_are_computed(tmp_path, monkeypatch, expr, value):
    assert _literal(tmp_path, monkeypatch, expr) == value


@pytest.mark.parametrize("expr", ["10 ** 10 ** 9", "[1]", "len('ab')", "1 / 0", "'a' * 3",
                                  "UNBOUND", "LATER", "CONSTANT.real", "{1: 2}"])
def test_anything_else_is_unreadable(tmp_path, monkeypatch, expr):
    with pytest.raises(Unreadable):
        _literal(tmp_path, monkeypatch, expr)


def _literal(tmp_path, monkeypatch, expr: str):
    """The reader's value of ``expr`` assigned in a module after ``CONSTANT = 42``."""
    (tmp_path / "toy_snippet.py").write_text(f"CONSTANT = 42\nvalue = {expr}\nLATER = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reader = SourceReader(frozenset({"toy_snippet"}))
    module = reader.module("toy_snippet")
    return reader.literal(module, module.defs["value"].value)
