"""``ssl-bench tune``: one small grid around every task's defaults, chosen on validation.

Learning rates were adapted to short budgets unequally (a paper's rate for one
task, many times it for another), so a cross-task ranking would partly measure
optimizer settings. ``tune`` gives every pretext task the same grid: its learning
rate × {¼, 1, 4} crossed with the two settings of its most important knob
(:meth:`tasks.base.PretextTask.tune_choices`), six runs each, trained at the
budget given, and scored by the linear probe's **validation** top-1 — a
stratified split carved from the labelled train images (``linear_val_top1``).
The test split takes part in no choice. The winners go to a YAML file that
``run`` and ``sweep`` read with ``--tuned FILE``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import yaml

from ssl_bench.config import RunConfig, run_name
from ssl_bench.core.errors import OptionError
from ssl_bench.core.registry import TASKS
from ssl_bench.core.rundir import RESULTS, atomic_write_text, read_json

LR_SCALES = (0.25, 1.0, 4.0)


def is_tuned(task: str) -> bool:
    """Whether ``tune`` tunes a task: pretext tasks yes; references (untrained, or
    trained with labels) keep their recipe."""
    cls = TASKS.get(task)
    return cls.pretrains and not cls.uses_labels


def tuning_key(dataset: str, backbone: str) -> str:
    """The entry of a tuned file that a run on ``dataset`` with ``backbone`` reads."""
    return f"{dataset}/{backbone}"


def grid(config: RunConfig, num_channels: int) -> list[RunConfig]:
    """The tuning runs of one (task, backbone, dataset): the default point first,
    then learning-rate scales × knob settings; evaluation reduced to the linear
    probe on all labels (no low-shot, no layers, no step 0)."""
    choices = TASKS.get(config.task).tune_choices(num_channels)
    points: list[tuple[float, dict]] = []
    for point in [(1.0, choices[0])] + [(s, c) for c in choices for s in LR_SCALES]:
        if point not in points:  # a task without a knob gets the learning rates only
            points.append(point)
    return [dataclasses.replace(config, lr_scale=scale, task_options={**setting},
                                evaluators=["linear"], lowshot=[], layer_probes=False,
                                step0=False) for scale, setting in points]


def choose(configs: list[RunConfig]) -> dict[str, Any]:
    """The best tuning run by validation top-1 (ties: the earlier, so the default
    wins a tie), with the whole grid for the report.

    Raises:
        OptionError: if no run of the grid finished.
    """
    rows = []
    for config in configs:
        path = Path(config.out) / run_name(config) / RESULTS
        if path.exists():
            val = read_json(path)["metrics"]["linear_val_top1"]
            rows.append({"lr_scale": config.lr_scale, "set": config.task_options,
                         "linear_val_top1": val, "run": path.parent.name})
    if not rows:
        raise OptionError(f"no tuning run of {configs[0].task} finished; see the sweep summary")
    best = max(range(len(rows)), key=lambda i: (rows[i]["linear_val_top1"], -i))
    return {"lr_scale": rows[best]["lr_scale"], "set": rows[best]["set"],
            "linear_val_top1": rows[best]["linear_val_top1"], "grid": rows}


def write_tuned(path: str | Path, entries: dict[str, dict[str, Any]], budget: dict[str, Any],
                command: str) -> None:
    """Write (atomically) or update the tuned file: ``entries`` maps
    :func:`tuning_key` → task → :func:`choose` output; ``budget`` and ``command``
    are recorded beside each entry."""
    path = Path(path)
    data = load_tuned(path, option="-o") if path.exists() else {}
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for key, tasks in entries.items():
        entry = data.setdefault(key, {"budget": budget, "command": command, "tasks": {}})
        entry.update(budget=budget, command=command, written_at=stamp)
        entry["tasks"].update(tasks)
    plain = json.loads(json.dumps(data))  # tuples → lists, for a plain YAML file
    atomic_write_text(path, "# ssl-bench tune: chosen on validation top-1, never on test\n"
                      + yaml.safe_dump(plain, sort_keys=True))


def load_tuned(path: str | Path, option: str = "--tuned") -> dict[str, Any]:
    """Parse a tuned file and check it has the shape :func:`write_tuned` writes:
    ``<dataset>/<backbone>`` → ``tasks`` → task → ``lr_scale`` (a positive number),
    ``set`` (a mapping) and an optional ``grid`` of such points with their
    ``linear_val_top1``.

    Args:
        option: the option that named the file, for messages (``-o`` for ``tune``).

    Raises:
        OptionError: naming ``option``, the file and the first key at fault if it is
            missing, unreadable (binary, not YAML) or of another shape.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise OptionError(f"{option} {path}: cannot read it as YAML ({exc.__class__.__name__}); "
                          "give a file written by ssl-bench tune") from None
    problem = _shape_problem(data)
    if problem:
        raise OptionError(f"{option} {path}: {problem}; give a file written by ssl-bench tune")
    return data


