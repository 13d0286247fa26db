"""Every row's step-0 reference: the same task, seed and initialisation, evaluated
before its first optimizer step, and a run that is the same with or without it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

import ssl_bench.evaluate as evaluate
import ssl_bench.runner as runner
from conftest import RGB32, build_small_task
from eval.protocol import Protocol
from ssl_bench.cli import main
from ssl_bench.core.registry import EVALUATORS, TASKS
from ssl_bench.evaluate import EvalData, EvalSettings, evaluate_frozen, frozen_key
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


# ------------------------------------------------------------------ the step-0 cache

CPU = torch.device("cpu")
#: Tasks that build the same backbone first and normalise images the same way.
SAME_START = ["rotation", "autoencoder", "vae", "denoising", "context-encoder"]


def _task(name, **options):
    torch.manual_seed(0)  # as a run does before it builds its task
    return build_small_task(name, RGB32, **options)


def _eval_data():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    images = torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8, generator=g)
    images[:, 0] = (labels * 100).to(torch.uint8)[:, None, None]  # a class cue
    return EvalData(images[:40], labels[:40], images[40:], labels[40:], 3, images[40:])


def _protocol(ks=(5,)):
    return Protocol({"knn": EVALUATORS.get("knn")(ks=ks), "linear": EVALUATORS.get("linear")()},
                    layer_probe=EVALUATORS.get("linear")())


SETTINGS = EvalSettings(batch_size=16, layer_probes=True, layer_dims=256)


def _counted(monkeypatch):
    """The names of the tasks whose backbone part is computed, call by call."""
    calls, real = [], evaluate._backbone_part

    def backbone_part(task, *args):
        calls.append(task.name)
        return real(task, *args)

    monkeypatch.setattr(evaluate, "_backbone_part", backbone_part)
    return calls


def test_a_cached_backbone_part_equals_a_recomputed_one_and_is_not_recomputed(tmp_path,
                                                                              monkeypatch):
    calls = _counted(monkeypatch)
    data, cache = _eval_data(), tmp_path / "step0"
    rotation, _ = evaluate_frozen(_task("rotation"), data, _protocol(), SETTINGS, 0, CPU, cache)
    cached, test_x = evaluate_frozen(_task("autoencoder"), data, _protocol(), SETTINGS, 0, CPU,
                                     cache)
    assert calls == ["rotation"] and test_x is None
    assert not rotation["cached"] and cached["cached"]
    fresh, _ = evaluate_frozen(_task("autoencoder"), data, _protocol(), SETTINGS, 0, CPU)
    assert calls == ["rotation", "autoencoder"]
    for key in ("metrics", "layers", "layer_best", "pretext"):
        assert cached[key] == fresh[key], key
    assert fresh["layers"] and any(k.startswith("code_") for k in fresh["metrics"])
    # another normalisation (jigsaw standardises each image by itself): no hit
    evaluate_frozen(_task("jigsaw"), data, _protocol(), SETTINGS, 0, CPU, cache)
    assert calls[-1] == "jigsaw" and len(list(cache.iterdir())) == 2


def test_the_key_is_equal_only_for_the_same_backbone_normalisation_data_and_settings():
    data, protocol = _eval_data(), _protocol()

    def key(name="rotation", data=data, protocol=protocol, settings=SETTINGS, seed=0, **options):
        return frozen_key(_task(name, **options), data, protocol, settings, seed, CPU)

    base = key()
    assert {key(name) for name in SAME_START} == {base}
    assert key("autoencoder", code_dim=7) == base  # the heads are not the backbone
    different = [key("jigsaw"), key("relative-patch"), key("split-brain"), key(seed=1),
                 key(protocol=_protocol(ks=(6,))),
                 key(settings=EvalSettings(8, True, 256)),
                 key(settings=EvalSettings(16, True, 256, precision="bf16")),
                 key(settings=EvalSettings(16, True, 256, bn_recalibrate=True)),
                 key(settings=EvalSettings(16, False, 256))]
    nudged = dataclasses.replace(data, train_images=data.train_images.clone())
    nudged.train_images[-1, 2, 31, 31] ^= 1  # one bit of one pixel of the last image
    different.append(key(data=nudged))
    task = _task("rotation")
    with torch.no_grad():
        weight = next(task.backbone.parameters())
        weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(1.0))
    different.append(frozen_key(task, data, protocol, SETTINGS, 0, CPU))
    assert len({base, *different}) == len(different) + 1


def test_runs_that_start_alike_pay_for_one_step0(rgb_folder, tmp_path, monkeypatch):
    """Through the CLI: the second run's step0.json comes from $SSL_BENCH_CACHE/step0."""
    calls = _counted(monkeypatch)
    rotation = _run("rotation", rgb_folder, tmp_path / "a")
    assert calls == ["rotation", "rotation"]  # step 0, final
    denoising = _run("denoising", rgb_folder, tmp_path / "b")
    assert calls == ["rotation", "rotation", "denoising"]  # final only
    assert denoising["step0"]["cached"] and not rotation["step0"]["cached"]
    assert denoising["step0"]["metrics"] == rotation["step0"]["metrics"]
    (run_dir,) = (tmp_path / "b").iterdir()
    assert json.loads((run_dir / "step0.json").read_text())["cached"]
