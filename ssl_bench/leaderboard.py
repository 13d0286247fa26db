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
                 "peak_memory_kind", "train_backbone_passes", "train_gflops_per_step",
                 "train_gflops"]
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
    summary = summary.sort_values(["dataset", "backbone", *order, "task"],
                                  ascending=[True, True, *[False] * len(order), True],
                                  na_position="last", ignore_index=True)
    return compare_to_best(frame, summary)


#: The paired comparison's resolution target: a difference of this many points.
RESOLVE_POINTS = 2.0


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment (Holm 1979) of a family of p-values: the i-th
    smallest of the m finite ones becomes max_{j ≤ i} min(1, (m − j + 1)·p_(j));
    NaN stays NaN and is not counted in m. Returns a float array in input order."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    order = np.flatnonzero(~np.isnan(p))
    order = order[np.argsort(p[order], kind="stable")]
    scaled = (len(order) - np.arange(len(order))) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def seeds_to_resolve(std: float, points: float = RESOLVE_POINTS, level: float = 0.95,
                     limit: int = 10_000) -> float:
    """The smallest number of seeds n ≥ 2 whose paired confidence interval half-width
    t_{(1+level)/2, n−1}·std/√n is at most ``points`` (same unit as ``std``, the
    standard deviation of the per-seed differences), by iteration; NaN if ``std`` is
    NaN, inf if more than ``limit`` seeds would be needed."""
    if math.isnan(std):
        return math.nan
    for n in range(2, limit + 1):
        if stats.t.ppf((1 + level) / 2, n - 1) * std / math.sqrt(n) <= points:
            return float(n)
    return math.inf


def paired_difference(row: pd.Series, best: pd.Series, level: float = 0.95) -> dict:
    """``row − best`` over the seeds both recorded (values indexed by seed): ``diff``
    (mean), ``low``/``high`` (Student-t interval, :func:`confidence_interval`),
    ``pairs`` (seeds shared), ``p`` (two-sided one-sample t-test of the differences
    against 0; 1 when every difference is 0) and ``seeds`` (:func:`seeds_to_resolve`
    at their standard deviation). All but ``pairs`` are NaN with fewer than 2 pairs."""
    d = (row - best).dropna()
    low, high = confidence_interval(d, level)
    out = {"diff": d.mean() if len(d) else math.nan, "low": low, "high": high,
           "pairs": len(d), "p": math.nan, "seeds": math.nan}
    if len(d) >= 2:
        std = float(d.std(ddof=1))
        # t is ±inf or 0/0 when the differences are all equal: p is then 0, or 1 if all 0
        out["p"] = (float(stats.ttest_1samp(d, 0.0).pvalue) if std > 0
                    else float(out["diff"] == 0))
        out["seeds"] = seeds_to_resolve(std, level=level)
    return out


def paired_metrics(summary: pd.DataFrame) -> list[str]:
    """The headline accuracies compared between rows: k-NN top-1 (smallest k) and
    linear top-1, those recorded."""
    metrics = [m for m, _, _ in headline_metrics(summary)]
    return [m for m in (knn_column(metrics), "linear_top1") if m in metrics]