def _shape_problem(data: Any) -> str | None:
    """The first place where a parsed tuned file departs from :func:`write_tuned`'s
    shape, as ``key.tasks.task.field`` and what is wrong; ``None`` if nowhere."""
    if not isinstance(data, dict):
        return f"its top level is {data!r:.40}, not a mapping of <dataset>/<backbone> entries"
    for key, entry in data.items():
        tasks = entry.get("tasks") if isinstance(entry, dict) else None
        if not isinstance(tasks, dict):
            return f"{key}.tasks is {tasks!r:.40}, not a mapping of task → choice"
        for task, choice in tasks.items():
            where = f"{key}.tasks.{task}"
            problem = _point_problem(choice, scored=False)
            if problem:
                return where + problem
            grid = choice.get("grid", [])
            if not isinstance(grid, list):
                return f"{where}.grid is {grid!r:.40}, not a list"
            for i, point in enumerate(grid):
                problem = _point_problem(point, scored=True)
                if problem:
                    return f"{where}.grid[{i}]{problem}"
    return None


def _point_problem(point: Any, scored: bool) -> str | None:
    """What is wrong with one choice or grid point (``scored``: it needs its
    ``linear_val_top1``), as text that follows its key; ``None`` if nothing."""
    if not isinstance(point, dict):
        return f" is {point!r:.40}, not a mapping with lr_scale and set"
    scale, setting = point.get("lr_scale"), point.get("set")
    if not (_is_number(scale) and 0 < scale < math.inf):
        return f".lr_scale is {scale!r:.40}, not a positive number"
    if not isinstance(setting, dict):
        return f".set is {setting!r:.40}, not a mapping of task options"
    if scored and not _is_number(point.get("linear_val_top1")):
        return f".linear_val_top1 is {point.get('linear_val_top1')!r:.40}, not a number"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def apply_tuned(config: RunConfig, path: str | Path) -> RunConfig:
    """``config`` with the tuned learning-rate scale and knob setting of its task;
    explicit ``--set`` options win. Reference tasks are not tuned and pass through.

    Raises:
        OptionError: a pretraining task without an entry for its dataset and backbone,
            or a tuned setting outside its task's declared range (naming the file
            and the key).
    """
    if not is_tuned(config.task):
        return config
    key = tuning_key(config.dataset, config.backbone)
    tuned = load_tuned(path).get(key, {}).get("tasks", {}).get(config.task)
    if tuned is None:
        raise OptionError(f"--tuned {path} has no entry for task {config.task!r} on {key}; "
                          f"run ssl-bench tune --tasks {config.task} with that dataset and "
                          "backbone first")
    _check_setting(config, tuned["set"], f"--tuned {path}: {key}.tasks.{config.task}.set")
    return dataclasses.replace(config, lr_scale=float(tuned["lr_scale"]),
                               task_options={**tuned["set"], **config.task_options},
                               tuned=str(path))


def _check_setting(config: RunConfig, setting: dict[str, Any], where: str) -> None:
    """Check the tuned options that ``--set`` does not override against their task's
    declarations, so a bad value names the file rather than ``--set``.

    Raises:
        OptionError: ``where``, then the option and its valid values.
    """
    from tasks.options import check_options, options_from_strings

    kept = {k: v for k, v in setting.items() if k not in config.task_options}
    try:
        check_options(options_from_strings(TASKS.get(config.task).Options, kept))
    except OptionError as exc:  # the option messages start with "--set ", not the file
        raise OptionError(f"{where}: {str(exc).removeprefix('--set ')}") from None
