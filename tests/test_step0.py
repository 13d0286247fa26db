"""Every row's step-0 reference: the same task, seed and initialisation, evaluated
before its first optimizer step, and a run that is the same with or without it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import ssl_bench.runner as runner
from ssl_bench.cli import main
from ssl_bench.core.registry import TASKS
from ssl_bench.train import Trainer

TINY = ["--epochs", "1", "--train-subset", "48", "--batch-size", "16", "--evaluators", "knn",
        "--lowshot", "--no-layer-probes", "--pretext-eval-images", "16"]


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory):
    """A small RGB ImageFolder (3 classes of smooth random 32 px images)."""
    root = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    for split, count in (("train", 20), ("test", 8)):
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(count):
                small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
                small[..., c] = 255  # a class colour, so k-NN has something to find
                Image.fromarray(small).resize((32, 32), Image.BILINEAR).save(
                    root / split / f"c{c}" / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))


def _run(name, folder, out, *extra):
    backbone = "vit_tiny" if TASKS.get(name).backbone_family == "vit" else "convnet"
    argv = ["run", "--task", name, "--backbone", backbone, "--dataset", f"imagefolder:{folder}",
            "--out", str(out), *TINY, *extra]
    assert main(argv) == 0
    (run_dir,) = out.iterdir()
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.parametrize("name", TASKS.names())
def test_step0_evaluates_exactly_the_parameters_training_starts_from(name, rgb_folder, tmp_path,
                                                                    monkeypatch):
    states = {}

    def snapshot(task):
        return {k: v.detach().clone() for k, v in task.state_dict().items()}

    def evaluate_frozen(task, *args, **kwargs):
        states.setdefault("step0", snapshot(task))
        return real_evaluate(task, *args, **kwargs)

    def fit(self, *args, **kwargs):
        states["train_start"] = snapshot(self.task)
        return real_fit(self, *args, **kwargs)

    real_evaluate, real_fit = runner.evaluate_frozen, Trainer.fit
    monkeypatch.setattr(runner, "evaluate_frozen", evaluate_frozen)
    monkeypatch.setattr(Trainer, "fit", fit)
    results = _run(name, rgb_folder, tmp_path / "runs")

    step0, start = states["step0"], states["train_start"]
    assert step0.keys() == start.keys()
    assert all(torch.equal(step0[k], start[k]) for k in step0)
    assert results["step0"]["metrics"].keys() == results["metrics"].keys()
    if not TASKS.get(name).pretrains:  # an untrained reference is its own step 0
        assert results["step0"]["metrics"] == results["metrics"]


def test_a_run_is_the_same_with_or_without_its_step0_reference(rgb_folder, tmp_path):
    """The step-0 evaluation draws nothing from the generators that training uses."""
    with_step0 = _run("context-encoder", rgb_folder, tmp_path / "a")
    without = _run("context-encoder", rgb_folder, tmp_path / "b", "--no-step0")
    assert without["step0"] is None and with_step0["step0"] is not None
    assert with_step0["metrics"] == without["metrics"]
    assert with_step0["pretext"] == without["pretext"]
    assert with_step0["config_id"] == without["config_id"]
