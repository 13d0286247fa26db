"""What a run prints: the summary table at the end (step 0 / final / gain, the
pretext score against chance, the cost, the run folder, the next commands), the
evaluation's progress lines in a log, cost lines, and one error line under torchrun."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import signal
from pathlib import Path

import pytest
from test_bad_input import FAST

from eval import progress
from ssl_bench import distributed
from ssl_bench.cli import main
from ssl_bench.summary import per_second, run_summary

# a trained run with its step-0 reference at the smallest cost that keeps every kind of
# row: k-NN and linear probe with all labels and with 10% of them, per-layer probes
TINY = ["--task", "denoising", "--epochs", "1", "--train-subset", "128", "--batch-size", "64",
        "--backbone-opt", "width=8", "--eval-train-subset", "200", "--test-subset", "100",
        "--lowshot", "10", "--layer-dims", "64", "--pretext-eval-images", "64"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))


def _row(out: str, label: str) -> list[str]:
    """The cells right of ``label`` in the summary table of ``out``."""
    (line,) = [line for line in out.splitlines() if line.strip().startswith(label)]
    return line.strip()[len(label):].split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[dict, Path, str, str]:
    """results.json, run folder, stdout and stderr of a tiny trained run (captured by
    hand: capsys serves one test only)."""
    out = tmp_path_factory.mktemp("runs")
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout), \
            contextlib.redirect_stderr(stderr):
        patch.setenv("SSL_BENCH_CACHE", str(out.parent / "cache"))
        assert main(["run", *TINY, "--name", "tiny", "--out", str(out)]) == 0
    run = out / "tiny"
    return json.loads((run / "results.json").read_text()), run, stdout.getvalue(), \
        stderr.getvalue()


def test_summary_shows_step0_final_gain_and_where_the_run_is(tiny):
    results, run, out, _ = tiny
    assert _row(out, "metric") == ["step", "0", "final", "gain,", "points", "(relative)"]
    for key, label in [("knn_top1_k20", "k-NN top-1 (k=20), %"),
                       ("linear_top1", "linear probe top-1, %"),
                       ("linear_top1_10pct", "linear probe top-1, 10% labels, %"),
                       ("knn_top1_k20_10pct", "k-NN top-1 (k=20), 10% labels, %")]:
        before, after = results["step0"]["metrics"][key], results["metrics"][key]
        cells = _row(out, label)
        assert cells[:3] == [f"{before:.2f}", f"{after:.2f}", f"{after - before:+.2f}"], label
    layer = " ".join(_row(out, "best layer linear top-1, %")).split(") ", 1)  # (stage2) 84.00 …
    assert layer[1].split()[:2] == [
        f"{results['step0']['metrics']['layer_best_linear_top1']:.2f}",
        f"{results['metrics']['layer_best_linear_top1']:.2f}"]
    assert results["layer_best"] in layer[0]
    assert _row(out, "pretext PSNR, dB")[1] == f"{results['pretext']['psnr_db']:.2f}"
    assert "Gain over step 0" in out and "images/s" in out
    assert f"run folder: {run}" in out
    assert f"ssl-bench leaderboard {run.parent}" in out and f"ssl-bench report {run.parent}" in out
    assert "knn_top5_k20" not in out  # the full key list stays in results.json


def test_evaluation_prints_progress_lines_in_a_log(tiny):
    *_, err = tiny  # stderr was a StringIO: not a terminal
    for phase in ("eval train features: 200 images in", "eval test features: 100 images in",
                  "eval knn, all labels: done in", "eval linear, 10% labels: done in",
                  "eval linear probe per layer: 4 layers in"):
        assert err.count(phase) == 2, phase  # step 0 and final


def test_untrained_reference_says_no_training(capsys, tmp_path):
    assert main(["run", "--task", "random-init", *FAST, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "untrained reference" in out and "no training" in out and "images/s" not in out
    assert _row(out, "metric") == ["final"]


def _results(**changes) -> dict:
    """A results.json record of a trained jigsaw run with step 0, k-NN and linear probe."""
    metrics = {"knn_top1_k20": 91.11, "knn_top1_k200": 90.0, "knn_top5_k20": 99.0,
               "linear_top1": 96.22, "linear_l2": 0.01}
    record = {"task": "jigsaw", "backbone": "convnet", "dataset": "digits", "seed": 0,
              "epochs": 5, "steps": 50, "images_seen": 6400, "metrics": metrics,
              "pretext": {"loss": 1.2, "top1": 86.0}, "pretext_chance": {"top1": 100 / 12},
              "layer_best": None, "lowshot_labels": {},
              "step0": {"metrics": {**metrics, "knn_top1_k20": 93.11, "linear_top1": 96.44},
                        "pretext": {"loss": 2.5, "top1": 8.0}, "layer_best": None},
              "cost": {"train_seconds": 12.0, "train_images_per_s": 533.3, "eval_seconds": 4.0,
                       "step0_eval_seconds": 3.9, "backbone_params": 1000}}
    record.update(changes)
    return record


@pytest.mark.parametrize("changes, columns, shown, hidden", [
    ({}, ["step 0", "final", "gain"],
     ["93.11 91.11 -2.00 (-2.1%)", "96.44 96.22 -0.22 (-0.2%)",
      "pretext top-1, % (chance 8.33) 8.00 86.00 +78.00",
      "k-NN top-1 (k=20) fell by 2.00 points, linear probe top-1 fell by 0.22 points"],
     ["k=200", "linear_l2", "pretext loss"]),
    ({"step0": None}, ["final"], ["No step-0 reference", "91.11"], ["Gain over"]),
    ({"steps": 0, "epochs": 0, "pretext": {}, "pretext_chance": {}}, ["final"],
     ["untrained reference", "no training"], ["images/s", "pretext"]),
    ({"metrics": {"knn_top1_k20": 91.11}}, ["step 0", "final", "gain"],
     ["k-NN top-1 (k=20), %"], ["linear probe"]),
    ({"metrics": {"linear_top1": 96.22, "linear_top1_10pct": 80.0},
      "lowshot_labels": {"10pct": 135}}, ["step 0", "final", "gain"],
     ["linear probe top-1, 10% labels, % – 80.00 –", "linear probe top-1 fell by 0.22"],
     ["k-NN"]),
    ({"cost": {"train_seconds": 15190.0, "train_images_per_s": 0.4, "eval_seconds": 4.0,
               "step0_eval_seconds": 3.9, "backbone_params": 1000}}, ["step 0", "final", "gain"],
     ["at 0.421 images/s"], []),
    ({"images_seen": 64, "cost": {"train_seconds": 1600.0, "train_images_per_s": 0.0,
                                  "eval_seconds": 4.0, "step0_eval_seconds": 3.9,
                                  "backbone_params": 1000}}, ["step 0", "final", "gain"],
     ["at 0.04 images/s"], ["at 0 images/s"]),
])
def test_summary_of_each_kind_of_run(changes, columns, shown, hidden):
    text = run_summary(_results(**copy.deepcopy(changes)), Path("runs") / "jigsaw-convnet")
    header = text.splitlines()[2]
    assert [c for c in ("step 0", "final", "gain") if c in header] == columns
    text = " ".join(text.split())  # the table's alignment and the wrapped sentences aside
    for part in shown:
        assert part in text, (part, text)
    for part in hidden:
        assert part not in text, (part, text)
    assert "run folder: runs/jigsaw-convnet" in text
    assert "ssl-bench report runs -o runs/report" in text


@pytest.mark.parametrize("rate, text", [(0.4213, "0.421"), (127.04, "127"), (5.25, "5.25"),
                                        (12345.6, "12,346")])
def test_rates_keep_significant_digits(rate, text):
    assert per_second(rate) == text


def test_a_long_phase_prints_lines_while_it_runs_and_none_when_it_fails(capsys, monkeypatch):
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)  # every update is "10 s later"
    with progress.phase("train features", 3, "images") as counter:
        counter.update(1)
        counter.update(2)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("eval train features: 1/3 images, ")
    assert lines[-1].startswith("eval train features: 3 images in ") and len(lines) == 2
    with pytest.raises(ValueError), progress.phase("k-NN"):
        raise ValueError
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("rank, status, line", [
    ("0", 2, "error: bad input"),
    ("1", 2, "error: rank 1: bad input"),  # rank 0 did not report it: this rank's own error
    ("1", 130, None),  # an interruption: rank 0 reports it for every rank
])
def test_failure_under_a_launcher_is_reported_once(capsys, monkeypatch, rank, status, line):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(distributed, "PEER_WAIT_S", 0.0)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert distributed.report_failure("bad input", status) == status
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err.splitlines()
    assert err == ([line] if line else [])
