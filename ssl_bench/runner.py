"""One run end to end: data → pretext task → checkpoint → frozen features → metrics."""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from eval.linear import LinearProbe
from eval.protocol import MIN_LOWSHOT_PER_CLASS, Protocol, lowshot_key, lowshot_sizes
from ssl_bench import distributed
from ssl_bench.build import build_task
from ssl_bench.config import (RunConfig, config_id, read_config_file, read_run_config,
                              recorded_differences, run_name)
from ssl_bench.core.errors import DataError, OptionError, SslBenchError
from ssl_bench.core.figures import pyplot, save_figure
from ssl_bench.core.images import to_float
from ssl_bench.core.memory import peak_memory, reset_peak_memory
from ssl_bench.core.precision import autocast, resolve_precision
from ssl_bench.core.registry import EVALUATORS, TASKS
from ssl_bench.core.rundir import (CHECKPOINT, CONFIG, METRICS, RESULTS, STEP0, RunLock,
                                   atomic_torch_save, atomic_write_json, atomic_write_yaml,
                                   check_writable, read_json, remove_temporary_files,
                                   replace_run, settle_run, staging_path, unsettled)
from ssl_bench.core.subsets import balanced_subset_indices, subset_indices
from ssl_bench.datasets import ImageData, load_dataset
from ssl_bench.datasets.base import cache_dir
from ssl_bench.datasets.pairing import with_eval_data
from ssl_bench.evaluate import EvalData, EvalSettings, evaluate_frozen
from ssl_bench.export import init_backbone, load_run_weights
from ssl_bench.provenance import git_commit, versions
from ssl_bench.train import TrainConfig, Trainer
from tasks.base import OptimConfig, PretextTask, count_parameters, held_out_rng
from tasks.options import options_to_dict

#: Test images whose features are kept for the report's 2-D projection.
FEATURE_SAMPLE = 1000
FEATURE_SAMPLE_FILE = "test_features_sample.pt"


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU.

    Raises:
        OptionError: ``cuda`` requested on a machine without CUDA.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    return torch.device(name)


def resolve_optims(task: PretextTask, config: RunConfig) -> list[OptimConfig]:
    """The task's default optimizers with the CLI overrides applied.

    ``--lr`` sets the first optimizer's LR and scales the others by the same factor,
    so ratios a paper fixes (the context encoder's 10:1) survive; ``--lr-scale``
    then multiplies them all.
    """
    optims = task.default_optim(config.batch_size)
    scale = (config.lr / optims[0].lr if config.lr is not None else 1.0) * config.lr_scale
    for o in optims:
        o.lr *= scale
        if config.optimizer is not None:
            o.name = config.optimizer
        if config.weight_decay is not None:
            o.weight_decay = config.weight_decay
        if config.warmup_epochs is not None:
            o.warmup_epochs = config.warmup_epochs
    return optims


