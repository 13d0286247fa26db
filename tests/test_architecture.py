"""The layers stay apart, the registries own names, and a new task is one file."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssl_bench.core.registry import BACKBONES, DATASETS, EVALUATORS, TASKS

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("ssl_bench", "tasks", "backbones", "eval")
# What each lower layer may import of the project (prefixes of module names).
ALLOWED = {
    "ssl_bench/core": ("ssl_bench.core",),
    "backbones": ("ssl_bench.core", "backbones"),
    "eval": ("ssl_bench.core", "eval"),
    "tasks": ("ssl_bench.core", "backbones.base", "tasks"),
}


def _project_imports(path: Path) -> set[str]:
    """Every project module a file imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        found.update(n for n in names if n.split(".")[0] in PROJECT)
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_lower_layers_import_only_the_layers_below(layer):
    allowed = ALLOWED[layer]
    for path in sorted((ROOT / layer).glob("*.py")):
        bad = {m for m in _project_imports(path)
               if not any(m == a or m.startswith(a + ".") for a in allowed)}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_importing_the_core_loads_no_other_layer():
    code = ("import sys, ssl_bench.core; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in {'tasks', 'backbones', 'eval'} "
            "or (m.startswith('ssl_bench.') and not m.startswith('ssl_bench.core'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("registry", [TASKS, BACKBONES, DATASETS, EVALUATORS],
                         ids=lambda r: r.kind)
def test_the_registry_owns_names(registry):
    for name, entry in registry.items():
        assert entry.name == name


@pytest.mark.parametrize("name", TASKS.names())
def test_task_modules_are_short(name):
    path = Path(sys.modules[TASKS.get(name).__module__].__file__)
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines < 250, f"{path.name} has {lines} lines"


TOY_TASK = '''
"""A toy pretext task that lives outside ssl-bench: predict each image's brightness."""

import torch
import torch.nn.functional as F

from tasks.base import PretextTask


class Brightness(PretextTask):
    """Regress the mean intensity of each image from its pooled features."""

    paper = "toy task of the ssl-bench test suite"

    def __init__(self, make_backbone, spec, options):
        super().__init__(make_backbone, spec, options)
        self.backbone = self.build_backbone(make_backbone)
        self.head = torch.nn.Linear(self.backbone.num_features, 1)

    def loss(self, images):
        prediction = self.head(self.backbone(self.normalize(images)))[:, 0]  # (N,)
        target = images.mean(dim=(1, 2, 3))  # (N,)
        return F.mse_loss(prediction, target), {}
'''


def test_a_new_task_is_one_file_registered_through_an_entry_point(tmp_path):
    """A task module outside the project, announced through the ``ssl_bench.tasks``
    entry-point group, runs end to end through ``ssl-bench run`` with no edit here."""
    package = tmp_path / "site"
    package.mkdir()
    (package / "toy_brightness.py").write_text(TOY_TASK)
    dist = package / "toy_brightness-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-brightness\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[ssl_bench.tasks]\nbrightness = toy_brightness:Brightness\nbroken = no_such_module:X\n")
    env = {**os.environ, "PYTHONPATH": str(package), "SSL_BENCH_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    out = tmp_path / "runs"
    cli = [sys.executable, "-m", "ssl_bench.cli"]
    listed = subprocess.run([*cli, "list"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "brightness" in listed.stdout, listed.stderr
    assert "warning: skipped task 'broken'" in listed.stderr  # a broken plug-in is named, not fatal
    run = subprocess.run([*cli, "run", "--task", "brightness", "--epochs", "1", "--train-subset",
                          "256", "--batch-size", "64", "--evaluators", "knn", "--lowshot",
                          "--no-layer-probes", "--out", str(out)],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    (run_dir,) = out.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["task"] == "brightness" and results["steps"] == 4
    assert results["summary"]["parameters"]["head"] == results["cost"]["feature_dim"] + 1
    assert set(results["pretext"]) == {"loss"}  # the base class's held-out loss
    assert results["metrics"]["knn_top1_k20"] > 20  # 10 classes: well above chance
