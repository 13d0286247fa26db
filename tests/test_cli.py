"""The command line: end-to-end runs and one-line errors for bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from ssl_bench.cli import main


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, expected", [
    (["run", "--task", "sudoku"], "unknown task 'sudoku' for --task; valid:"),
    (["run", "--task", "random-init", "--backbone", "alexnet"], "unknown backbone 'alexnet'"),
    (["run", "--task", "random-init", "--backbone", "timm:not_a_model"], "timm has no model"),
    (["run", "--task", "random-init", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["run", "--task", "random-init", "--dataset", "imagefolder:/nonexistent/x"], "does not exist"),
    (["run", "--task", "jigsaw", "--set", "colour=blue"], "unknown task option 'colour'"),
    (["run", "--task", "jigsaw", "--set", "num_permutations"], "--set takes KEY=VALUE"),
    (["run", "--task", "random-init", "--backbone-opt", "depth=3"], "valid --backbone-opt keys"),
    (["run", "--task", "mae", "--backbone", "convnet"], "needs a VIT backbone"),
    (["run", "--task", "random-init", "--epochs", "-1"], "--epochs must be at least 0"),
    (["run", "--task", "random-init", "--device", "tpu"], "argument --device: invalid"),
    (["run", "--task", "random-init", "--evaluators", "svm"], "unknown evaluator 'svm'"),
    (["leaderboard", "/nonexistent/runs"], "does not exist"),
    (["run", "--task", "random-init", "--lowshot", "150"], "--lowshot 150 is not valid"),
    (["run", "--task", "random-init", "--eval-train-subset", "100"],
     "--lowshot 10 needs 135 labelled images"),
    (["run", "--task", "random-init", "--test-subset", "99999"], "--test-subset must give"),
])
def test_bad_input_is_one_clear_line(capsys, tmp_path, argv, expected):
    err = _error(capsys, [*argv, *(["--out", str(tmp_path)] if argv[0] == "run" else [])])
    assert expected in err


def test_random_init_run_then_leaderboard(capsys, tmp_path):
    out = tmp_path / "runs"
    # the default protocol (per-layer probes, low-shot) at narrow layer features, for speed
    fast = ["--layer-dims", "256"]
    assert main(["run", "--task", "random-init", "--dataset", "digits", "--out", str(out),
                 *fast]) == 0
    (run,) = out.iterdir()
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 0
    assert results["command"].startswith("ssl-bench run --task random-init")
    assert results["metrics"]["knn_top1_k20"] > 50  # random conv features beat 10% chance on digits
    assert {"config.yaml", "results.json"} <= {p.name for p in run.iterdir()}
    # per-layer probes and 10% low-shot (1% of digits is too few labels)
    assert [layer["name"] for layer in results["layers"]] == ["stage1", "stage2", "stage3",
                                                              "stage4"]
    assert results["layer_best"] in {"stage1", "stage2", "stage3", "stage4"}
    assert results["lowshot_labels"] == {"10pct": 135}
    assert results["metrics"]["linear_top1_10pct"] > 50

    capsys.readouterr()  # the run's own progress lines
    # a finished run is never overwritten by accident
    assert "exists (finished)" in _error(capsys, ["run", "--task", "random-init", "--out", str(out),
                                                  *fast])
    assert main(["run", "--task", "random-init", "--out", str(out), "--resume", *fast]) == 0

    csv = tmp_path / "lb.csv"
    assert main(["leaderboard", str(out), "-o", str(csv)]) == 0
    assert "random-init" in csv.read_text()


def test_denoising_run_writes_every_file(tmp_path):
    out = tmp_path / "runs"
    argv = ["run", "--task", "denoising", "--epochs", "1", "--train-subset", "256",
            "--batch-size", "64", "--out", str(out), "--evaluators", "knn", "--no-layer-probes"]
    assert main(argv) == 0
    (run,) = out.iterdir()
    assert run.name.startswith("denoising-convnet-digits-s0-")  # non-default budget → hashed name
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "checkpoint.pt", "results.json", "denoising.png",
            "loss_curve.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    results = json.loads((run / "results.json").read_text())
    assert results["images_seen"] == 4 * 64 and results["cost"]["train_images_per_s"] > 0
    assert "psnr_db" in results["pretext"]
    assert results["layers"] == [] and results["layer_best"] is None
    sample = torch.load(run / results["feature_sample"], weights_only=False)
    assert sample["features"].shape == (results["test_images"], 256)
    assert sample["labels"].shape == (results["test_images"],)


def test_list_shows_every_kind(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("tasks:", "jigsaw", "denoising", "random-init", "backbones:", "timm:<name>",
                 "datasets:", "imagefolder:<path>", "evaluators:", "knn", "linear"):
        assert word in out


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_is_recorded_and_trains(tmp_path, precision):
    out = tmp_path / "runs"
    argv = ["run", "--task", "denoising", "--epochs", "1", "--train-subset", "512",
            "--batch-size", "32", "--warmup-epochs", "0", "--out", str(out), "--evaluators",
            "knn", "--no-layer-probes", "--precision", precision]
    assert main(argv) == 0
    (run,) = out.iterdir()
    config = yaml.safe_load((run / "config.yaml").read_text())
    results = json.loads((run / "results.json").read_text())
    assert config["precision"] == precision and config["precision_resolved"] == precision
    assert results["cost"]["precision"] == precision
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in metrics]
    assert all(math.isfinite(loss) for loss in losses)
    assert results["pretext"]["psnr_db"] > results["step0"]["pretext"]["psnr_db"]