def backbone_gflops(task: PretextTask, spec, device: torch.device) -> float | None:
    """Forward GFLOPs per image of the evaluated backbone at the dataset's size
    (``torch.utils.flop_counter``; counts a multiply–add as 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(2, spec.channels, spec.image_size, spec.image_size, device=device)
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            task.features(x)
    except Exception:  # a backbone the counter cannot trace is reported without FLOPs
        return None
    return counter.get_total_flops() / 2 / 1e9


def _input_layer(backbone: torch.nn.Module) -> torch.nn.Module | None:
    """The backbone's first module with weights (its stem convolution or patch
    embedding): every image, rotated copy, tile or patch the backbone processes goes
    through it, whichever of forward / feature_map / forward_stages the task calls."""
    return next((m for m in backbone.modules()
                 if not list(m.children()) and list(m.parameters(recurse=False))), None)


def training_compute(task: PretextTask, trainer: Trainer, optims: list[OptimConfig],
                     steps: int) -> dict[str, float | None]:
    """Measured training compute of a run, from one training step (forward, backward
    and optimizer step) of a copy of ``task`` with fresh optimizers on the run's first
    batch (:meth:`Trainer.first_batch`), under :func:`held_out_rng`: the run's task,
    optimizers and random draws are untouched, so the run is the same with or without
    this measurement.

    Returns:
        ``train_backbone_passes``: inputs (images, rotated copies, tiles, patches) the
        backbone's input layer processed per training image in that step;
        ``train_gflops_per_step``: GFLOPs of that step over all ranks
        (``torch.utils.flop_counter``, a multiply-add counted as 2 FLOPs);
        ``train_gflops``: that × ``steps``. All 0 for a task that does not train; all
        None (said on stderr) where the step cannot be measured (SyncBatchNorm under
        ``torchrun``, a module the counter cannot trace).
    """
    from torch.utils.flop_counter import FlopCounterMode

    if not trainer.optimizers:  # an untrained reference: nothing was trained
        return {"train_backbone_passes": 0.0, "train_gflops_per_step": 0.0, "train_gflops": 0.0}
    unmeasured = dict.fromkeys(["train_backbone_passes", "train_gflops_per_step",
                                "train_gflops"])
    if any(isinstance(m, torch.nn.SyncBatchNorm) for m in task.modules()):
        # its forward would wait for the other ranks, which are not stepping
        print("warning: training compute not measured (SyncBatchNorm)", file=sys.stderr)
        return unmeasured
    passes = []
    try:
        with held_out_rng():
            clone = copy.deepcopy(task)
            x, extra = trainer.first_batch()
            stem = _input_layer(clone.backbone)
            hook = stem.register_forward_pre_hook(lambda _, args: passes.append(len(args[0])))
            counter = FlopCounterMode(display=False)
            with counter, autocast(trainer.precision, trainer.device):
                clone.training_step(x, clone.configure_optimizers(optims), **extra)
            hook.remove()
    except Exception as exc:  # an op the counter cannot trace: no number, not a wrong one
        print(f"warning: training compute not measured ({exc.__class__.__name__}: {exc})",
              file=sys.stderr)
        return unmeasured
    per_step = counter.get_total_flops() * trainer.world / 1e9  # this rank's shard → all
    return {"train_backbone_passes": sum(passes) / len(x), "train_gflops_per_step": per_step,
            "train_gflops": per_step * steps}


def _check_run_dir(config: RunConfig) -> Path:
    """The run folder, after settling an ``--overwrite`` that a killed process left half
    done (the only change made before every input is checked).

    Raises:
        SslBenchError: as :func:`_check_state`, or the folder is in use.
    """
    check_writable(Path(config.out), f"--out {config.out}")
    run_dir = Path(config.out) / run_name(config)
    if distributed.is_main() and unsettled(run_dir):
        with RunLock(run_dir):
            settle_run(run_dir)
    _check_state(config, run_dir)
    return run_dir


def _check_state(config: RunConfig, run_dir: Path) -> None:
    """Refuse a run folder that this run may not use: a file stands there, it exists
    and neither --resume nor --overwrite is given, or --resume onto a damaged
    ``config.yaml`` or onto other settings."""
    if run_dir.exists() and not run_dir.is_dir():
        option = f"--name {config.name}" if config.name else "--out"
        raise OptionError(f"{option}: a file stands at {run_dir}, not a run folder; give "
                          "another --name or --out")
    if run_dir.exists() and not (config.overwrite or config.resume):
        state = "finished" if (run_dir / RESULTS).exists() else "unfinished"
        raise SslBenchError(f"run directory {run_dir} exists ({state}); pass --resume to "
                            "continue it or --overwrite to start afresh")
    if config.resume and (run_dir / CONFIG).exists():
        read_config_file(run_dir)  # a damaged file is refused naming it
    differences = recorded_differences(config, run_dir) if config.resume else []
    if differences:
        raise OptionError(f"--resume: {run_dir} was made with other settings "
                          f"({', '.join(differences)}); give another --name or --out, or "
                          "--overwrite to replace it")


def _claim(config: RunConfig, run_dir: Path) -> tuple[RunLock, Path, list[Path]]:
    """Lock the run name and make the folder this run writes in: ``run_dir``, or with
    ``--overwrite`` of an existing run its staging folder, which replaces the old run
    at the first checkpoint (or, for an untrained reference, with its results).

    Returns:
        The held lock, the folder, and the folders this made (deepest first: the
        folder, if new, then ``--out`` and its parents).

    Raises:
        SslBenchError: the name is in use, or :func:`_check_state` refuses (the folder
            changed while the inputs were checked).
    """
    created = [p for p in run_dir.parents if not p.exists()]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = RunLock(run_dir).acquire()
    except BaseException:
        _remove_empty(created)
        raise
    try:
        settle_run(run_dir)
        _check_state(config, run_dir)
        work = staging_path(run_dir) if config.overwrite and run_dir.exists() else run_dir
        if not work.exists():
            work.mkdir()
            created.insert(0, work)
        remove_temporary_files(work)  # left by a process killed mid-write
    except BaseException:
        lock.release()
        _remove_empty(created)
        raise
    return lock, work, created


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty: it holds something this run did not make
            return


def run_experiment(config: RunConfig) -> dict[str, Any]:
    """Pretrain, evaluate and write one run directory; return its ``results.json``.

    Every input is checked before the run directory is touched (``--resume`` also
    checks the settings recorded in it); the run holds a lock on its name meanwhile
    (:class:`~ssl_bench.core.rundir.RunLock`). A run that fails before its first
    checkpoint removes the folders it created (``--out`` too); with ``--overwrite``
    the old run stays until the new one has a checkpoint or results to replace it.

    Raises:
        SslBenchError: any bad input (names, options, data, an ``--out`` that cannot
            hold runs, ``--resume`` onto a run made with other settings), an
            interrupted or diverged run; the message says what to do.
    """
    evaluators = {name: EVALUATORS.get(name)() for name in config.evaluators}
    run_dir = _check_run_dir(config)
    if config.resume and (run_dir / RESULTS).exists():
        return read_json(run_dir / RESULTS)
    pretrains = TASKS.get(config.task).pretrains
    world = distributed.world_size()
    if pretrains and config.batch_size % world:
        raise OptionError(f"--batch-size {config.batch_size} is the global batch of {world} "
                          f"processes and must be divisible by {world}; give e.g. "
                          f"{config.batch_size - config.batch_size % world or world}")
    if pretrains and config.epochs == 0:
        raise OptionError(f"--epochs 0 would record an untrained network as a {config.task} "
                          "row; give --epochs ≥ 1 (--task random-init is the untrained "
                          "reference)")
    device = distributed.init(resolve_device(config.device))
    precision = resolve_precision(config.precision, device)
    data, idx, protocol, eval_data = _prepare(config, evaluators)
    spec = data.spec()
    train_idx, eval_idx, test_idx = idx
    if TASKS.get(config.task).uses_labels and data.pretrain_images is not None:
        raise OptionError(f"--task {config.task} trains with the labels of its pretraining "
                          f"images, but --dataset {config.dataset} pretrains on unlabeled ones "
                          f"({data.pretrain_split}); give a labelled --dataset without "
                          "--eval-dataset")
    if pretrains and config.batch_size > len(train_idx):
        raise OptionError(f"--batch-size {config.batch_size} is larger than the "
                          f"{len(train_idx)} pretraining images; give at most "
                          f"{len(train_idx)} or a larger --train-subset")
    torch.manual_seed(config.seed)
    task = build_task(config.task, config.backbone, spec, config.task_options,
                      config.backbone_options).to(device)
    if config.init_from and not (config.resume and (run_dir / CHECKPOINT).exists()):
        init_backbone(task, config.init_from, config.backbone, run_dir)
    if config.sync_bn:
        task = distributed.sync_batchnorm(task, device)
    optims = resolve_optims(task, config)
    epochs = config.epochs if task.pretrains else 0
    settings = {**config.to_dict(), "task_options": options_to_dict(task.options),
                "optimizers": [vars(o) | {"betas": list(o.betas)} for o in optims]}
    config_key = config_id({**settings, "epochs": epochs})
    # Only now, with every input checked on every rank, touch the run directory (rank 0).
    distributed.barrier()
    claim = distributed.on_main(lambda: _claim(config, run_dir))
    lock, work, created = claim or (None, run_dir, [])
    fresh = work in created
    try:
        return _train_and_evaluate(config, run_dir, work, task, data, idx, protocol, eval_data,
                                   device, precision, optims, epochs, settings, config_key)
    except BaseException:
        if fresh and not any((work / f).exists() for f in (CHECKPOINT, RESULTS)):
            shutil.rmtree(work, ignore_errors=True)  # nothing worth resuming
        raise
    finally:
        if lock is not None:
            lock.release()
            _remove_empty(created)  # the --out folders made for a run that left nothing


def _train_and_evaluate(config: RunConfig, run_dir: Path, work: Path, task: PretextTask,
                        data: ImageData, idx: tuple[torch.Tensor, ...], protocol: Protocol,
                        eval_data: EvalData, device: torch.device, precision: str,
                        optims: list[OptimConfig], epochs: int, settings: dict[str, Any],
                        config_key: str) -> dict[str, Any]:
    """The part of :func:`run_experiment` that writes: ``config.yaml``, training,
    evaluation, figures and ``results.json``, in ``work`` (rank 0), which replaces
    ``run_dir`` at the first checkpoint or with the results when it is not ``run_dir``."""
    spec = data.spec()
    train_idx, eval_idx, test_idx = idx
    world = distributed.world_size()
    # a whole split goes uncopied (STL-10's unlabeled split is 2.7 GB)
    pretrain = data.pretraining if config.train_subset is None else data.pretraining[train_idx]
    labels = data.train_labels[train_idx] if data.pretrain_images is None else None
    trainer = Trainer(task, pretrain, spec.hflip, TrainConfig(epochs, config.batch_size,
                      config.seed), optims, work, device, labels=labels, precision=precision,
                      compile=config.compile)

    if config.resume and trainer.checkpoint_path.exists():
        trainer.load_checkpoint()  # a damaged checkpoint is refused before anything is written
    if distributed.is_main():
        _announce(config, data, idx, protocol, device, precision)
        atomic_write_yaml(work / CONFIG, {
            **settings, "task_overrides": config.task_options, "config_id": config_key,
            "data": {"train_images": len(data.train_images), "pretrain_images": len(train_idx),
                     "pretrain_split": data.pretrain_split,
                     "labelled_from": config.eval_dataset or config.dataset,
                     "eval_train_images": len(eval_idx), "test_images": len(test_idx),
                     "lowshot_labels": protocol.lowshot, "channels": spec.channels,
                     "image_size": spec.image_size, "num_classes": data.num_classes},
            "device_resolved": str(device), "precision_resolved": precision,
            "world_size": world, "versions": versions(), "git_commit": git_commit(),
        })

    def take_place() -> None:
        """Replace the old run with this one (``--overwrite``), once it has something."""
        replace_run(run_dir, work)
        trainer.run_dir, trainer.after_checkpoint = run_dir, None

    if work != run_dir:
        trainer.after_checkpoint = take_place
    eval_settings = EvalSettings(config.eval_batch_size, config.layer_probes, config.layer_dims,
                                 precision, config.bn_recalibrate)

    def evaluate(cache: Path | None = None) -> tuple[dict[str, Any], torch.Tensor | None]:
        return evaluate_frozen(task, eval_data, protocol, eval_settings, config.seed, device,
                               cache)

    step0 = distributed.on_main(
        lambda: _step0_reference(task, trainer, evaluate, config, work), task)
    reset_peak_memory(device)
    stats = trainer.fit()
    memory = peak_memory(device)  # of pretraining (CUDA) / of the process so far (RSS)

    def finish() -> dict[str, Any]:
        """Evaluate, draw and write ``results.json`` (rank 0 alone)."""
        nonlocal step0
        final, test_x = evaluate()
        step0_seconds = step0["eval_seconds"] if step0 is not None else 0.0
        if config.step0 and not task.pretrains:
            step0 = final  # an untrained reference is its own step 0

        figures = _save_figures(task, eval_data.test_images, trainer.run_dir, device)
        sample = _save_feature_sample(test_x, eval_data.test_labels, data.class_names,
                                      trainer.run_dir)
        results = {
            "task": task.name, "backbone": config.backbone, "dataset": config.dataset,
            "seed": config.seed, "config_id": config_key, "reference": task.reference,
            "epochs": epochs, "batch_size": trainer.batch_size,
            "pretrain_images": len(train_idx), "eval_train_images": len(eval_idx),
            "test_images": len(test_idx),
            "images_seen": stats.images_seen, "steps": stats.steps,
            "metrics": final["metrics"], "pretext": final["pretext"],
            "pretext_chance": task.pretext_chance(),
            "layers": final["layers"], "layer_best": final["layer_best"],
            "step0": None if step0 is None else {k: v for k, v in step0.items()
                                                 if k != "eval_seconds"},
            "lowshot_labels": protocol.lowshot,
            "cost": {"train_seconds": round(stats.train_seconds, 2),
                     "train_images_per_s": round(stats.images_per_s, 1),
                     "eval_seconds": final["eval_seconds"],
                     "step0_eval_seconds": step0_seconds,
                     "backbone_params": count_parameters(task.backbone),
                     "task_params": count_parameters(task),
                     "backbone_gflops_per_image": backbone_gflops(task, spec, device),
                     "feature_dim": int(test_x.shape[1]), "device": str(device),
                     "precision": precision, "world_size": world, **memory,
                     **training_compute(task, trainer, optims, stats.steps)},
            "summary": task.summary(), "config": settings, "command": config.command,
            "figures": figures, "feature_sample": sample,
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(trainer.run_dir / RESULTS, results)
        if trainer.run_dir != run_dir:  # an untrained reference: no checkpoint came first
            take_place()
        return results

    # the other ranks wait, then read what rank 0 wrote
    return distributed.on_main(finish, task) or read_json(run_dir / RESULTS)


def _prepare(config: RunConfig, evaluators: dict) -> tuple[ImageData, tuple[torch.Tensor, ...],
                                                           Protocol, EvalData]:
    """The data of a run: the dataset (with ``--eval-dataset``'s labelled splits), the
    pretraining / labelled / test indices, the evaluation protocol and what every
    evaluation sees."""
    data: ImageData = load_dataset(config.dataset, config.data_root, config.image_size,
                                   download=config.download,
                                   need_labels=config.eval_dataset is None)
    labelled = None if config.eval_dataset is None else load_dataset(
        config.eval_dataset, config.eval_data_root, data.image_size, download=config.download,
        option="--eval-dataset")
    data = with_eval_data(data, labelled, config.dataset, config.eval_dataset)
    train_idx = subset_indices(len(data.pretraining), config.train_subset, config.seed)
    # seed 0, not the run's: every run is scored against the same labelled images
    eval_idx = balanced_subset_indices(data.train_labels, config.eval_train_subset, seed=0)
    test_idx = balanced_subset_indices(data.test_labels, config.test_subset, seed=0,
                                       option="--test-subset")
    lowshot = lowshot_sizes(config.lowshot, len(data.train_images), len(eval_idx),
                            data.num_classes)
    protocol = Protocol(evaluators, lowshot, LinearProbe() if config.layer_probes else None)
    eval_data = EvalData(data.train_images[eval_idx], data.train_labels[eval_idx],
                         data.test_images[test_idx], data.test_labels[test_idx],
                         data.num_classes, data.test_images[_pretext_indices(data, config)])
    return data, (train_idx, eval_idx, test_idx), protocol, eval_data


def _announce(config: RunConfig, data: ImageData, idx: tuple[torch.Tensor, ...],
              protocol: Protocol, device: torch.device, precision: str) -> None:
    """One line on stderr of what the run uses, and a warning for each low-shot
    percentage left out."""
    dropped = [f"{p:g}%" for p in config.lowshot if lowshot_key(p) not in protocol.lowshot]
    if dropped:
        print(f"warning: --lowshot {', '.join(dropped)} left out: fewer than "
              f"{MIN_LOWSHOT_PER_CLASS} labels per class of {data.name}", file=sys.stderr)
    train_idx, eval_idx, test_idx = idx
    print(f"data: {data.name}, {len(train_idx):,} pretraining images ({data.pretrain_split}); "
          f"{len(eval_idx):,} labelled / {len(test_idx):,} test images of "
          f"{config.eval_dataset or data.name}, {data.num_classes} classes, {data.image_size} px, "
          f"{data.channels} channel(s); evaluators {', '.join(protocol.evaluators)}"
          f"{', layer probes' if config.layer_probes else ''}; {device}, {precision}",
          file=sys.stderr)


def reevaluate(run_dir: str | Path, bn_recalibrate: bool) -> dict[str, Any]:
    """Evaluate a finished run's trained task again, with the run's own data and
    protocol but BatchNorm re-estimation switched as asked (``ssl-bench evaluate``).

    Returns:
        The evaluation record (see :func:`ssl_bench.evaluate.evaluate_frozen`).

    Raises:
        DataError: if ``run_dir`` has no ``config.yaml`` or no finished training.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RESULTS).exists():
        raise DataError(f"{run_dir} is not a finished run (no {RESULTS})")
    config, stored = read_run_config(run_dir)
    device = resolve_device(config.device)
    evaluators = {name: EVALUATORS.get(name)() for name in config.evaluators}
    data, _, protocol, eval_data = _prepare(config, evaluators)
    torch.manual_seed(config.seed)
    task = build_task(config.task, config.backbone, data.spec(), config.task_options,
                      config.backbone_options).to(device)
    load_run_weights(task, run_dir, config, device)
    # runs made before --precision extracted features in bf16 on CUDA only
    precision = stored.get("precision_resolved") or ("bf16" if device.type == "cuda" else "fp32")
    settings = EvalSettings(config.eval_batch_size, config.layer_probes, config.layer_dims,
                            precision, bn_recalibrate)
    record, _ = evaluate_frozen(task, eval_data, protocol, settings, config.seed, device)
    return record


