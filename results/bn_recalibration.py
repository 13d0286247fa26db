"""Table of the BatchNorm re-estimation effect (``ssl-bench evaluate --bn-recalibrate``).

Usage: ``python results/bn_recalibration.py RUNS_DIR BN_DIR > results/bn-recalibration.md``
where BN_DIR holds ``<run name>.json`` written by
``ssl-bench evaluate RUNS_DIR/<run name> --bn-recalibrate -o BN_DIR/<run name>.json``.

Per configuration: the linear probe's **validation** top-1 of the run and of the
re-estimated evaluation (means over seeds; the same validation images for both, a split
of the labelled train images seeded by the run's seed), and their paired difference
with the half-width of its 95% Student-t interval over seeds; ``*`` marks a difference
whose interval excludes 0. The decision whether to switch the option on is a choice, so
it reads validation only: test top-1 is not printed. (k-NN has no validation split.)
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

METRICS = {"linear_val_top1": "linear, validation"}


def row_label(results: dict) -> str:
    """Task name, plus the options the sweep set by hand (``--set``) in brackets."""
    options = results["config"]["task_options"]
    adversarial = options.get("adversarial", True)
    return results["task"] + ("" if adversarial else " (adversarial=false)")


def paired(differences: list[float]) -> str:
    """``mean ± 95% half-width`` of paired differences (``*`` if the interval excludes 0)."""
    d = np.asarray(differences)
    if len(d) < 2:
        return f"{d.mean():+.1f}"
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return f"{d.mean():+.1f} ± {half:.1f}{' *' if abs(d.mean()) > half else ''}"


def main(runs_dir: str, bn_dir: str) -> None:
    pairs: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    for path in sorted(Path(bn_dir).glob("*.json")):
        results = json.loads((Path(runs_dir) / path.stem / "results.json").read_text())
        pairs[row_label(results)].append((results["metrics"],
                                          json.loads(path.read_text())["metrics"]))
    header = ["row (convnet)", "n"]
    for name in METRICS.values():
        header += [f"{name}: run → BN re-estimated", f"{name}: difference"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, seeds in sorted(pairs.items()):
        cells = [label, str(len(seeds))]
        for key in METRICS:
            before = [run[key] for run, _ in seeds]
            after = [bn[key] for _, bn in seeds]
            cells += [f"{np.mean(before):.1f} → {np.mean(after):.1f}",
                      paired([b - a for a, b in zip(before, after)])]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
