"""``ssl-bench sweep``: run a grid of configurations, skipping, resuming and
surviving failures, so one command can be re-issued until the grid is done."""

from __future__ import annotations

import dataclasses
import json
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ssl_bench import distributed
from ssl_bench.config import RunConfig, recorded_differences, run_name
from ssl_bench.core.errors import IncompatibleError, Interrupted
from ssl_bench.core.rundir import RESULTS, atomic_write_text

#: Written into a run directory when its run raised an error.
ERROR_FILE = "error.txt"


@dataclass
class SweepOutcome:
    """What happened to each run of a sweep (run directory names).

    Attributes:
        finished: runs completed by this sweep (resumed ones included).
        resumed: of those, runs continued from an existing directory.
        skipped: runs that had finished before (``results.json`` present).
        incompatible: (name, reason) of task/backbone/dataset combinations that
            cannot work together (e.g. MAE on a CNN); not failures.
        failed: (name, error message) of runs that raised.
    """

    finished: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    incompatible: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the terminal: counts, then each failure with its reason."""
        lines = [f"sweep: {len(self.finished)} finished ({len(self.resumed)} resumed), "
                 f"{len(self.skipped)} already done, {len(self.incompatible)} incompatible, "
                 f"{len(self.failed)} failed"]
        lines += [f"  incompatible {name}: {why}" for name, why in self.incompatible]
        lines += [f"  FAILED {name}: {why}" for name, why in self.failed]
        return "\n".join(lines)


def check_grid(configs: list[RunConfig]) -> None:
    """Refuse, before the first run, a grid with input that would fail every run it
    touches: an ``--out`` that cannot hold runs, an unknown evaluator, task, backbone
    or dataset, data that cannot be loaded or paired, a task or backbone option
    outside its range (also at the data's image size). Each dataset is loaded once and
    each distinct task built once on it, on the CPU, as the run will build it; pairs
    that cannot work together pass (the sweep reports them as incompatible).

    Raises:
        SslBenchError: the first bad input, naming its option.
    """
    from ssl_bench.build import build_task
    from ssl_bench.core.registry import EVALUATORS
    from ssl_bench.datasets import load_dataset
    from ssl_bench.datasets.pairing import with_eval_data
    from ssl_bench.core.rundir import check_writable

    specs, built = {}, set()
    for config in configs:
        check_writable(Path(config.out), f"--out {config.out}")
        for name in config.evaluators:
            EVALUATORS.get(name)
        data_key = (config.dataset, config.data_root, config.image_size, config.eval_dataset,
                    config.eval_data_root)
        if data_key not in specs:
            data = load_dataset(config.dataset, config.data_root, config.image_size,
                                download=config.download, need_labels=config.eval_dataset is None)
            labelled = None if config.eval_dataset is None else load_dataset(
                config.eval_dataset, config.eval_data_root, data.image_size,
                download=config.download, option="--eval-dataset")
            specs[data_key] = with_eval_data(data, labelled, config.dataset,
                                             config.eval_dataset).spec()
        task_key = json.dumps([data_key, config.task, config.backbone, config.task_options,
                               config.backbone_options], sort_keys=True, default=str)
        if task_key not in built:
            built.add(task_key)
            try:
                build_task(config.task, config.backbone, specs[data_key], config.task_options,
                           config.backbone_options)
            except IncompatibleError:
                pass


class Sweep:
    """Runs configurations one after another.

    For each configuration: a run directory with ``results.json`` is skipped; an
    existing directory without one (an interrupted or failed run) is continued
    with ``resume=True`` (training restarts from its last checkpoint); an
    :class:`~ssl_bench.core.errors.IncompatibleError` is recorded as incompatible;
    any other exception is recorded as a failure, its traceback written to
    ``<run dir>/error.txt``, and the sweep goes on. Ctrl-C (the trainer's
    :class:`~ssl_bench.core.errors.Interrupted`, or ``KeyboardInterrupt``) stops the
    sweep after printing the summary so far; re-running the same command
    continues it.

    Args:
        configs: the grid, in the order to run it.
        run: runs one configuration (default :func:`ssl_bench.runner.run_experiment`).
        log: where progress lines go (default: stderr).
    """

    def __init__(self, configs: list[RunConfig],
                 run: Callable[[RunConfig], Any] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        if run is None:
            from ssl_bench.runner import run_experiment as run
        self.configs, self.run_one = configs, run
        # under torchrun every rank runs the same grid in step; rank 0 speaks for all
        self.log = log or (lambda line: distributed.is_main() and
                           print(line, file=sys.stderr, flush=True))

    def run(self) -> SweepOutcome:
        """Run the grid; returns what happened to each run.

        Raises:
            Interrupted, KeyboardInterrupt: re-raised after the summary so far.
        """
        outcome = SweepOutcome()
        total = len(self.configs)
        try:
            for i, config in enumerate(self.configs, 1):
                self._run_one(config, f"[{i}/{total}]", outcome)
        except KeyboardInterrupt:
            self.log(outcome.summary() + "\nsweep interrupted; run the same command to continue")
            raise
        except Interrupted as exc:
            self.log(outcome.summary() + f"\nsweep interrupted: {exc}")
            raise
        self.log(outcome.summary())
        return outcome

    def _run_one(self, config: RunConfig, step: str, outcome: SweepOutcome) -> None:
        name = run_name(config)
        run_dir = Path(config.out) / name
        differences = recorded_differences(config, run_dir)
        if differences:  # never skip, resume or overwrite a run made with other settings
            reason = f"{run_dir} was made with other settings ({', '.join(differences)})"
            outcome.failed.append((name, reason))
            self.log(f"{step} {name}: FAILED: {reason}")
            return
        if (run_dir / RESULTS).exists():
            outcome.skipped.append(name)
            self.log(f"{step} {name}: finished before, skipped")
            return
        resume = run_dir.exists()
        self.log(f"{step} {name}: {'resuming' if resume else 'starting'}")
        try:
            self.run_one(dataclasses.replace(config, resume=resume, overwrite=False))
        except Interrupted:
            raise
        except IncompatibleError as exc:
            outcome.incompatible.append((name, str(exc)))
            self.log(f"{step} {name}: incompatible, skipped: {exc}")
            return
        except Exception as exc:  # one failed run must not stop the grid
            reason = f"{exc.__class__.__name__}: {exc}"
            outcome.failed.append((name, reason))
            if run_dir.exists() and distributed.is_main():
                atomic_write_text(run_dir / ERROR_FILE, traceback.format_exc())
            self.log(f"{step} {name}: FAILED: {reason}")
            return
        outcome.finished.append(name)
        if resume:
            outcome.resumed.append(name)
        if distributed.is_main():
            (run_dir / ERROR_FILE).unlink(missing_ok=True)
