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

Three guards against the winner's curse (a choice that reports its own lucky draw):

* tuning runs use their own seeds (:data:`TUNING_SEEDS`), recorded in the file;
  ``run``/``sweep --tuned`` refuse to report a run at one of them;
* the probe is given every labelled train image, so its validation split (10 %)
  holds 5,000 images on CIFAR-10 instead of 500 (a standard error of 0.7 points
  at 40 % top-1 instead of 2.2);
* when the leader's margin over the runner-up is below two standard errors of a
  difference (:func:`within_noise`), both run again at the other tuning seeds and
  the choice goes to the better mean.

A row is a task plus the ``--set`` options held fixed while tuning it (e.g. the
context encoder with ``adversarial=false``): :func:`row_key`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ssl_bench.config import RunConfig, run_name
from ssl_bench.core.errors import OptionError
from ssl_bench.core.registry import TASKS
from ssl_bench.core.rundir import RESULTS, atomic_write_text, read_json

if TYPE_CHECKING:  # torch is imported by what runs, not by the parser's help
    import torch

LR_SCALES = (0.25, 1.0, 4.0)
#: ``tune --seeds``' default: the grid at the first, a close top two at all three.
#: Disjoint from the reported seeds (``sweep --seeds`` 0 1 2).
TUNING_SEEDS = (1000, 1001, 1002)
#: Files written before tune recorded its seeds were tuned at ``budget.seed``, else 0.
OLD_TUNING_SEED = 0


def is_tuned(task: str) -> bool:
    """Whether ``tune`` tunes a task: pretext tasks yes; references (untrained, or
    trained with labels) keep their recipe."""
    cls = TASKS.get(task)
    return cls.pretrains and not cls.uses_labels


def tuning_key(dataset: str, backbone: str) -> str:
    """The entry of a tuned file that a run on ``dataset`` with ``backbone`` reads."""
    return f"{dataset}/{backbone}"


def knob_keys(task: str) -> set[str]:
    """The options :meth:`~tasks.base.PretextTask.tune_choices` sets, on grey or colour
    data (1 or 3 channels): ``tune`` chooses them, so ``--set`` may not fix them."""
    cls = TASKS.get(task)
    return {key for channels in (1, 3) for choice in cls.tune_choices(channels) for key in choice}


def row_key(task: str, task_options: dict[str, Any]) -> str:
    """The name of a tuned row: the task, then the ``--set`` options other than its knob
    that differ from their defaults, e.g. ``context-encoder adversarial=false``; a run
    reads the row its own options name.

    Raises:
        OptionError: an unknown option or a value of the wrong type (as ``--set``).
    """
    from tasks.options import options_from_strings, options_to_dict

    fixed = {k: v for k, v in task_options.items() if k not in knob_keys(task)}
    options = TASKS.get(task).Options
    typed = options_to_dict(options_from_strings(options, fixed))
    default = options_to_dict(options())
    shown = [f"{k}={v if isinstance(v, str) else json.dumps(v)}"  # false, 0.5, center
             for k, v in sorted(typed.items()) if k in fixed and v != default[k]]
    return " ".join([task, *shown])


def grid(config: RunConfig, num_channels: int) -> list[RunConfig]:
    """The tuning runs of one (task, backbone, dataset) at ``config.seed``: the default
    point first, then learning-rate scales × knob settings, each beside the fixed
    ``--set`` options of ``config``; evaluation reduced to the linear probe on every
    labelled train image (its validation split is then 10 % of them; no low-shot, no
    layers, no step 0)."""
    choices = TASKS.get(config.task).tune_choices(num_channels)
    points: list[tuple[float, dict]] = []
    for point in [(1.0, choices[0])] + [(s, c) for c in choices for s in LR_SCALES]:
        if point not in points:  # a task without a knob gets the learning rates only
            points.append(point)
    return [dataclasses.replace(config, lr_scale=scale,
                                task_options={**config.task_options, **setting},
                                evaluators=["linear"], lowshot=[], layer_probes=False,
                                step0=False, eval_train_subset=None)
            for scale, setting in points]