def _pretext_indices(data: ImageData, config: RunConfig) -> torch.Tensor:
    """A seeded spread of the whole test split (ImageFolder splits are sorted by class)
    for the held-out pretext metrics."""
    return subset_indices(len(data.test_images),
                          min(config.pretext_eval_images, len(data.test_images)), seed=0)


def _step0_reference(task: PretextTask, trainer: Trainer, evaluate, config: RunConfig,
                     run_dir: Path) -> dict[str, Any] | None:
    """The evaluation of the task before its first optimizer step (``step0.json``, kept
    so that a resumed run reuses it). It draws no random number that training would
    see, so a run is the same with or without it. Its backbone part comes from
    :func:`step0_cache` when an earlier run evaluated the same initial backbone the
    same way (e.g. rotation and the autoencoder at one seed). ``None`` when switched
    off, for untrained references (their final evaluation is their step 0), or when a
    run is resumed past step 0 without one (said on stderr)."""
    if not (config.step0 and task.pretrains):
        return None
    path = run_dir / STEP0
    if path.exists():
        return read_json(path)
    if trainer.checkpoint_path.exists():
        print(f"warning: {run_dir} was resumed past step 0 without a step-0 reference; "
              "its gain over initialisation is not measured", file=sys.stderr)
        return None
    with held_out_rng():  # forks torch's generators: training draws stay as they were
        record, _ = evaluate(step0_cache())
    atomic_write_json(path, record)
    return record


