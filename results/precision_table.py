"""Table of fp32 against bf16 pretraining (``--precision``), one seed per task.

Usage: ``python results/precision_table.py RUNS_DIR > results/precision.md`` where
RUNS_DIR holds the runs of ``results/precision.sh``: every task once with
``--precision fp32`` and once with ``--precision bf16``, all else equal.

Per task: k-NN (k = 20) and linear-probe test top-1 (%) and the held-out pretext
metric in each precision, and the pretraining throughput (images/s) with its bf16/fp32
ratio. One seed: differences of about ±2 points are within seed noise at this budget
(see results/README.md for the 3-seed intervals).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

METRICS = {"knn_top1_k20": "k-NN k=20", "linear_top1": "linear"}


def main(runs_dir: str) -> None:
    runs: dict[str, dict[str, dict]] = defaultdict(dict)
    for path in sorted(Path(runs_dir).glob("*/results.json")):
        results = json.loads(path.read_text())
        runs[f"{results['task']} ({results['backbone']})"][results["cost"]["precision"]] = results
    header = ["task (backbone)"] + [f"{name}: fp32 → bf16" for name in METRICS.values()]
    header += ["held-out pretext: fp32 → bf16", "images/s: fp32 → bf16 (ratio)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, pair in sorted(runs.items()):
        if set(pair) != {"fp32", "bf16"}:
            continue
        fp32, bf16 = pair["fp32"], pair["bf16"]
        cells = [label] + [f"{fp32['metrics'][k]:.1f} → {bf16['metrics'][k]:.1f}" for k in METRICS]
        # the first held-out metric that is not the loss (top1, psnr_db, …), else the loss
        name = next((k for k in fp32["pretext"] if k != "loss"), next(iter(fp32["pretext"]), None))
        cells.append("–" if name is None else
                     f"{name} {fp32['pretext'][name]:.3g} → {bf16['pretext'][name]:.3g}")
        speed = [r["cost"]["train_images_per_s"] for r in (fp32, bf16)]
        cells.append(f"{speed[0]:.0f} → {speed[1]:.0f} ({speed[1] / speed[0]:.2f}×)")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