def validation_images(train_labels: torch.Tensor) -> int:
    """How many images the linear probe validates on when given all of ``train_labels``
    (``int64`` ``(N,)``): its own split (:func:`eval.linear.validation_split`), so the
    number recorded is the number used; 5,000 for CIFAR-10's 50,000."""
    from eval.linear import LinearProbe, validation_split

    return len(validation_split(train_labels, LinearProbe().val_fraction, seed=0)[1])


def within_noise(leader: float, runner_up: float, val_images: int) -> bool:
    """Whether a leader's margin (top-1 in %) is below two standard errors of the
    difference of two accuracies on ``val_images`` images, each binomial; scored on the
    same images the two are correlated, so this errs towards more seeds."""
    p, q = leader / 100, runner_up / 100
    se = 100 * math.sqrt((p * (1 - p) + q * (1 - q)) / val_images)
    return leader - runner_up < 2 * se


def _score(config: RunConfig) -> float | None:
    """A tuning run's validation top-1 (%), ``None`` if it did not finish."""
    path = Path(config.out) / run_name(config) / RESULTS
    return read_json(path)["metrics"]["linear_val_top1"] if path.exists() else None


def _ranked(configs: list[RunConfig]) -> list[int]:
    """Indices of the finished grid points, best validation top-1 first (ties: the
    earlier, so the default wins a tie)."""
    scores = [_score(c) for c in configs]
    return sorted((i for i, v in enumerate(scores) if v is not None),
                  key=lambda i: (-scores[i], i))


def _contested(configs: list[RunConfig], val_images: int) -> list[int]:
    """The top two grid points if they lie within noise of each other, else ``[]``."""
    top = _ranked(configs)[:2]
    if len(top) == 2 and within_noise(_score(configs[top[0]]), _score(configs[top[1]]),
                                      val_images):
        return top
    return []


def extra_runs(configs: list[RunConfig], seeds: list[int], val_images: int) -> list[RunConfig]:
    """The runs to add once ``configs`` (the grid at ``seeds[0]``) finished: the top two
    at each other seed of ``seeds`` when they lie within noise; none otherwise."""
    return [dataclasses.replace(configs[i], seed=seed)
            for i in _contested(configs, val_images) for seed in seeds[1:]]


def choose(configs: list[RunConfig], seeds: list[int], val_images: int) -> dict[str, Any]:
    """The best grid point by validation top-1 at ``seeds[0]`` (ties: the earlier, so
    the default wins a tie); when the top two lie within noise, the better of them by
    their mean over the seeds both finished (:func:`extra_runs`). Returns the choice
    with the grid (each point's mean and seeds), the seeds run and ``val_images``.

    Raises:
        OptionError: if no run of the grid finished.
    """
    rows = []
    for config in configs:
        runs = [dataclasses.replace(config, seed=seed) for seed in seeds]
        scored = {r.seed: v for r in runs if (v := _score(r)) is not None}
        rows.append({"lr_scale": config.lr_scale, "set": config.task_options,
                     "scores": scored, "run": run_name(config)})
    ranked = _ranked(configs)
    if not ranked:
        raise OptionError(f"no tuning run of {configs[0].task} finished; see the sweep summary")
    contested = _contested(configs, val_images)
    best = ranked[0]
    if contested:  # compare the two on the seeds both have, so neither gains a lucky one
        common = set.intersection(*(set(rows[i]["scores"]) for i in contested))
        mean = {i: sum(rows[i]["scores"][s] for s in common) / len(common) for i in contested}
        best = max(contested, key=lambda i: (mean[i], -i))
    grid_rows = [{"lr_scale": r["lr_scale"], "set": r["set"], "run": r["run"],
                  "seeds": sorted(r["scores"]),
                  "linear_val_top1": sum(r["scores"].values()) / len(r["scores"])}
                 for r in rows if r["scores"]]
    chosen = next(g for g in grid_rows if g["run"] == rows[best]["run"])
    return {"lr_scale": chosen["lr_scale"], "set": chosen["set"],
            "linear_val_top1": chosen["linear_val_top1"], "grid": grid_rows,
            "seeds": sorted({s for g in grid_rows for s in g["seeds"]}),
            "val_images": val_images, "contested": bool(contested)}


