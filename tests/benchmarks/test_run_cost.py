"""Where a run's wall time goes: pretraining against evaluation (pytest-benchmark).

Run with ``python -m pytest tests/benchmarks/test_run_cost.py --benchmark-enable``.
Each benchmark is one whole ``ssl-bench run`` in this process, timed once: the quick
start (jigsaw on digits at the default settings) and one rotation run at the CIFAR-10
comparison's budget (read from ``results/sweep.sh``; skipped without the real data).
``extra_info`` records the pretraining seconds, the evaluation seconds (step-0
reference and final, each with feature extraction, held-out pretext metrics and
every probe) and ``eval_fraction`` = evaluation / wall time (goal: ≤ 0.2). Without
``--benchmark-enable`` each runs once on fewer images as a smoke test.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

from conftest import CIFAR10_ROOT, needs_cifar10
from ssl_bench.cli import main

SWEEP_SCRIPT = Path(__file__).parents[2] / "results" / "sweep.sh"


def sweep_budget() -> list[str]:
    """``run`` options of the sweep's budget: its ``BUDGET`` line (``--datasets`` becomes
    ``--dataset``, ``$DATA`` the real CIFAR-10 copy) and the evaluation options of its
    ``SWEEP`` line (``--lowshot``, ``--no-layer-probes``)."""
    script = SWEEP_SCRIPT.read_text().replace("\\\n", " ")
    budget, sweep = (shlex.split(re.search(rf'^{name}="([^"]*)"', script, re.M).group(1))
                     for name in ("BUDGET", "SWEEP"))
    budget = [{"--datasets": "--dataset", "$DATA": str(CIFAR10_ROOT)}.get(a, a) for a in budget]
    return budget + [a for a in sweep if a in ("--lowshot", "--no-layer-probes")]


def _run_cost(benchmark, tmp_path, argv: list[str], smoke: list[str]) -> None:
    smoke = smoke if benchmark.disabled else []  # later flags win
    out = tmp_path / "runs"
    wall = {}

    def run() -> None:
        start = time.perf_counter()
        assert main(["run", *argv, *smoke, "--out", str(out), "--overwrite"]) == 0
        wall["seconds"] = time.perf_counter() - start

    benchmark.pedantic(run, rounds=1, iterations=1)
    (results,) = [json.loads(p.read_text()) for p in out.glob("*/results.json")]
    cost = results["cost"]
    evaluation = cost["eval_seconds"] + cost["step0_eval_seconds"]
    benchmark.extra_info.update(
        command="ssl-bench run " + " ".join(argv + smoke), wall_seconds=wall["seconds"],
        train_seconds=cost["train_seconds"], eval_seconds=evaluation,
        eval_fraction=evaluation / wall["seconds"], precision=cost["precision"])


def test_quick_start(benchmark, tmp_path):
    _run_cost(benchmark, tmp_path, ["--task", "jigsaw"], ["--epochs", "1"])


@needs_cifar10
def test_cifar10_comparison_budget(benchmark, tmp_path):
    _run_cost(benchmark, tmp_path, ["--task", "rotation", *sweep_budget()],
              ["--train-subset", "512", "--eval-train-subset", "1000", "--test-subset", "500"])
