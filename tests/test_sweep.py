"""``ssl-bench sweep``: skips finished runs, resumes interrupted ones, survives failures."""

from __future__ import annotations

import json
import signal

import pytest

from ssl_bench.cli import main
from ssl_bench.config import RunConfig, run_name
from ssl_bench.runner import run_experiment
from ssl_bench.sweep import ERROR_FILE, Sweep
from ssl_bench.core.errors import Interrupted

TINY = ["--datasets", "digits", "--epochs", "2", "--train-subset", "64", "--batch-size", "32",
        "--eval-train-subset", "200", "--test-subset", "100", "--lowshot", "--no-layer-probes",
        "--evaluators", "knn", "--pretext-eval-images", "64"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))


def _config(tmp_path, task, seed=0):
    return RunConfig(task=task, dataset="digits", epochs=2, train_subset=64, batch_size=32,
                     eval_train_subset=200, test_subset=100, lowshot=[], layer_probes=False,
                     evaluators=["knn"], pretext_eval_images=64, seed=seed,
                     out=str(tmp_path / "runs"))


def test_interrupted_sweep_resumes_without_redoing_finished_runs(tmp_path, monkeypatch):
    configs = [_config(tmp_path, "random-init"), _config(tmp_path, "denoising")]
    calls: list[tuple[str, bool]] = []

    def run_and_interrupt_denoising(config):
        calls.append((config.task, config.resume))
        if config.task == "denoising" and not config.resume:
            from tasks.denoising import Denoising
            original = Denoising.training_step

            def step_then_ctrl_c(self, images, optimizers):
                signal.raise_signal(signal.SIGINT)  # Ctrl-C during the first step
                return original(self, images, optimizers)

            monkeypatch.setattr(Denoising, "training_step", step_then_ctrl_c)
        return run_experiment(config)

    with pytest.raises(Interrupted):
        Sweep(configs, run=run_and_interrupt_denoising, log=lambda _: None).run()
    finished = tmp_path / "runs" / run_name(configs[0]) / "results.json"
    interrupted = tmp_path / "runs" / run_name(configs[1])
    assert finished.exists() and not (interrupted / "results.json").exists()
    assert (interrupted / "checkpoint.pt").exists()
    first_result = finished.read_text()

    monkeypatch.undo()
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))
    calls.clear()
    outcome = Sweep(configs, run=run_and_interrupt_denoising, log=lambda _: None).run()
    assert calls == [("denoising", True)], "the finished run was redone"
    assert outcome.skipped == [run_name(configs[0])]
    assert outcome.finished == outcome.resumed == [run_name(configs[1])]
    assert finished.read_text() == first_result
    results = json.loads((interrupted / "results.json").read_text())
    assert results["steps"] == 4  # 2 epochs × 2 steps: the resumed run finished its budget


def test_sweep_continues_past_failures_and_reports_them(tmp_path):
    configs = [_config(tmp_path, "random-init", seed) for seed in (0, 1, 2)]
    lines: list[str] = []

    def fail_seed_1(config):
        if config.seed == 1:
            (tmp_path / "runs" / run_name(config)).mkdir(parents=True)
            raise RuntimeError("out of memory")
        return {"ok": True}

    outcome = Sweep(configs, run=fail_seed_1, log=lines.append).run()
    names = [run_name(c) for c in configs]
    assert outcome.finished == [names[0], names[2]]
    assert outcome.failed == [(names[1], "RuntimeError: out of memory")]
    assert "out of memory" in (tmp_path / "runs" / names[1] / ERROR_FILE).read_text()
    assert "1 failed" in lines[-1] and "FAILED" in lines[-1]


def test_sweep_cli_skips_incompatible_pairs(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["sweep", "--tasks", "random-init", "mae", "--seeds", "0", "1",
                 "--out", str(out), *TINY]) == 0
    err = capsys.readouterr().err
    assert "2 finished" in err and "2 incompatible" in err and "needs a VIT backbone" in err
    names = sorted(p.name.split("-s")[0] for p in out.iterdir())
    assert names == ["random-init-convnet-digits"] * 2