def write_tuned(path: str | Path, entries: dict[str, dict[str, Any]], budget: dict[str, Any],
                command: str) -> None:
    """Write (atomically) or update the tuned file: ``entries`` maps
    :func:`tuning_key` → :func:`row_key` → :func:`choose` output; ``budget`` and ``command``
    are recorded beside each entry."""
    path = Path(path)
    data = load_tuned(path, option="-o") if path.exists() else {}
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for key, tasks in entries.items():
        entry = data.setdefault(key, {"budget": budget, "command": command, "tasks": {}})
        entry.update(budget=budget, command=command, written_at=stamp)
        entry["tasks"].update(tasks)
    plain = json.loads(json.dumps(data))  # tuples → lists, for a plain YAML file
    atomic_write_text(path, "# ssl-bench tune: chosen on validation top-1, never on test, at "
                      "tuning seeds that run and sweep --tuned refuse to report\n"
                      + yaml.safe_dump(plain, sort_keys=True))


def load_tuned(path: str | Path, option: str = "--tuned") -> dict[str, Any]:
    """Parse a tuned file and check it has the shape :func:`write_tuned` writes:
    ``<dataset>/<backbone>`` → ``tasks`` → :func:`row_key` → ``lr_scale`` (a positive
    number), ``set`` (a mapping), optional ``seeds`` (the tuning seeds, integers) and
    an optional ``grid`` of such points with their ``linear_val_top1``.

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
            seeds = choice.get("seeds", [])
            if not (isinstance(seeds, list) and all(type(x) is int for x in seeds)):
                return f"{where}.seeds is {seeds!r:.40}, not a list of integers"
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
    """``config`` with the tuned learning-rate scale and knob setting of its row
    (:func:`row_key`: its task and its fixed ``--set`` options); explicit ``--set``
    options win. Reference tasks are not tuned and pass through.

    Raises:
        OptionError: a run at one of the file's tuning seeds (:func:`tuning_seeds`:
            it would report a run that the choice was made on), a pretraining task
            without an entry for its row, dataset and backbone, or a tuned setting
            outside its task's declared range (naming the file and the key).
    """
    if not is_tuned(config.task):
        return config
    data = load_tuned(path)
    key, row = tuning_key(config.dataset, config.backbone), row_key(config.task,
                                                                   config.task_options)
    tuned = data.get(key, {}).get("tasks", {}).get(row)
    if tuned is None:
        fixed = row.removeprefix(config.task).split()
        sets = "".join(f" --set {option}" for option in fixed)
        held = f" with {' '.join(fixed)}" if fixed else ""
        raise OptionError(f"--tuned {path} has no entry for task {config.task!r}{held} on "
                          f"{key}; run ssl-bench tune --tasks {config.task}{sets} with that "
                          "dataset and backbone first")
    _check_setting(config, tuned["set"], f"--tuned {path}: {key}.tasks.{row}.set")
    seeds = tuning_seeds(data)
    if config.seed in seeds:
        raise OptionError(
            f"seed {config.seed}: --tuned {path} was tuned at seed(s) "
            f"{' '.join(map(str, sorted(seeds)))}, and a run at a tuning seed would report "
            "the run its choice was made on; report other seeds (e.g. 0 1 2 against a file "
            f"tuned at {' '.join(map(str, TUNING_SEEDS))}; files written before tune recorded "
            "its seeds count as tuned at their budget's seed, 0 if none: tune them again)")
    return dataclasses.replace(config, lr_scale=float(tuned["lr_scale"]),
                               task_options={**tuned["set"], **config.task_options},
                               tuned=str(path))


def tuning_seeds(data: dict[str, Any]) -> set[int]:
    """Every seed a parsed tuned file (:func:`load_tuned`) was tuned at: each row's
    ``seeds``, or for rows written before tune recorded them, their entry's
    ``budget.seed`` (tune's ``--seed``), else :data:`OLD_TUNING_SEED`."""
    seeds = set()
    for entry in data.values():
        budget = entry.get("budget")
        old = budget.get("seed") if isinstance(budget, dict) else None
        old = old if isinstance(old, int) else OLD_TUNING_SEED
        for choice in entry["tasks"].values():
            seeds.update(choice.get("seeds", [old]))
    return seeds


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
