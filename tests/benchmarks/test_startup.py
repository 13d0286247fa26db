"""Start-up time of the ``ssl-bench`` command (pytest-benchmark).

Run with ``python -m pytest tests/benchmarks --benchmark-enable``. Each round runs
``ssl-bench --help`` or ``ssl-bench list`` in a fresh interpreter, as a user would, and
waits for it to exit; ``extra_info["seconds"]`` is the mean wall time of a round. The
goals: ``--help`` at most 1.5 s (it imports nothing heavy), ``list`` at most 5 s on a
quiet 2-core machine (it imports every registered module, torch included). Without ``--benchmark-enable``
each command runs once as a smoke test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# the console script next to this interpreter (a virtual environment's bin/), else -m
SCRIPT = shutil.which("ssl-bench", path=str(Path(sys.executable).parent))
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "ssl_bench.cli"]


@pytest.mark.parametrize("argv, expected", [(["--help"], "usage: ssl-bench"),
                                            (["list"], "evaluators:")],
                         ids=["help", "list"])
def test_command_startup(benchmark, argv, expected):
    def run() -> subprocess.CompletedProcess:
        return subprocess.run([*COMMAND, *argv], capture_output=True, text=True)

    result = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    benchmark.extra_info.update(command=" ".join(["ssl-bench", *argv]), goal_seconds=1.5)
    if benchmark.stats is not None:  # None when benchmarks are disabled
        benchmark.extra_info["seconds"] = benchmark.stats.stats.mean
