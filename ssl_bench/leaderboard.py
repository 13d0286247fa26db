"""The leaderboard: one row per finished run from ``runs/*/results.json``, and one
row per configuration with the mean, spread and confidence interval over its seeds."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ssl_bench.errors import DataError, OptionError
from ssl_bench.rundir import RESULTS, atomic_path, atomic_write_text, read_json

# (column, path into results.json); the order is the per-run table's.
COLUMNS = [
    ("task", ("task",)), ("backbone", ("backbone",)), ("dataset", ("dataset",)), ("seed", ("seed",)),
    ("epochs", ("epochs",)), ("batch_size", ("batch_size",)), ("images_seen", ("images_seen",)),
    ("steps", ("steps",)), ("pretrain_images", ("pretrain_images",)),
    ("eval_train_images", ("eval_train_images",)), ("test_images", ("test_images",)),
    ("knn_top1_k20", ("metrics", "knn_top1_k20")), ("knn_top5_k20", ("metrics", "knn_top5_k20")),
    ("knn_top1_k200", ("metrics", "knn_top1_k200")), ("knn_top5_k200", ("metrics", "knn_top5_k200")),
    ("linear_top1", ("metrics", "linear_top1")), ("linear_top5", ("metrics", "linear_top5")),
    ("linear_val_top1", ("metrics", "linear_val_top1")),
    ("knn_top1_k20_1pct", ("metrics", "knn_top1_k20_1pct")),
    ("linear_top1_1pct", ("metrics", "linear_top1_1pct")),
    ("knn_top1_k20_10pct", ("metrics", "knn_top1_k20_10pct")),
    ("linear_top1_10pct", ("metrics", "linear_top1_10pct")),
    ("layer_best", ("layer_best",)),
    ("layer_best_linear_top1", ("metrics", "layer_best_linear_top1")),
    ("layer_last_linear_top1", ("metrics", "layer_last_linear_top1")),
    ("backbone_params", ("cost", "backbone_params")), ("task_params", ("cost", "task_params")),
    ("backbone_gflops_per_image", ("cost", "backbone_gflops_per_image")),
    ("train_seconds", ("cost", "train_seconds")),
    ("train_images_per_s", ("cost", "train_images_per_s")),
    ("eval_seconds", ("cost", "eval_seconds")),
]
# A configuration: the run without its seed (the run name with ``-s<seed>`` removed).
GROUP = ["task", "backbone", "dataset", "config"]
# Settings every seed of a configuration shares; the aggregate keeps the first run's.
SETTINGS = ["epochs", "batch_size", "images_seen", "steps", "pretrain_images",
            "eval_train_images", "test_images", "backbone_params", "task_params",
            "backbone_gflops_per_image"]
# Measured per run and aggregated over seeds (plus every ``pretext_*`` column).
METRICS = ["knn_top1_k20", "knn_top5_k20", "knn_top1_k200", "knn_top5_k200", "linear_top1",
           "linear_top5", "linear_val_top1", "knn_top1_k20_1pct", "linear_top1_1pct",
           "knn_top1_k20_10pct", "linear_top1_10pct", "layer_best_linear_top1",
           "layer_last_linear_top1", "train_seconds", "train_images_per_s", "eval_seconds"]
# The readable Markdown table: (metric, header, decimals).
MAIN = [("knn_top1_k20", "k-NN top-1 (%)", 1), ("linear_top1", "linear top-1 (%)", 1),
        ("linear_top1_1pct", "linear top-1, 1% labels (%)", 1),
        ("linear_top1_10pct", "linear top-1, 10% labels (%)", 1),
        ("layer_best_linear_top1", "best layer, linear top-1 (%)", 1),
        ("train_seconds", "train (s)", 0)]


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


def config_name(run_name: str) -> str:
    """The configuration a run belongs to: its directory name
    ``<task>-<backbone>-<dataset>-s<seed>[-<8 hex hash>]`` without ``-s<seed>``
    (a name in another form is its own configuration)."""
    return re.sub(r"-s\d+(?=(-[0-9a-f]{8})?$)", "", run_name, count=1)


def leaderboard_frame(paths: list[str | Path]) -> pd.DataFrame:
    """One row per run: the :data:`COLUMNS`, then held-out pretext metrics
    (``pretext_*``), then ``config`` (see :func:`config_name`), ``run`` (directory
    name) and ``command``. Sorted by dataset, backbone, k-NN top-1 (desc).
    Accuracies are in %, seconds are wall-clock, images/s over the training loop;
    a metric the run did not record is NaN/None.

    Raises:
        DataError: as :func:`find_results`.
    """
    rows = []
    for path in find_results(paths):
        record = read_json(path)
        row = {name: _get(record, keys) for name, keys in COLUMNS}
        row.update({k if k.startswith("pretext_") else f"pretext_{k}": v
                    for k, v in (record.get("pretext") or {}).items()})
        row["config"] = config_name(path.parent.name)
        row["run"] = path.parent.name
        row["command"] = record.get("command", "")
        rows.append(row)
    frame = pd.DataFrame(rows)
    tail = ["config", "run", "command"]
    frame = frame[[c for c in frame.columns if c not in tail] + tail]
    return frame.sort_values(["dataset", "backbone", "knn_top1_k20", "task", "seed"],
                             ascending=[True, True, False, True, True], na_position="last",
                             ignore_index=True)


def confidence_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean of ``values`` (NaN/None ignored):
    mean ± t_{(1+level)/2, n-1} · s/√n, with s the sample standard deviation (ddof 1).

    Returns:
        ``(low, high)`` in the values' unit; ``(nan, nan)`` with fewer than 2 values.

    Raises:
        OptionError: if ``level`` is not strictly between 0 and 1.
    """
    if not 0 < level < 1:
        raise OptionError(f"confidence level must be between 0 and 1 (e.g. 0.95), got {level}")
    x = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").dropna().to_numpy(float)
    if len(x) < 2:
        return math.nan, math.nan
    half = stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of a per-run frame that :func:`aggregate_seeds` aggregates."""
    return [c for c in METRICS if c in frame] + [c for c in frame if c.startswith("pretext_")]


def aggregate_seeds(frame: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """One row per configuration (:data:`GROUP`) of a :func:`leaderboard_frame`:
    the group columns, ``n`` (runs), ``seeds`` (e.g. ``"0,1,2"``), the shared
    :data:`SETTINGS`, ``layer_best`` (most frequent), and for every metric
    ``<m>_mean``, ``<m>_std`` (ddof 1), ``<m>_n`` (runs that recorded it),
    ``<m>_ci95_low`` and ``<m>_ci95_high`` (:func:`confidence_interval`; the
    suffix follows ``level``). std and CI are NaN for a single run.
    Sorted by dataset, backbone, mean k-NN top-1 (desc).

    Raises:
        DataError: if ``frame`` is empty.
    """
    if frame.empty:
        raise DataError("no runs to aggregate")
    ci = f"ci{round(level * 100):g}"
    rows = []
    for key, runs in frame.groupby(GROUP, dropna=False, sort=False):
        row = dict(zip(GROUP, key), n=len(runs),
                   seeds=",".join(str(int(s)) for s in sorted(runs["seed"].dropna())))
        row.update({c: runs[c].iloc[0] for c in SETTINGS if c in runs})
        best = runs["layer_best"].dropna() if "layer_best" in runs else pd.Series(dtype=object)
        row["layer_best"] = best.mode().iloc[0] if len(best) else None
        for m in metric_columns(frame):
            x = pd.to_numeric(runs[m], errors="coerce").dropna()
            row[f"{m}_mean"] = x.mean() if len(x) else np.nan
            row[f"{m}_std"] = x.std(ddof=1) if len(x) > 1 else np.nan
            row[f"{m}_n"] = len(x)
            row[f"{m}_{ci}_low"], row[f"{m}_{ci}_high"] = confidence_interval(x, level)
        rows.append(row)
    return pd.DataFrame(rows).sort_values(
        ["dataset", "backbone", "knn_top1_k20_mean", "task"],
        ascending=[True, True, False, True], na_position="last", ignore_index=True)


def _cell(row: pd.Series, metric: str, decimals: int) -> str:
    mean = row.get(f"{metric}_mean", np.nan)
    if pd.isna(mean):
        return "–"
    half = (row.get(f"{metric}_ci95_high", np.nan) - row.get(f"{metric}_ci95_low", np.nan)) / 2
    return f"{mean:.{decimals}f}" if pd.isna(half) else f"{mean:.{decimals}f} ± {half:.{decimals}f}"


def leaderboard_markdown(summary: pd.DataFrame) -> str:
    """The main columns of an :func:`aggregate_seeds` table (95% CI) as Markdown:
    task, backbone, dataset, n, then ``mean ± CI half-width`` of the :data:`MAIN`
    metrics (just the mean when n = 1, ``–`` when not recorded). A ``config``
    column is added when one task/backbone/dataset has several configurations."""
    keys = ["task", "backbone", "dataset"]
    table = summary[keys + ["n"]].copy()
    if summary.duplicated(keys).any():
        table.insert(3, "config", summary["config"])
    for metric, header, decimals in MAIN:
        table[header] = [_cell(row, metric, decimals) for _, row in summary.iterrows()]
    best = summary["layer_best"].where(summary["layer_best"].notna(), "")
    table["best layer, linear top-1 (%)"] = [
        f"{name}: {cell}" if name and cell != "–" else cell
        for name, cell in zip(best, table["best layer, linear top-1 (%)"])]
    return (table.to_markdown(index=False) + "\n\nmean ± half-width of the 95% Student-t "
            "confidence interval over n seeds (no interval when n = 1); `–`: not measured.\n")


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.round(4).to_csv(tmp, index=False)


def write_leaderboard(paths: list[str | Path],
                      csv_path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write, atomically: ``csv_path`` (one row per configuration, :func:`aggregate_seeds`),
    ``<stem>_runs.csv`` beside it (one row per run, :func:`leaderboard_frame`) and
    ``<stem>.md`` (:func:`leaderboard_markdown`).

    Returns:
        ``(summary, runs)``: the aggregated and the per-run frames.

    Raises:
        DataError: as :func:`find_results`.
    """
    runs = leaderboard_frame(paths)
    summary = aggregate_seeds(runs)
    csv_path = Path(csv_path)
    _write_csv(summary, csv_path)
    _write_csv(runs, csv_path.with_name(f"{csv_path.stem}_runs.csv"))
    atomic_write_text(csv_path.with_suffix(".md"), leaderboard_markdown(summary) +
                      f"\nPer-run rows, with the command that made each: "
                      f"`{csv_path.stem}_runs.csv`.\n")
    return summary, runs
