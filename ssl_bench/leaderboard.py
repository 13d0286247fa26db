"""The leaderboard: one row per finished run from ``runs/*/results.json``, and one
row per configuration with the mean, spread and confidence interval over its seeds.

Everything comes from the fields each ``results.json`` records: its identity
(task, backbone, dataset, seed, ``config_id``, ``reference``), its budget, and
every metric it has (any evaluator, any low-shot percentage, any probed layer,
held-out pretext metrics, cost). Nothing is decoded from directory names and no
metric column is hard-coded.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from ssl_bench.core.errors import DataError, OptionError
from ssl_bench.core.rundir import RESULTS, atomic_path, atomic_write_text, read_json

IDENTITY = ["task", "backbone", "dataset", "seed", "config_id", "reference"]
# A configuration: every measured setting but the seed (results.json ``config_id``).
GROUP = ["task", "backbone", "dataset", "config_id"]
# Budget and model facts that every seed of a configuration shares.
SETTINGS = ["epochs", "batch_size", "images_seen", "steps", "pretrain_images",
            "eval_train_images", "test_images"]
COST_SETTINGS = ["backbone_params", "task_params", "backbone_gflops_per_image", "feature_dim",
                 "peak_memory_kind"]
TAIL = ["run", "command"]
#: The resolved task options of a run, as sorted JSON (labels configurations apart).
OPTIONS = "task_options"


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


#: Fields every ``results.json`` has; a file without them is skipped.
REQUIRED_FIELDS = ("task", "backbone", "dataset", "seed", "metrics")
_NUMBER = (int, float)
#: The JSON type of every top-level field the tables read; ``null`` or absent is
#: allowed except for :data:`REQUIRED_FIELDS`.
FIELD_TYPES = {"task": str, "backbone": str, "dataset": str, "seed": int, "metrics": dict,
               "config_id": str, "reference": bool, "command": str, "layer_best": str,
               "feature_sample": str, "pretext": dict, "pretext_chance": dict, "cost": dict,
               "step0": dict, "config": dict, "figures": dict, "layers": list,
               **dict.fromkeys(SETTINGS, _NUMBER)}


def _typed(value, kind, optional: bool = True) -> bool:
    """Whether ``value`` is a ``kind`` (a bool counts as a number only where asked
    for: JSON ``true`` is no seed) or, if ``optional``, None."""
    if value is None:
        return optional
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def schema_problem(record) -> str | None:
    """Why a parsed ``results.json`` is not a run record this version reads, in a few
    words (e.g. ``"seed" is str, not int``), or None if it is one. Checks the
    :data:`FIELD_TYPES`, that metric values are numbers and the ``layers`` entries."""
    if not isinstance(record, dict):
        return "not a JSON object"
    for key, kind in FIELD_TYPES.items():
        if key in REQUIRED_FIELDS and record.get(key) is None:
            return f'no "{key}"'
        if not _typed(record.get(key), kind):
            names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            return f'"{key}" is {type(record[key]).__name__}, not {names}'
    step0 = record.get("step0") or {}
    for key, values in [("metrics", record["metrics"]), ("pretext", record.get("pretext")),
                        ("pretext_chance", record.get("pretext_chance")),
                        ("step0.metrics", step0.get("metrics")),
                        ("step0.pretext", step0.get("pretext"))]:
        if not _typed(values, dict) or not all(_typed(v, _NUMBER) or is_choice(k)
                                               for k, v in (values or {}).items()):
            return f'"{key}" is not a mapping of metric names to numbers'
    if not _typed((record.get("config") or {}).get("task_options"), dict):
        return '"config.task_options" is not a mapping'
    layers = record.get("layers") or []
    if not all(isinstance(layer, dict) and _typed(layer.get("name"), str, optional=False)
               and _typed(layer.get("linear_top1"), _NUMBER) for layer in layers):
        return '"layers" is not a list of {"name", "linear_top1"} records'
    return None


def load_results(paths: list[str | Path]) -> list[tuple[Path, dict]]:
    """``(results.json path, parsed record)`` of every finished run under ``paths``
    (:func:`find_results`). A file that is truncated, not a JSON object or of another
    schema (:func:`schema_problem`) is named in a one-line warning on stderr and
    skipped, so one broken or foreign run does not block the table.

    Raises:
        DataError: as :func:`find_results`, or if no file could be read.
    """
    records = []
    for path in find_results(paths):
        try:
            record = read_json(path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            record, reason = None, exc.__class__.__name__
        else:
            reason = schema_problem(record)
        if reason is None:
            records.append((path, record))
        else:
            print(f"warning: skipping {path}: {reason}", file=sys.stderr)
    if not records:
        raise DataError(f"no readable {RESULTS} in {', '.join(map(str, paths))}")
    return records


def _numbers(values: dict | None, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in (values or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def is_choice(column: str) -> bool:
    """Whether a column is a setting a probe chose (``linear_l2``, ``linear_l2_10pct``;
    ``linear_lr`` and ``linear_wd`` of runs made with the earlier SGD probe): recorded
    per run, not averaged."""
    return re.search(r"_(l2|lr|wd)(_|$)", column) is not None


def _gains(final: dict[str, float], step0: dict[str, float], prefix: str = "") -> dict:
    """``step0_<m>`` and ``gain_<m>`` = final − step 0 for every measured metric."""
    out = {}
    for key, value in step0.items():
        if is_choice(key) or key not in final:
            continue
        out[f"step0_{prefix}{key}"] = value
        out[f"gain_{prefix}{key}"] = final[key] - value
    return out


def record_config_id(record: dict, run: str) -> str:
    """A run's recorded ``config_id``; a run written before it existed (named ``run``)
    is a configuration of its own."""
    return record.get("config_id") or f"run:{run}"


def run_row(record: dict, run: str) -> dict:
    """One leaderboard row from a parsed ``results.json``: :data:`IDENTITY`,
    :data:`SETTINGS`, then every recorded metric — ``metrics``, ``pretext_<key>``
    (with ``pretext_<key>_chance`` where the task has a chance level),
    ``layer_<name>_linear_top1``, ``layer_best`` — then ``step0_<metric>`` and
    ``gain_<metric>`` (the gain over the run's own step-0 reference) and the cost."""
    cost = record.get("cost") or {}
    row = {"task": record.get("task"), "backbone": record.get("backbone"),
           "dataset": record.get("dataset"), "seed": record.get("seed"),
           "config_id": record_config_id(record, run),
           "reference": bool(record.get("reference", False))}
    row.update({k: record.get(k) for k in SETTINGS})
    row.update({k: cost.get(k) for k in COST_SETTINGS})
    row[OPTIONS] = json.dumps((record.get("config") or {}).get("task_options") or {},
                              sort_keys=True)
    metrics, pretext = _numbers(record.get("metrics")), _numbers(record.get("pretext"))
    row.update(metrics)
    row.update({f"pretext_{k}": v for k, v in pretext.items()})
    chance = _numbers(record.get("pretext_chance"))
    row.update({f"pretext_{k}_chance": v for k, v in chance.items()})
    for layer in record.get("layers") or []:
        row[f"layer_{layer.get('name')}_linear_top1"] = layer.get("linear_top1")
    row["layer_best"] = record.get("layer_best")
    step0 = record.get("step0") or {}
    row.update(_gains(metrics, _numbers(step0.get("metrics"))))
    row.update(_gains(pretext, _numbers(step0.get("pretext")), "pretext_"))
    row.update({k: v for k, v in _numbers(cost).items() if k not in COST_SETTINGS})
    return {**row, "run": run, "command": record.get("command", "")}


def leaderboard_frame(paths: list[str | Path]) -> pd.DataFrame:
    """:func:`runs_frame` of the finished runs under ``paths``.

    Raises:
        DataError: as :func:`load_results`.
    """
    return runs_frame(load_results(paths))


def runs_frame(records: list[tuple[Path, dict]]) -> pd.DataFrame:
    """One row per ``(results.json path, record)`` of :func:`load_results`
    (:func:`run_row`), columns in the order first seen, sorted by dataset, backbone and
    k-NN top-1 (descending). Accuracies are in %, seconds are wall-clock, images/s over
    the training loop; a metric a run did not record is NaN."""
    rows = [run_row(record, path.parent.name) for path, record in records]
    frame = pd.DataFrame(rows)
    frame = frame[[c for c in frame.columns if c not in TAIL] + TAIL]
    knn = knn_column(frame.columns)
    return frame.sort_values(["dataset", "backbone", *([knn] if knn else []), "task", "seed"],
                             ascending=[True, True, *([False] if knn else []), True, True],
                             na_position="last", ignore_index=True)


def knn_column(columns: Iterable[str], suffix: str = "") -> str | None:
    """The k-NN top-1 column with the smallest k among ``columns`` (e.g.
    ``knn_top1_k20``; ``knn_top1_k20_mean`` with ``suffix="_mean"``), or None."""
    found = [(int(m.group(1)), c) for c in columns
             if (m := re.fullmatch(rf"knn_top1_k(\d+){re.escape(suffix)}", c))]
    return min(found)[1] if found else None


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The measured columns of a per-run frame: every numeric column that is not
    identity, a shared setting, a probe's choice, a chance level or bookkeeping."""
    fixed = set(IDENTITY + SETTINGS + COST_SETTINGS + TAIL + ["layer_best", OPTIONS])
    return [c for c in frame.columns if c not in fixed and not is_choice(c)
            and not c.endswith("_chance")
            and pd.to_numeric(frame[c], errors="coerce").notna().any()]


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


def _one_run_per_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop repeated runs of one (configuration, seed): they measure the same thing
    (e.g. ``random-init`` asked for different epochs, which it ignores)."""
    repeated = frame.duplicated(GROUP + ["seed"], keep="first")
    for _, row in frame[repeated].iterrows():
        print(f"warning: run {row['run']} repeats configuration {row['config_id']} seed "
              f"{row['seed']}; counted once", file=sys.stderr)
    return frame[~repeated]


def aggregate_seeds(frame: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """One row per configuration (:data:`GROUP`) of a :func:`leaderboard_frame`:
    the group columns, ``reference``, ``n`` (runs), ``seeds`` (e.g. ``"0,1,2"``), the
    shared settings, ``layer_best`` (most frequent), and for every metric
    ``<m>_mean``, ``<m>_std`` (ddof 1), ``<m>_n`` (runs that recorded it),
    ``<m>_ci95_low`` and ``<m>_ci95_high`` (:func:`confidence_interval`; the suffix
    follows ``level``). std and CI are NaN for a single run. Sorted by dataset,
    backbone, mean k-NN top-1 (desc).

    Raises:
        DataError: if ``frame`` is empty.
    """
    if frame.empty:
        raise DataError("no runs to aggregate")
    frame = _one_run_per_seed(frame)
    ci = f"ci{round(level * 100):g}"
    metrics = metric_columns(frame)
    rows = []
    for key, runs in frame.groupby(GROUP, dropna=False, sort=False):
        row = dict(zip(GROUP, key), reference=bool(runs["reference"].any()), n=len(runs),
                   seeds=",".join(str(int(s)) for s in sorted(runs["seed"].dropna())))
        shared = SETTINGS + COST_SETTINGS + [OPTIONS] + [c for c in runs
                                                         if c.endswith("_chance")]
        row.update({c: runs[c].iloc[0] for c in shared if c in runs})
        best = runs["layer_best"].dropna()
        row["layer_best"] = best.mode().iloc[0] if len(best) else None
        for m in metrics:
            x = pd.to_numeric(runs[m], errors="coerce").dropna()
            row[f"{m}_mean"] = x.mean() if len(x) else np.nan
            row[f"{m}_std"] = x.std(ddof=1) if len(x) > 1 else np.nan
            row[f"{m}_n"] = len(x)
            row[f"{m}_{ci}_low"], row[f"{m}_{ci}_high"] = confidence_interval(x, level)
        rows.append(row)
    summary = pd.DataFrame(rows)
    order = [c for c in [knn_column(summary.columns, "_mean")] if c]
    return summary.sort_values(["dataset", "backbone", *order, "task"],
                               ascending=[True, True, *[False] * len(order), True],
                               na_position="last", ignore_index=True)


def headline_metrics(summary: pd.DataFrame) -> list[tuple[str, str, int]]:
    """The readable table's metrics that the runs have, as (metric, header, decimals):
    k-NN top-1 at the smallest k, linear top-1, its gain over the step-0 reference,
    linear top-1 at each low-shot percentage (ascending), the best layer's linear
    top-1, training seconds, peak memory (MiB)."""
    metrics = {c[:-len("_mean")] for c in summary.columns if c.endswith("_mean")}
    knn = knn_column(metrics)
    lowshot = sorted((float(m.group(1)), c) for c in metrics
                     if (m := re.fullmatch(r"linear_top1_([\d.]+)pct", c)))
    chosen = [(knn, f"k-NN top-1, k={knn.rsplit('_k', 1)[1]} (%)", 1)] if knn else []
    chosen += [("linear_top1", "linear top-1 (%)", 1),
               ("gain_linear_top1", "linear top-1 gain over step 0 (points)", 1)]
    chosen += [(c, f"linear top-1, {p:g}% labels (%)", 1) for p, c in lowshot]
    chosen += [("layer_best_linear_top1", "best layer, linear top-1 (%)", 1),
               ("train_seconds", "train (s)", 0), ("peak_memory_mib", "peak memory (MiB)", 0)]
    return [(c, header, decimals) for c, header, decimals in chosen if c in metrics]


#: Held-out pretext metrics shown in the readable table, first recorded one wins.
PRETEXT_HEADLINE = ("top1", "ab_top1", "psnr_db", "bits_per_dim", "loss")


def _cell(row: pd.Series, metric: str, decimals: int) -> str:
    mean = row.get(f"{metric}_mean", np.nan)
    if pd.isna(mean):
        return "–"
    low, high = row.get(f"{metric}_ci95_low", np.nan), row.get(f"{metric}_ci95_high", np.nan)
    if pd.isna(low):
        return f"{mean:.{decimals}f}"
    flag = " †" if metric.startswith("gain_") and low <= 0 <= high else ""
    return f"{mean:.{decimals}f} ± {(high - low) / 2:.{decimals}f}{flag}"


def pretext_cell(row: pd.Series) -> str:
    """The row's headline held-out pretext metric, with its chance level and its
    step-0 value where recorded, e.g. ``top1 19.5 (chance 12.5, step 0 12.9)``."""
    for key in PRETEXT_HEADLINE:
        mean = row.get(f"pretext_{key}_mean", np.nan)
        if pd.isna(mean):
            continue
        extra = [f"chance {row[f'pretext_{key}_chance']:.3g}"
                 if pd.notna(row.get(f"pretext_{key}_chance", np.nan)) else "",
                 f"step 0 {row[f'step0_pretext_{key}_mean']:.3g}"
                 if pd.notna(row.get(f"step0_pretext_{key}_mean", np.nan)) else ""]
        extra = ", ".join(e for e in extra if e)
        return f"{key} {mean:.3g}" + (f" ({extra})" if extra else "")
    return "–"


def leaderboard_markdown(summary: pd.DataFrame) -> str:
    """The :func:`headline_metrics` of an :func:`aggregate_seeds` table (95% CI) as
    Markdown: task (``ref.`` marks reference rows), backbone, dataset, n, then
    ``mean ± CI half-width`` (just the mean when n = 1, ``–`` when not recorded). A
    ``config_id`` column is added when one task/backbone/dataset has several
    configurations."""
    keys = ["task", "backbone", "dataset"]
    table = summary[keys + ["n"]].copy()
    table["task"] = [f"{t} (ref.)" if ref else t for t, ref in zip(summary["task"],
                                                                  summary["reference"])]
    table["task"] += _distinguishing_options(summary, keys)
    if summary.duplicated(keys).any():
        table.insert(3, "config_id", summary["config_id"])
    for metric, header, decimals in headline_metrics(summary):
        cells = [_cell(row, metric, decimals) for _, row in summary.iterrows()]
        if metric == "layer_best_linear_top1":
            cells = [f"{name}: {cell}" if isinstance(name, str) and cell != "–" else cell
                     for name, cell in zip(summary["layer_best"], cells)]
        table[header] = cells
    table["held-out pretext"] = [pretext_cell(row) for _, row in summary.iterrows()]
    return (table.to_markdown(index=False, disable_numparse=True) + "\n\nmean ± half-width of "
            "the 95% Student-t confidence interval over n seeds (no interval when n = 1); "
            "`–`: not measured; (ref.): a reference row, not a pretext task; gain over step 0: "
            "final minus the same run evaluated before its first optimizer step (same seed, "
            "same initialisation); †: that gain's interval includes 0, so the row is not "
            "distinguishable from its own initialisation.\n")


def _distinguishing_options(summary: pd.DataFrame, keys: list[str]) -> list[str]:
    """`` (key=value, …)`` of the task options in which a configuration differs from
    the other configurations of its task, backbone and dataset (``""`` for the rest),
    e.g. the context encoder's ``adversarial=false`` variant."""
    if OPTIONS not in summary:
        return [""] * len(summary)
    options = [json.loads(o) if isinstance(o, str) else {} for o in summary[OPTIONS]]
    labels = []
    for i, row in summary.iterrows():
        peers = [options[j] for j in summary.index[(summary[keys] == row[keys]).all(axis=1)]
                 if j != i]
        differing = sorted(k for k, v in options[i].items()
                           if any(peer.get(k) != v for peer in peers))
        labels.append(f" ({', '.join(f'{k}={json.dumps(options[i][k])}' for k in differing)})"
                      if differing else "")
    return labels


def output_paths(output: str | Path) -> tuple[Path, Path, Path]:
    """The files ``ssl-bench leaderboard -o OUTPUT`` writes: ``<name>.csv`` (one row
    per configuration), ``<name>_runs.csv`` (one row per run) and ``<name>.md``, with
    ``<name>`` = OUTPUT less a ``.csv`` or ``.md`` suffix, so the three never collide
    (``-o board.md``, ``-o board.csv`` and ``-o board`` all give ``board.csv``,
    ``board_runs.csv`` and ``board.md``).

    Raises:
        OptionError: naming ``-o`` if OUTPUT or one of the three is a folder.
    """
    path = Path(output)
    base = path.with_suffix("") if path.suffix.lower() in (".csv", ".md") else path
    targets = tuple(base.with_name(base.name + end) for end in (".csv", "_runs.csv", ".md"))
    for target in (path, *targets):
        if target.is_dir():
            raise OptionError(f"-o {output}: {target} is a folder; -o names the table file, "
                              f"e.g. -o {path / 'leaderboard.csv'}")
    return targets


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.round(4).to_csv(tmp, index=False)


def write_tables(summary: pd.DataFrame, runs: pd.DataFrame,
                 output: str | Path) -> tuple[Path, Path, Path]:
    """Write, each atomically, the :func:`output_paths` of ``output``: ``summary``
    (:func:`aggregate_seeds`) as CSV, ``runs`` (:func:`runs_frame`) as CSV and the
    :func:`leaderboard_markdown` of ``summary``.

    Returns:
        The three paths written.

    Raises:
        OptionError: as :func:`output_paths`.
    """
    csv_path, runs_path, md_path = targets = output_paths(output)
    _write_csv(summary, csv_path)
    _write_csv(runs, runs_path)
    atomic_write_text(md_path, leaderboard_markdown(summary) +
                      f"\nPer-run rows, with the command that made each: `{runs_path.name}`.\n")
    return targets


def write_leaderboard(paths: list[str | Path],
                      output: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the finished runs under ``paths`` and write their tables
    (:func:`write_tables`) once all are read.

    Returns:
        ``(summary, runs)``: the aggregated and the per-run frames.

    Raises:
        OptionError: as :func:`output_paths` (checked before anything is read).
        DataError: as :func:`find_results`.
    """
    output_paths(output)
    runs = leaderboard_frame(paths)
    summary = aggregate_seeds(runs)
    write_tables(summary, runs, output)
    return summary, runs
