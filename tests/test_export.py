"""``ssl-bench export``, ``--init-from`` and peak memory in the cost columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import GRAY28, RGB32, build_small_task
from ssl_bench.cli import main
from ssl_bench.core.errors import IncompatibleError
from ssl_bench.export import evaluated_backbone, load_export, load_run_task

# the smallest run that trains: 2 steps, k-NN only on 100 labelled / 50 test digits
TINY = ["--epochs", "1", "--train-subset", "16", "--batch-size", "8", "--evaluators", "knn",
        "--lowshot", "--no-layer-probes", "--eval-train-subset", "100", "--test-subset", "50",
        "--pretext-eval-images", "16"]
CONVNET = ["--backbone-opt", "width=8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Finished tiny runs under one folder: ``convnet`` (rotation), ``resnet18``
    (rotation) and ``pixels`` (nothing to export)."""
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSL_BENCH_CACHE", str(out / "cache"))
        for name, extra in (("convnet", CONVNET),
                            ("resnet18", ["--backbone", "resnet18", "--image-size", "16"]),
                            ("pixels", ["--task", "pixels"])):
            task = [] if "--task" in extra else ["--task", "rotation"]
            assert main(["run", *task, *extra, *TINY, "--no-step0", "--name", name,
                         "--out", str(out)]) == 0
    return out


def _digits(size: int = 32, n: int = 32) -> torch.Tensor:
    from ssl_bench.datasets import load_dataset

    return load_dataset("digits", image_size=size).test_images[:n].float() / 255  # in [0, 1]


def _normalize(x: torch.Tensor, meta: dict) -> torch.Tensor:
    mean, std = (torch.tensor(meta["input"][k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    return (x - mean) / std


def test_an_exported_resnet18_loads_into_timm_with_the_runs_features(runs, tmp_path):
    import timm
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torch import nn

    out = tmp_path / "r18.safetensors"
    assert main(["export", str(runs / "resnet18"), "-o", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        meta = json.loads(f.metadata()["ssl_bench"])
    assert meta["model"]["small_stem"] and meta["task"] == "rotation" and meta["in_chans"] == 1
    # the README's recipe: plain timm, the small-image stem swapped in, strict loading
    model = timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=1)
    model.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    model.load_state_dict(load_file(out), strict=True)
    task, _ = load_run_task(runs / "resnet18")
    x = _digits(size=16)
    with torch.no_grad():
        features = task.features(x)
        torch.testing.assert_close(model.eval()(_normalize(x, meta)), features, rtol=0, atol=1e-6)
    # --format state_dict: the same tensors and metadata in a torch.save'd dict
    plain = tmp_path / "r18.pt"
    assert main(["export", str(runs / "resnet18"), "-o", str(plain), "--format",
                 "state_dict"]) == 0
    saved = torch.load(plain, weights_only=True)
    assert saved["metadata"] == meta
    model.load_state_dict(saved["state_dict"], strict=True)
    loaded, _ = load_export(plain)
    with torch.no_grad():
        torch.testing.assert_close(loaded(_normalize(x, meta)), features, rtol=0, atol=1e-6)


def test_a_convnet_export_loads_into_its_own_definition(runs, tmp_path):
    from backbones.convnet import ConvNet
    from safetensors.torch import load_file

    out = tmp_path / "convnet.safetensors"
    assert main(["export", str(runs / "convnet"), "-o", str(out)]) == 0
    model, meta = load_export(out)
    assert meta["model"]["kwargs"] == {"in_chans": 1, "img_size": 32, "width": 8}
    plain = ConvNet(in_chans=1, width=8).eval()
    plain.load_state_dict(load_file(out), strict=True)
    task, _ = load_run_task(runs / "convnet")
    x = _digits()
    with torch.no_grad():
        torch.testing.assert_close(plain(_normalize(x, meta)), task.features(x),
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(model(_normalize(x, meta)), task.features(x),
                                   rtol=0, atol=1e-6)


def test_bad_exports_are_one_line_and_write_nothing(runs, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((runs / "convnet" / "config.yaml").read_text())
    for run_dir, message in ((tmp_path / "missing", "is not a run directory"),
                             (unfinished, "is not a finished run"),
                             (runs / "pixels", "not evaluated on one backbone")):
        assert main(["export", str(run_dir), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not out.exists()
    out.write_text("keep")
    assert main(["export", str(runs / "convnet"), "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "keep"
    assert main(["export", str(runs / "convnet"), "-o", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unfinished", "x.safetensors"]


@pytest.mark.parametrize("task, spec", [("split-brain", RGB32), ("pixels", GRAY28)])
def test_tasks_not_evaluated_on_one_backbone_are_refused(task, spec):
    with pytest.raises(IncompatibleError, match=f"task '{task}' is not evaluated on one"):
        evaluated_backbone(build_small_task(task, spec))


def test_init_from_starts_from_the_source_runs_backbone(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    source = runs / "convnet"
    assert main(["run", "--task", "rotation", *CONVNET, *TINY, "--init-from", str(source),
                 "--out", str(out)]) == 0
    (run_dir,) = out.iterdir()
    assert run_dir.name.startswith("rotation-convnet-digits-s0-")  # hashed: another run
    results = json.loads((run_dir / "results.json").read_text())
    # the step-0 evaluation sees the source's trained backbone: same features, same scores
    assert results["step0"]["metrics"] == json.loads((source / "results.json").read_text()
                                                     )["metrics"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["init_from"] == str(source.resolve())
    capsys.readouterr()
    # a backbone of another width: one line naming --init-from, exit 2, nothing written
    assert main(["run", "--task", "rotation", "--backbone-opt", "width=4", *TINY, "--init-from",
                 str(source), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --init-from {source}") and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_peak_memory_is_recorded_and_on_the_leaderboard(runs, tmp_path):
    cost = json.loads((runs / "convnet" / "results.json").read_text())["cost"]
    assert cost["peak_memory_mib"] > 0 and cost["peak_memory_kind"] == "rss"
    old = tmp_path / "old"  # a run written before peak memory was measured
    old.mkdir()
    record = json.loads((runs / "pixels" / "results.json").read_text())
    del record["cost"]["peak_memory_mib"], record["cost"]["peak_memory_kind"]
    (old / "results.json").write_text(json.dumps(record))
    assert main(["leaderboard", str(runs / "convnet"), str(old), "-o",
                 str(tmp_path / "lb.csv")]) == 0
    table = (tmp_path / "lb.md").read_text().splitlines()
    assert "peak memory (MiB)" in table[0]
    column = [c.strip() for c in table[0].split("|")].index("peak memory (MiB)")
    cells = sorted(row.split("|")[column].strip() for row in table[2:4])
    assert cells == [f"{cost['peak_memory_mib']:.0f}", "–"]


@pytest.mark.parametrize("platform, mib", [("linux", 2048.0), ("darwin", 2.0)])
def test_peak_rss_is_kilobytes_on_linux_and_bytes_on_macos(monkeypatch, platform, mib):
    import resource
    from types import SimpleNamespace

    from ssl_bench.core import memory

    monkeypatch.setattr(memory.sys, "platform", platform)
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=2 << 20))
    assert memory.peak_memory(torch.device("cpu")) == {"peak_memory_mib": mib,
                                                       "peak_memory_kind": "rss"}
