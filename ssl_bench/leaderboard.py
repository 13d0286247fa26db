"""The leaderboard: one row per finished run, from ``runs/*/results.json``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ssl_bench.errors import DataError
from ssl_bench.rundir import RESULTS, atomic_path, atomic_write_text, read_json

# (column, path into results.json); the order is the table's.
COLUMNS = [
    ("task", ("task",)), ("backbone", ("backbone",)), ("dataset", ("dataset",)),
    ("epochs", ("epochs",)), ("images_seen", ("images_seen",)),
    ("eval_train_images", ("eval_train_images",)), ("seed", ("seed",)),
    ("knn_top1_k20", ("metrics", "knn_top1_k20")), ("knn_top5_k20", ("metrics", "knn_top5_k20")),
    ("knn_top1_k200", ("metrics", "knn_top1_k200")), ("knn_top5_k200", ("metrics", "knn_top5_k200")),
    ("linear_top1", ("metrics", "linear_top1")), ("linear_top5", ("metrics", "linear_top5")),
    ("backbone_params", ("cost", "backbone_params")), ("task_params", ("cost", "task_params")),
    ("train_seconds", ("cost", "train_seconds")),
    ("train_images_per_s", ("cost", "train_images_per_s")),
]


def find_results(paths: list[str | Path]) -> list[Path]:
    """``results.json`` files of the given run directories, or of the runs inside
    the given parent folders, sorted.

    Raises:
        DataError: if a path does not exist or no finished run is found.
    """
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise DataError(f"run directory {p} does not exist")
        found.update([p / RESULTS] if (p / RESULTS).exists() else p.glob(f"*/{RESULTS}"))
    if not found:
        raise DataError(f"no finished runs ({RESULTS}) in {', '.join(map(str, paths))}")
    return sorted(found)


def _get(record: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return record


def leaderboard_frame(paths: list[str | Path]) -> pd.DataFrame:
    """One row per run: the :data:`COLUMNS`, then held-out pretext metrics
    (``pretext_*``), then the command. Sorted by dataset, backbone, k-NN top-1 (desc).
    Accuracies are in %, seconds are wall-clock, images/s over the training loop."""
    rows = []
    for path in find_results(paths):
        record = read_json(path)
        row = {name: _get(record, keys) for name, keys in COLUMNS}
        row.update({k if k.startswith("pretext_") else f"pretext_{k}": v
                    for k, v in (record.get("pretext") or {}).items()})
        row["run"] = path.parent.name
        row["command"] = record.get("command", "")
        rows.append(row)
    frame = pd.DataFrame(rows)
    tail = ["run", "command"]
    frame = frame[[c for c in frame.columns if c not in tail] + tail]
    return frame.sort_values(["dataset", "backbone", "knn_top1_k20", "task"],
                             ascending=[True, True, False, True], na_position="last",
                             ignore_index=True)


def write_leaderboard(paths: list[str | Path], csv_path: str | Path) -> pd.DataFrame:
    """Write the leaderboard as CSV to ``csv_path`` and as a Markdown table beside it
    (same name, ``.md``), both atomically. Returns the frame."""
    frame = leaderboard_frame(paths)
    csv_path = Path(csv_path)
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.2f")
    shown = frame.drop(columns=["command"])
    atomic_write_text(csv_path.with_suffix(".md"),
                      shown.to_markdown(index=False, floatfmt=".2f") + "\n\nCommands: see "
                      f"`{csv_path.name}` (column `command`).\n")
    return frame
