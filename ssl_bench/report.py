"""``ssl-bench report``: a Markdown report (``<out>/README.md``) of finished runs
with the seed-aggregated leaderboard, how the runs were made, their budget and
the figures (``<out>/figures/*.png``)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_bench import report_figures as rf
from ssl_bench.core.errors import DataError, OptionError
from ssl_bench.core.figures import save_figure
from ssl_bench.core.rundir import atomic_path, atomic_write_text
from ssl_bench.leaderboard import (aggregate_seeds, load_results, leaderboard_markdown,
                                   record_config_id, runs_frame, write_tables)

BUDGET = ["epochs", "images_seen", "pretrain_images", "eval_train_images", "test_images"]


def load_runs(paths: list[str | Path]) -> list[tuple[Path, dict]]:
    """``(run directory, parsed results.json)`` of every finished run under ``paths``.

    Raises:
        DataError: as :func:`ssl_bench.leaderboard.load_results`.
    """
    return [(p.parent, record) for p, record in load_results(paths)]


def first_seeds(runs: list[tuple[Path, dict]]) -> list[tuple[Path, dict]]:
    """One run per configuration (``config_id``): the lowest seed (then the first name)."""
    chosen: dict[str, tuple[Path, dict]] = {}
    for run, record in sorted(runs, key=lambda r: (r[1].get("seed") or 0, r[0].name)):
        chosen.setdefault(record_config_id(record, run.name), (run, record))
    return list(chosen.values())


def layer_frame(runs: list[tuple[Path, dict]]) -> pd.DataFrame:
    """One row per (run, probed layer) from results.json ``layers``: dataset, task,
    backbone, config_id, seed, layer (name), index (1 = shallowest), linear_top1 (%)."""
    rows = [{"dataset": r.get("dataset"), "task": r.get("task"), "backbone": r.get("backbone"),
             "config_id": record_config_id(r, run.name), "seed": r.get("seed"),
             "layer": layer.get("name"), "index": i, "linear_top1": layer.get("linear_top1")}
            for run, r in runs for i, layer in enumerate(r.get("layers") or [], start=1)]
    return pd.DataFrame(rows, columns=["dataset", "task", "backbone", "config_id", "seed",
                                       "layer", "index", "linear_top1"])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_")


def _task_pictures(runs, figures: Path) -> list[tuple[str, str]]:
    """Copy each (task, backbone, dataset)'s ``<task>.png`` from its lowest-seed run
    (results.json ``figures.task``; runs from before that field: ``<task>.png``)."""
    out = []
    for run, record in first_seeds(runs):
        name = (record.get("figures") or {}).get("task", f"{record.get('task')}.png")
        if not name or not (run / name).is_file():
            continue
        parts = (record["task"], record["backbone"], record["dataset"],
                 record_config_id(record, run.name))
        target = figures / f"task_{'_'.join(map(_slug, parts))}.png"
        with atomic_path(target) as tmp:
            shutil.copyfile(run / name, tmp)
        out.append((target.name, f"{rf.label(record['task'], record['backbone'])} on "
                                 f"{record['dataset']}: the task's picture from run `{run.name}` "
                                 f"(seed {record.get('seed')})."))
    return out


def _feature_samples(runs) -> dict[str, list[tuple[str, dict, str]]]:
    """Each configuration's test-feature sample (lowest seed), per dataset:
    ``(figure label, {"features", "labels", "class_names"}, run name)``.

    Raises:
        DataError: naming a sample file that is corrupt or not such a dict.
    """
    import torch

    by_dataset: dict[str, list] = {}
    for run, record in first_seeds(runs):
        name = record.get("feature_sample")
        if not name or not (run / name).is_file():
            continue
        try:
            sample = torch.load(run / name, map_location="cpu", weights_only=True)
            sample["features"], sample["labels"], sample["class_names"]
        except Exception as exc:  # a corrupt or foreign file: say which one
            raise DataError(f"cannot read the feature sample {run / name} (a dict of features, "
                            f"labels, class_names): {exc}") from exc
        by_dataset.setdefault(record["dataset"], []).append(
            (rf.label(record["task"], record["backbone"]), sample, run.name))
    return by_dataset


def _projections(by_dataset, figures: Path) -> list[tuple[str, str]]:
    """A t-SNE grid per dataset of the :func:`_feature_samples`."""
    out = []
    for dataset, items in by_dataset.items():
        classes = list(items[0][1]["class_names"])
        fig = rf.projection_grid(
            [(name, s["features"].float().numpy(), s["labels"].numpy()) for name, s, _ in items],
            classes, f"{dataset}: t-SNE of frozen test features, coloured by class")
        target = f"projection_{_slug(dataset)}.png"
        save_figure(fig, figures / target)
        out.append((target, f"{dataset}: 2-D t-SNE of ~{len(items[0][1]['labels'])} test images' "
                            f"features per configuration (lowest seed), coloured by class."))
    return out


def _commands(runs, sweep_commands: list[str]) -> str:
    lines = []
    if sweep_commands:
        lines += ["The sweep command:", "", "```", *sweep_commands, "```", ""]
    distinct = dict.fromkeys(re.sub(r"--seed[ =]\d+", "--seed N", r.get("command") or "")
                             for _, r in runs)
    distinct.pop("", None)
    if distinct:
        lines += [f"The {len(distinct)} distinct run command(s) (from each results.json, "
                  "`--seed N` for the seed):", "", "```", *distinct, "```"]
    return "\n".join(lines) or "_No run recorded its command._"


def _budget(summary: pd.DataFrame) -> str:
    table = summary[["task", "backbone", "dataset", "n", "seeds",
                     *[c for c in BUDGET if c in summary]]].copy()
    table = table.map(lambda v: "–" if v is None or (isinstance(v, float) and np.isnan(v))
                      else f"{v:.0f}" if isinstance(v, float) else v)
    return table.to_markdown(index=False)


def _compute(per_run: pd.DataFrame) -> str:
    """One sentence: pretraining and evaluation wall-clock minutes summed over runs."""
    train = pd.to_numeric(per_run.get("train_seconds"), errors="coerce").sum() / 60
    evaluation = pd.to_numeric(per_run.get("eval_seconds"), errors="coerce").sum() / 60
    return (f"Compute, summed over the {len(per_run)} runs' own wall-clock (results.json "
            f"`cost`): {train:.1f} min of pretraining and {evaluation:.1f} min of feature "
            "extraction and evaluation.")


def _section(title: str, figures: list[tuple[str, str]], missing: str) -> list[str]:
    lines = [f"### {title}", ""]
    for name, caption in figures:
        lines += [f"![{name}](figures/{name})", "", caption, ""]
    return lines + ([f"_Not drawn: {missing}_", ""] if not figures else [])


def tuning_section(path: str | Path) -> str:
    """The grid and the choices of an ``ssl-bench tune`` file, one table per
    dataset/backbone: every grid point's validation top-1, the chosen one in bold.

    Raises:
        OptionError: naming ``--tuned`` if the file is missing or not a tune file.
    """
    from ssl_bench.tune import load_tuned

    return _tuning_tables(path, load_tuned(path))  # load_tuned checks every field read


def _tuning_tables(path, tuned: dict) -> str:
    lines = [f"Chosen by `ssl-bench tune` (`{path}`) on the linear probe's validation top-1 "
             "(a split of the labelled train images), never on test.", ""]
    for key, entry in tuned.items():
        lines += [f"**{key}**, budget {entry.get('budget')}:", "", "```",
                  str(entry.get("command", "")), "```", "",
                  "| task | grid: lr scale, setting → validation top-1 (%) |", "| --- | --- |"]
        for task, choice in sorted(entry["tasks"].items()):
            chosen = (choice["lr_scale"], choice["set"])
            points = []
            for g in choice.get("grid", []):
                text = f"×{g['lr_scale']:g} {g['set'] or 'default'} → {g['linear_val_top1']:.1f}"
                points.append(f"**{text}**" if (g["lr_scale"], g["set"]) == chosen else text)
            lines.append(f"| {task} | {'; '.join(points)} |")
        lines.append("")
    return "\n".join(lines)


#: The per-layer figure's caption; the dashed lines only where the figure has them.
LAYER_CAPTION = ("Linear-probe top-1 accuracy (%) of each probed layer, shallow to deep, "
                 "mean over seeds ± 95% CI; one colour per task.")
LAYER_REFERENCES = (" Dashed: configurations with a single probed layer (e.g. `pixels`), "
                    "drawn across every panel of their dataset.")


def build_report(paths: list[str | Path], out_dir: str | Path, title: str = "ssl-bench report",
                 sweep_commands: list[str] | None = None, tuned: str | Path | None = None) -> Path:
    """Write ``<out_dir>/README.md``, the leaderboard files
    (``leaderboard.csv``/``_runs.csv``/``.md``, see
    :func:`ssl_bench.leaderboard.write_tables`) and ``<out_dir>/figures/*.png``
    for the finished runs under ``paths``. ``sweep_commands`` are printed verbatim;
    ``tuned`` adds the tuning grid and choices (:func:`tuning_section`).

    Every input is read first and the report is built in a temporary folder beside
    ``out_dir``; only then is each file moved into ``out_dir`` (an atomic rename,
    README.md last), so a refused or failed report leaves ``out_dir`` as it was.

    Returns:
        The README path.

    Raises:
        DataError: if a path does not exist or holds no finished run, or a feature
            sample is corrupt.
        OptionError: if ``out_dir`` is a file or ``tuned`` is not a tune file.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OptionError(f"-o {out_dir} is a file, not a folder; -o names the report's folder")
    records = load_results(paths)
    runs = [(p.parent, record) for p, record in records]
    tuning = tuning_section(tuned) if tuned else None
    samples = _feature_samples(runs)
    per_run = runs_frame(records)
    summary = aggregate_seeds(per_run)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        _write_report(Path(tmp), paths, title, sweep_commands or [], tuning, runs, samples,
                      summary, per_run)
        _move_into(Path(tmp), out_dir)
    return out_dir / "README.md"


def _move_into(source: Path, target: Path) -> None:
    """Rename every file under ``source`` to the same place under ``target`` (same file
    system: atomic per file), README.md last so it never links a figure not yet there."""
    files = [f for f in source.rglob("*") if f.is_file()]
    for f in sorted(files, key=lambda f: f.name == "README.md"):
        dest = target / f.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, dest)


def _write_report(out_dir: Path, paths, title: str, sweep_commands: list[str],
                  tuning: str | None, runs, samples, summary: pd.DataFrame,
                  per_run: pd.DataFrame) -> None:
    """Write the report's files into the empty folder ``out_dir``."""
    figures = out_dir / "figures"
    write_tables(summary, per_run, out_dir / "leaderboard.csv")

    def draw(fig, name: str, caption: str) -> list[tuple[str, str]]:
        if fig is None:
            return []
        save_figure(fig, figures / name)
        return [(name, caption)]

    bars = draw(rf.leaderboard_bars(summary), "leaderboard_bars.png",
                "k-NN (smallest recorded k) and linear-probe top-1 accuracy (%) per "
                "configuration, mean over seeds; error bars: 95% Student-t CI (none for a "
                "single seed); reference rows grey and hatched.")
    cost = draw(rf.cost_scatter(per_run), "accuracy_vs_cost.png",
                "Top-1 accuracy (%) of every run against its pretraining cost, side by side: "
                "images seen (equal data), measured training GFLOPs (equal compute: forward "
                "and backward of the whole task, so rotation's 4 rotated copies and jigsaw's "
                "9 tiles count; results.json `cost.train_gflops`) and wall-clock seconds "
                "(panels of costs no run recorded are left out); one colour per task, hollow "
                "markers for a task's further configurations in a panel.")
    layer_rows = layer_frame(runs)
    layers = draw(rf.layer_curves(layer_rows), "layer_probes.png", LAYER_CAPTION + (
        LAYER_REFERENCES if not rf.layer_references(layer_rows).empty else ""))
    lines = [f"# {title}", "",
             f"{len(per_run)} finished runs of {len(summary)} configurations, read from "
             + ", ".join(f"`{p}`" for p in paths) + ".", "",
             "## How the runs were made", "", _commands(runs, sweep_commands), "",
             "## Budget", "",
             "Epochs and images seen are pretraining; pretrain / eval-train / test images "
             "are the split sizes used.", "", _budget(summary), "", _compute(per_run), "",
             *(["## Tuning", "", tuning, ""] if tuning else []),
             "## Leaderboard", "", leaderboard_markdown(summary),
             "Files: [leaderboard.csv](leaderboard.csv) (per configuration: mean, std, n and "
             "95% CI of every metric), [leaderboard_runs.csv](leaderboard_runs.csv) (per run, "
             "with its command).", "", "## Figures", "",
             *_section("Leaderboard", bars, "no run recorded k-NN or linear accuracy."),
             *_section("Accuracy against pretraining cost", cost,
                       "no run recorded accuracy and cost."),
             *_section("Probe accuracy against depth", layers,
                       "no run probed two or more layers (`layers` in results.json)."),
             *_section("Task pictures", _task_pictures(runs, figures),
                       "no run saved a task picture."),
             *_section("Feature projections", _projections(samples, figures),
                       "no run saved a test-feature sample (`feature_sample`).")]
    atomic_write_text(out_dir / "README.md", "\n".join(lines).rstrip() + "\n")
