"""The command line: end-to-end runs and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

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
    (["run", "--task", "random-init", "--device", "tpu"], "--device must be"),
    (["run", "--task", "random-init", "--evaluators", "svm"], "unknown evaluator 'svm'"),
    (["leaderboard", "/nonexistent/runs"], "does not exist"),
])
def test_bad_input_is_one_clear_line(capsys, tmp_path, argv, expected):
    err = _error(capsys, [*argv, *(["--out", str(tmp_path)] if argv[0] == "run" else [])])
    assert expected in err


def test_random_init_run_then_leaderboard(capsys, tmp_path):
    out = tmp_path / "runs"
    assert main(["run", "--task", "random-init", "--dataset", "digits", "--out", str(out)]) == 0
    run = out / "random-init-convnet-digits-s0"
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 0 and results["command"].startswith("ssl-bench run --task random-init")
    assert results["metrics"]["knn_top1_k20"] > 50  # random conv features beat 10% chance on digits
    assert {"config.yaml", "results.json"} <= {p.name for p in run.iterdir()}

    # a finished run is never overwritten by accident
    assert "exists (finished)" in _error(capsys, ["run", "--task", "random-init", "--out", str(out)])
    assert main(["run", "--task", "random-init", "--out", str(out), "--resume"]) == 0

    csv = tmp_path / "lb.csv"
    assert main(["leaderboard", str(out), "-o", str(csv)]) == 0
    assert "random-init" in csv.read_text()


def test_denoising_run_writes_every_file(tmp_path):
    out = tmp_path / "runs"
    argv = ["run", "--task", "denoising", "--epochs", "1", "--train-subset", "256",
            "--batch-size", "64", "--out", str(out), "--evaluators", "knn"]
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


def test_list_shows_every_kind(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("tasks:", "jigsaw", "denoising", "random-init", "backbones:", "timm:<name>",
                 "datasets:", "imagefolder:<path>", "evaluators:", "knn", "linear"):
        assert word in out