def compare_to_best(runs: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` (one row per configuration) with, for every :func:`paired_metrics`
    metric ``m`` and per (dataset, backbone) group, each row compared with the
    group's best row, paired by seed (tasks of one backbone start from the same
    initialisation and data order at a given seed; rows of different backbones are
    never paired). The best row has the highest ``<m>_mean`` among the pretext
    tasks (among all rows if the group has only references). Added columns, in
    points for ``m`` in %:

    ``<m>_vs_best`` (mean of row − best over shared seeds), ``<m>_vs_best_low`` /
    ``_high`` (95% t interval), ``<m>_vs_best_pairs``, ``<m>_vs_best_p``,
    ``<m>_vs_best_p_holm`` (Holm over the group's compared rows), ``<m>_best``
    (True on the best row), ``<m>_tied`` (True: not distinguishable from the best,
    adjusted p ≥ 0.05, and for the best row itself; NaN: fewer than 2 shared seeds,
    not tested) and ``<m>_seeds_for_2pt`` (:func:`seeds_to_resolve`)."""
    summary = summary.copy()
    for m in paired_metrics(summary):
        for col in ("vs_best", "vs_best_low", "vs_best_high", "vs_best_pairs", "vs_best_p",
                    "vs_best_p_holm", "seeds_for_2pt"):
            summary[f"{m}_{col}"] = np.nan
        summary[f"{m}_best"] = False
        summary[f"{m}_tied"] = pd.Series([np.nan] * len(summary), summary.index, dtype=object)
        for _, rows in summary.groupby(["dataset", "backbone"], dropna=False, sort=False):
            _compare_group(runs, summary, rows, m)
    return summary


def _compare_group(runs: pd.DataFrame, summary: pd.DataFrame, rows: pd.DataFrame,
                   m: str) -> None:
    """Fill ``m``'s comparison columns of ``summary`` for the rows of one group."""
    means = pd.to_numeric(rows[f"{m}_mean"], errors="coerce")
    pretext = means[~rows["reference"].astype(bool)]
    candidates = pretext if pretext.notna().any() else means
    if candidates.isna().all():
        return
    best = candidates.idxmax()
    per_seed = runs[(runs["dataset"] == rows.loc[best, "dataset"])
                    & (runs["backbone"] == rows.loc[best, "backbone"])]
    per_seed = per_seed.pivot(index="seed", columns="config_id", values=m).apply(
        pd.to_numeric, errors="coerce")
    others = [i for i in rows.index if i != best]
    results = {i: paired_difference(per_seed[rows.loc[i, "config_id"]],
                                    per_seed[rows.loc[best, "config_id"]]) for i in others}
    adjusted = holm([results[i]["p"] for i in others])
    for i, p_holm in zip(others, adjusted):
        r = results[i]
        summary.loc[i, [f"{m}_vs_best", f"{m}_vs_best_low", f"{m}_vs_best_high",
                        f"{m}_vs_best_pairs", f"{m}_vs_best_p", f"{m}_vs_best_p_holm",
                        f"{m}_seeds_for_2pt"]] = [r["diff"], r["low"], r["high"], r["pairs"],
                                                   r["p"], p_holm, r["seeds"]]
        summary.at[i, f"{m}_tied"] = np.nan if np.isnan(p_holm) else bool(p_holm >= 0.05)
    summary.at[best, f"{m}_best"], summary.at[best, f"{m}_tied"] = True, True


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
    # a reference's gain over step 0 is 0 by construction (its step 0 is itself)
    if pd.isna(mean) or (metric.startswith("gain_") and row.get("reference", False)):
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


#: Training-compute columns of the readable table: (column, header).
COMPUTE = [("train_backbone_passes", "backbone passes per image"),
           ("train_gflops", "train compute (GFLOP)")]


def _task_labels(summary: pd.DataFrame, keys: list[str]) -> list[str]:
    """Each row's task name, ``(ref.)`` on reference rows, and the options that tell
    configurations of one task apart."""
    names = [f"{t} (ref.)" if ref else t for t, ref in zip(summary["task"], summary["reference"])]
    return [n + o for n, o in zip(names, _distinguishing_options(summary, keys))]


def _number(value, spec: str) -> str:
    return "–" if pd.isna(value) else format(value, spec)


def leaderboard_markdown(summary: pd.DataFrame) -> str:
    """The :func:`headline_metrics` of an :func:`aggregate_seeds` table (95% CI) as
    Markdown: task (``ref.`` marks reference rows), backbone, dataset, n, then
    ``mean ± CI half-width`` (just the mean when n = 1, ``–`` when not recorded), the
    training compute (:data:`COMPUTE`) where recorded, and below it the
    :func:`paired_markdown` table. A ``config_id`` column is added when one
    task/backbone/dataset has several configurations."""
    keys = ["task", "backbone", "dataset"]
    table = summary[keys + ["n"]].copy()
    table["task"] = _task_labels(summary, keys)
    if summary.duplicated(keys).any():
        table.insert(3, "config_id", summary["config_id"])
    for metric, header, decimals in headline_metrics(summary):
        cells = [_cell(row, metric, decimals) for _, row in summary.iterrows()]
        if metric == "layer_best_linear_top1":
            cells = [f"{name}: {cell}" if isinstance(name, str) and cell != "–" else cell
                     for name, cell in zip(summary["layer_best"], cells)]
        table[header] = cells
    for column, header in COMPUTE:
        if column in summary and pd.to_numeric(summary[column], errors="coerce").notna().any():
            table[header] = [_number(v, ".3g") for v in pd.to_numeric(summary[column],
                                                                       errors="coerce")]
    table["held-out pretext"] = [pretext_cell(row) for _, row in summary.iterrows()]
    compute = ("; backbone passes per image: inputs (images, rotated copies, tiles, patches) "
               "the backbone processes per training image in one step; train compute: "
               "FLOPs of one measured training step (forward and backward, a multiply-add "
               "counted as 2) × steps" if any(c in table for _, c in COMPUTE) else "")
    return (table.to_markdown(index=False, disable_numparse=True) + "\n\nmean ± half-width of "
            "the 95% Student-t confidence interval over n seeds (no interval when n = 1); "
            "`–`: not measured; (ref.): a reference row, not a pretext task (its gain over "
            "step 0 is 0 by construction: `–`); gain over step 0: "
            "final minus the same run evaluated before its first optimizer step (same seed, "
            "same initialisation); †: that gain's interval includes 0, so the row is not "
            "distinguishable from its own initialisation (one test per row, uncorrected)"
            f"{compute}.\n" + paired_markdown(summary))


def paired_markdown(summary: pd.DataFrame) -> str:
    """The :func:`compare_to_best` columns of an :func:`aggregate_seeds` table as a
    Markdown section: per (dataset, backbone) and headline accuracy, every row's
    paired difference to the best row (mean ± 95% t half-width), the seeds paired,
    raw and Holm-adjusted p, whether it is distinguishable from the best, and the
    seeds that would resolve 2 points at the measured spread; ``""`` when nothing
    was compared."""
    keys = ["task", "backbone", "dataset"]
    labels = _task_labels(summary, keys)
    lines = []
    for m in paired_metrics(summary):
        if f"{m}_best" not in summary or not summary[f"{m}_best"].any():
            continue
        name = dict((c, h) for c, h, _ in headline_metrics(summary))[m]
        for i, row in summary.iterrows():
            best = bool(row[f"{m}_best"])
            tied = row[f"{m}_tied"]
            lines.append({
                "dataset": row["dataset"], "backbone": row["backbone"], "task": labels[i],
                "metric": name.replace(" (%)", ""),
                "Δ to best (points)": "best" if best else _paired_cell(row, m),
                "seeds paired": "–" if best else f"{row[f'{m}_vs_best_pairs']:.0f}",
                "p": "–" if best else _number(row[f"{m}_vs_best_p"], ".3f"),
                "p (Holm)": "–" if best else _number(row[f"{m}_vs_best_p_holm"], ".3f"),
                "tied with best": "best" if best else "not tested" if pd.isna(tied)
                else "yes" if tied else "no",
                "seeds to resolve 2 points": "–" if best else
                _number(row[f"{m}_seeds_for_2pt"], ".0f")})
    if not lines:
        return ""
    table = pd.DataFrame(lines).sort_values(["dataset", "backbone", "metric"], kind="stable")
    return ("\n### Rows compared with the best row, paired by seed\n\n"
            + table.to_markdown(index=False, disable_numparse=True) + "\n\nPer dataset, "
            "backbone and metric, each row minus the best pretext-task row (highest mean), "
            "computed seed by seed over the seeds both have (tasks of one backbone share "
            "their initialisation and data order at a seed; other backbones are not "
            "paired): mean ± half-width of the 95% Student-t interval; p: two-sided paired "
            "t-test; p (Holm): Holm-adjusted over the rows of the group, per metric; tied "
            "with best: adjusted p ≥ 0.05, so the row is not distinguishable from the best "
            "(not tested: fewer than 2 shared seeds); seeds to resolve 2 points: the "
            "smallest n with t_{0.975,n−1}·s/√n ≤ 2, s the standard deviation of the "
            f"paired differences measured here (the runs have n = "
            f"{'/'.join(map(str, sorted(set(summary['n']))))}).\n")


def _paired_cell(row: pd.Series, m: str) -> str:
    diff, low, high = (row[f"{m}_vs_best{s}"] for s in ("", "_low", "_high"))
    if pd.isna(diff):
        return "–"
    return f"{diff:.1f}" if pd.isna(low) else f"{diff:.1f} ± {(high - low) / 2:.1f}"


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
