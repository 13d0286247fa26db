"""One run end to end: data → pretext task → checkpoint → frozen features → metrics."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from eval.features import extract_features, extract_features_and_stages
from eval.linear import LinearProbe
from eval.protocol import Protocol, lowshot_sizes
from ssl_bench.build import build_task
from ssl_bench.config import RunConfig, config_id, run_name
from ssl_bench.core.errors import OptionError, SslBenchError
from ssl_bench.core.figures import pyplot, save_figure
from ssl_bench.core.images import to_float
from ssl_bench.core.registry import EVALUATORS
from ssl_bench.core.rundir import (CONFIG, METRICS, RESULTS, atomic_torch_save, atomic_write_json,
                                   atomic_write_yaml, read_json)
from ssl_bench.core.subsets import balanced_subset_indices, subset_indices
from ssl_bench.datasets import ImageData, load_dataset
from ssl_bench.provenance import git_commit, versions
from ssl_bench.train import TrainConfig, Trainer
from tasks.base import (OptimConfig, PretextTask, count_parameters, held_out_rng,
                        options_to_dict)

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
    so ratios a paper fixes (the context encoder's 10:1) survive.
    """
    optims = task.default_optim(config.batch_size)
    scale = config.lr / optims[0].lr if config.lr is not None else 1.0
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


def _check_run_dir(config: RunConfig) -> Path:
    run_dir = Path(config.out) / run_name(config)
    if run_dir.exists() and not (config.overwrite or config.resume):
        state = "finished" if (run_dir / RESULTS).exists() else "unfinished"
        raise SslBenchError(f"run directory {run_dir} exists ({state}); pass --resume to "
                            "continue it or --overwrite to start afresh")
    return run_dir


def run_experiment(config: RunConfig) -> dict[str, Any]:
    """Pretrain, evaluate and write one run directory; return its ``results.json``.

    Raises:
        SslBenchError: any bad input (names, options, data), an interrupted or
            diverged run; the message says what to do.
    """
    evaluators = {name: EVALUATORS.get(name)() for name in config.evaluators}
    run_dir = _check_run_dir(config)
    if config.resume and (run_dir / RESULTS).exists():
        return read_json(run_dir / RESULTS)
    device = resolve_device(config.device)

    data: ImageData = load_dataset(config.dataset, config.data_root, config.image_size,
                                   download=config.download)
    spec = data.spec()
    train_idx = subset_indices(len(data.train_images), config.train_subset, config.seed)
    # seed 0, not the run's: every run is scored against the same labelled images
    eval_idx = balanced_subset_indices(data.train_labels, config.eval_train_subset, seed=0)
    test_idx = balanced_subset_indices(data.test_labels, config.test_subset, seed=0,
                                       option="--test-subset")
    protocol = Protocol(
        evaluators,
        lowshot_sizes(config.lowshot, len(data.train_images), len(eval_idx), data.num_classes),
        LinearProbe() if config.layer_probes else None)
    torch.manual_seed(config.seed)
    task = build_task(config.task, config.backbone, spec, config.task_options,
                      config.backbone_options).to(device)
    optims = resolve_optims(task, config)
    epochs = config.epochs if task.pretrains else 0
    settings = {**config.to_dict(), "task_options": options_to_dict(task.options),
                "optimizers": [vars(o) | {"betas": list(o.betas)} for o in optims]}
    config_key = config_id({**settings, "epochs": epochs})
    # Only now, with every input checked, touch the run directory.
    if config.overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(run_dir / CONFIG, {
        **settings, "task_overrides": config.task_options, "config_id": config_key,
        "data": {"train_images": len(data.train_images), "pretrain_images": len(train_idx),
                 "eval_train_images": len(eval_idx), "test_images": len(test_idx),
                 "lowshot_labels": protocol.lowshot, "channels": spec.channels,
                 "image_size": spec.image_size, "num_classes": data.num_classes},
        "device_resolved": str(device), "versions": versions(), "git_commit": git_commit(),
    })

    trainer = Trainer(task, data.train_images[train_idx], spec.hflip,
                      TrainConfig(epochs, config.batch_size, config.seed), optims, run_dir, device,
                      labels=data.train_labels[train_idx])
    stats = trainer.fit(resume=config.resume)

    task.eval()
    eval_start = time.perf_counter()
    pretext = _held_out_pretext_metrics(task, data, config, device)
    test_images, test_labels = data.test_images[test_idx], data.test_labels[test_idx]
    train_labels = data.train_labels[eval_idx]
    (train_x, train_stages), (test_x, test_stages) = (
        _encode(task, images, config, device, split)
        for images, split in ((data.train_images[eval_idx], "train"), (test_images, "test")))
    metrics, layers = protocol.evaluate(train_x, train_labels, test_x, test_labels,
                                        data.num_classes, config.seed, train_stages,
                                        test_stages, task.backbone.stage_names)
    eval_seconds = time.perf_counter() - eval_start

    figures = _save_figures(task, test_images, run_dir, device)
    sample = _save_feature_sample(test_x, test_labels, data.class_names, run_dir)
    best = max(layers, key=lambda r: r["linear_top1"])["name"] if layers else None
    results = {
        "task": task.name, "backbone": config.backbone, "dataset": config.dataset,
        "seed": config.seed, "config_id": config_key, "reference": task.reference,
        "epochs": epochs, "batch_size": trainer.batch_size,
        "pretrain_images": len(train_idx), "eval_train_images": len(eval_idx),
        "test_images": len(test_idx),
        "images_seen": stats.images_seen, "steps": stats.steps,
        "metrics": _rounded(metrics), "pretext": _rounded(pretext),
        "layers": [_rounded(r) for r in layers], "layer_best": best,
        "lowshot_labels": protocol.lowshot,
        "cost": {"train_seconds": round(stats.train_seconds, 2),
                 "train_images_per_s": round(stats.images_per_s, 1),
                 "eval_seconds": round(eval_seconds, 2),
                 "backbone_params": count_parameters(task.backbone),
                 "task_params": count_parameters(task),
                 "backbone_gflops_per_image": backbone_gflops(task, spec, device),
                 "feature_dim": int(train_x.shape[1]), "device": str(device)},
        "summary": task.summary(), "config": settings, "command": config.command,
        "figures": figures, "feature_sample": sample,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(run_dir / RESULTS, results)
    return results


def _held_out_pretext_metrics(task: PretextTask, data: ImageData, config: RunConfig,
                              device: torch.device) -> dict[str, float]:
    """Held-out pretext metrics on a seeded spread of the whole test split
    (ImageFolder splits are sorted by class), with the task's fixed-seed draws."""
    idx = subset_indices(len(data.test_images),
                         min(config.pretext_eval_images, len(data.test_images)), seed=0)
    return task.held_out_metrics(to_float(chunk.to(device))
                                 for chunk in data.test_images[idx].split(config.eval_batch_size))


def _encode(task: PretextTask, images: torch.Tensor, config: RunConfig, device: torch.device,
            split: str) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Frozen pooled features (and per-stage features when layer probes are on)."""
    autocast = torch.bfloat16 if device.type == "cuda" else None
    if not config.layer_probes:
        return extract_features(task.features, images, config.eval_batch_size, device, autocast,
                                progress=f"{split} features"), None
    return extract_features_and_stages(task.features_and_stages, images, config.eval_batch_size,
                                       device, autocast, progress=f"{split} features",
                                       max_dims=config.layer_dims)


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


def _rounded(values: dict[str, float], digits: int = 4) -> dict[str, float]:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in values.items()}


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
