"""``ssl-bench list`` shows what the registries hold; ``ssl-bench --help`` and one
registry lookup import nothing they do not need."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from ssl_bench.cli import main
from ssl_bench.core.registry import BACKBONES, DATASETS, EVALUATORS, TASKS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "numpy", "pandas", "faiss", "sklearn")


def test_list_shows_every_registered_entry_with_its_defaults(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    sections = {title: lines.index(f"{title}:") for title in
                ("tasks", "backbones", "datasets", "evaluators")}
    assert list(sections.values()) == sorted(sections.values())
    task_lines = lines[sections["tasks"] + 1:sections["backbones"]]
    for name, cls in TASKS.items():
        (row,) = [i for i, line in enumerate(task_lines) if line.split()[0] == name]
        assert cls.paper in task_lines[row]
        assert ("[reference row]" in task_lines[row]) == bool(cls.reference)
        fields = [f.name for f in dataclasses.fields(cls.Options)]
        if fields:
            shown = task_lines[row + 1].split("--set ", 1)[1].replace(", ", ",")
            places = [("," + shown).find(f",{field}=") for field in fields]  # in field order
            assert -1 not in places and places == sorted(places), (name, shown)
    listed = {title: [line.strip() for line in lines[start + 1:]] for title, start in
              sections.items()}
    assert listed["backbones"][:len(BACKBONES.names()) + 1] == [*BACKBONES.names(),
                                                                 "timm:<name>"]
    assert listed["datasets"][:len(DATASETS.names()) + 1] == [*DATASETS.names(),
                                                               "imagefolder:<path>"]
    assert listed["evaluators"] == EVALUATORS.names()


def test_help_does_not_import_torch():
    code = ("import sys\nfrom ssl_bench.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\n"
            f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
            "assert not heavy, f'imported {heavy}'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT)
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