def step0_cache() -> Path:
    """``$SSL_BENCH_CACHE/step0``: the backbone parts of step-0 evaluations, one file
    per :func:`ssl_bench.evaluate.frozen_key`, so that a sweep pays once for each
    distinct initial backbone, normalisation and evaluation."""
    return cache_dir() / "step0"


def _save_figures(task: PretextTask, test_images: torch.Tensor, run_dir: Path,
                  device: torch.device) -> dict[str, str | None]:
    """``<task>.png`` on 8 test images across classes, and ``loss_curve.png``."""
    shown = torch.linspace(0, len(test_images) - 1, 8).long()
    with held_out_rng():
        figure = task.render(to_float(test_images[shown].to(device)))
    names: dict[str, str | None] = {"task": None, "loss": None}
    if figure is not None:
        names["task"] = f"{task.name}.png"
        save_figure(figure, run_dir / names["task"])
    if _save_loss_curve(run_dir):
        names["loss"] = "loss_curve.png"
    return names


def _save_feature_sample(test_x: torch.Tensor, test_labels: torch.Tensor,
                         class_names: list[str], run_dir: Path) -> str:
    """Save features of a fixed spread of ≤ :data:`FEATURE_SAMPLE` test images
    (``float16``) for the report's 2-D projections; returns the file name."""
    idx = subset_indices(len(test_x), min(FEATURE_SAMPLE, len(test_x)), seed=0)
    atomic_torch_save({"features": test_x[idx].half(), "labels": test_labels[idx],
                       "class_names": list(class_names)}, run_dir / FEATURE_SAMPLE_FILE)
    return FEATURE_SAMPLE_FILE


def _save_loss_curve(run_dir: Path) -> bool:
    """``loss_curve.png``: training loss against step from ``metrics.jsonl``;
    ``False`` when nothing was trained."""
    path = run_dir / METRICS
    if not path.exists():
        return False
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        return False
    fig, ax = pyplot().subplots(figsize=(5, 3))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records])
    ax.set_xlabel("step")
    ax.set_ylabel("pretext loss")
    ax.set_title(run_dir.name, fontsize=8)
    fig.tight_layout()
    save_figure(fig, run_dir / "loss_curve.png")
    return True
