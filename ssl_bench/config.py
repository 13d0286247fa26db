"""The resolved settings of one run and the name of its directory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssl_bench.core.errors import DataError, OptionError
from ssl_bench.core.precision import PRECISIONS
from ssl_bench.core.rundir import CONFIG, NAME_DECORATION

# Settings that say where a run is stored, how it is launched or shown: not what it measures.
# sync_bn, like the world size (config.yaml), says how training is split over processes.
NOT_MEASURED = {"data_root", "eval_data_root", "out", "device", "resume", "overwrite", "download",
                "name", "command", "eval_batch_size", "step0", "tuned", "compile", "sync_bn"}
# Settings added after runs were recorded, with their default: left out of the config_id
# at that default, so the runs recorded before keep theirs.
ADDED_LATER = {"init_from": None, "eval_dataset": None}
# The run directory's name spells these out; its hash covers the other measured settings.
_NAMED = {"task", "backbone", "dataset", "seed"}
# A run name is one path component inside --out: never '.', '..', a separator or hidden.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# The largest seed: each step's seed, (seed · 1,000,003 + step) · 65,537 + rank
# (ssl_bench.distributed.step_seed), must fit torch's unsigned 64-bit generator seed;
# 2**28 − 1 leaves room for 10**13 steps.
MAX_SEED = 2**28 - 1
# The longest --name whose folder and lock file (``.<name>.lock``) fit in a file name.
MAX_NAME_BYTES = 255 - NAME_DECORATION


@dataclass
class RunConfig:
    """Every setting of ``ssl-bench run``; ``config.yaml`` stores it resolved.

    Attributes:
        task, backbone, dataset: registry names (``--task``, ``--backbone``, ``--dataset``).
        data_root: an existing copy of the dataset (``--data-root``).
        eval_dataset: a labelled dataset whose train/test splits the evaluators use
            instead of ``dataset``'s (``--eval-dataset``; ``None``: ``dataset``'s own).
        eval_data_root: an existing copy of ``eval_dataset`` (``--eval-data-root``).
        image_size: resize images to this side in pixels (``None``: native).
        epochs: pretraining epochs over the (subset of the) train split.
        batch_size: pretraining images per step.
        train_subset: pretrain on a fixed, seeded subset of this many train images.
        eval_train_subset: evaluators use a fixed, class-balanced subset (seed 0, the
            same for every run) of this many labelled train images.
        test_subset: score on a fixed, class-balanced subset (seed 0) of this many
            test images (``None``: the whole test split).
        lowshot: low-shot percentages of the train split's labels (see
            :mod:`eval.protocol`); empty: no low-shot evaluation.
        layer_probes: run a linear probe on every backbone stage.
        layer_dims: the bound on a stage's pooled width for those probes.
        step0: also evaluate the task before its first optimizer step (its step-0
            reference, from the same initialisation), for the gain over it.
        bn_recalibrate: re-estimate BatchNorm statistics on clean, full-size train
            images before feature extraction (see :mod:`ssl_bench.evaluate`).
        seed: seeds weights, batch order, corruptions and the subset; 0 to
            :data:`MAX_SEED`.
        out: parent folder of run directories.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``auto``, ``fp32`` or ``bf16`` for pretraining and feature
            extraction (see :mod:`ssl_bench.core.precision`; ``auto``: bf16 where the
            device computes it natively).
        compile: compile the task's modules with ``torch.compile``.
        sync_bn: under ``torchrun``, BatchNorm statistics over the global batch
            (:class:`torch.nn.SyncBatchNorm`; GPUs only) instead of each rank's shard.
        resume, overwrite: continue an existing run / delete it and start afresh.
        task_options: ``--set key=value`` task hyperparameters.
        backbone_options: ``--backbone-opt key=value`` backbone settings.
        optimizer, lr, weight_decay, warmup_epochs: override the task's optimizer
            defaults (every optimizer of the task; ``lr`` keeps their ratio).
        lr_scale: multiplies every optimizer's learning rate (``ssl-bench tune``'s grid).
        evaluators: evaluator names run on frozen features.
        eval_batch_size: images per feature-extraction batch.
        pretext_eval_images: size of the fixed, seeded subset of test images used for
            held-out pretext metrics.
        download: let torchvision download a missing dataset.
        name: run directory name (default: derived, see :func:`run_name`).
        tuned: the ``ssl-bench tune`` file whose settings this run took, if any.
        init_from: a finished run directory (absolute path) whose evaluated backbone
            this run starts from (``--init-from``; see :mod:`ssl_bench.export`).
        command: the command line that made the run.
    """

    task: str = "jigsaw"
    backbone: str = "convnet"
    dataset: str = "digits"
    data_root: str | None = None
    eval_dataset: str | None = None
    eval_data_root: str | None = None
    image_size: int | None = None
    epochs: int = 20
    batch_size: int = 128
    train_subset: int | None = None
    eval_train_subset: int | None = None
    test_subset: int | None = None
    lowshot: list[float] = field(default_factory=lambda: [1.0, 10.0])
    layer_probes: bool = True
    layer_dims: int = 4096
    step0: bool = True
    bn_recalibrate: bool = False
    seed: int = 0
    out: str = "runs"
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    sync_bn: bool = False
    resume: bool = False
    overwrite: bool = False
    task_options: dict[str, Any] = field(default_factory=dict)
    backbone_options: dict[str, Any] = field(default_factory=dict)
    optimizer: str | None = None
    lr: float | None = None
    lr_scale: float = 1.0
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    evaluators: list[str] = field(default_factory=lambda: ["knn", "linear"])
    eval_batch_size: int = 512
    pretext_eval_images: int = 2048
    download: bool = True
    name: str | None = None
    tuned: str | None = None
    init_from: str | None = None
    command: str = ""

    def __post_init__(self) -> None:
        for option, value, low in (("--epochs", self.epochs, 0),
                                   ("--batch-size", self.batch_size, 2),
                                   ("--eval-batch-size", self.eval_batch_size, 1),
                                   ("--pretext-eval-images", self.pretext_eval_images, 1),
                                   ("--layer-dims", self.layer_dims, 1)):
            if value < low:
                raise OptionError(f"{option} must be at least {low}, got {value}")
        if not 0 <= self.seed <= MAX_SEED:
            raise OptionError(f"--seed must be an integer from 0 to {MAX_SEED:,} (2**28 − 1: "
                              f"each step's seed must fit torch's 64-bit generator), got "
                              f"{self.seed}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise OptionError(f"--device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise OptionError(f"--precision must be one of {', '.join(PRECISIONS)}, got "
                              f"{self.precision!r}")
        if not self.lr_scale > 0 or self.lr_scale == float("inf"):
            raise OptionError(f"--lr-scale must be a positive number, got {self.lr_scale}")
        if self.resume and self.overwrite:
            raise OptionError("--resume and --overwrite exclude each other")
        for option, value, positive in (("--lr", self.lr, True),
                                        ("--weight-decay", self.weight_decay, False),
                                        ("--warmup-epochs", self.warmup_epochs, False)):
            if value is not None and not (math.isfinite(value) and
                                          (value > 0 if positive else value >= 0)):
                raise OptionError(f"{option} must be a finite number "
                                  f"{'> 0' if positive else '≥ 0'}, got {value}")
        if self.name is not None and not SAFE_NAME.fullmatch(self.name):
            raise OptionError(f"--name {self.name!r} is not valid: give one folder name of "
                              "letters, digits, '.', '_' or '-', starting with a letter or "
                              "digit (no '/', no '..')")
        if self.name is not None and len(self.name.encode()) > MAX_NAME_BYTES:
            raise OptionError(f"--name is {len(self.name.encode())} characters long; give at "
                              f"most {MAX_NAME_BYTES} (file names hold 255 bytes, and the "
                              "run's lock file adds to it)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_name(config: RunConfig) -> str:
    """``<task>-<backbone>-<dataset>-s<seed>[-<hash>]``.

    The hash (8 hex digits) appears when any setting that changes the result differs
    from its default, so runs with different budgets or options never share a folder.
    A dataset whose name loses characters in the folder name (an ``imagefolder:`` path
    with spaces or non-ASCII letters) gets 6 hex digits of its own, so two folders never
    share a run name.
    """
    if config.name:
        return config.name
    defaults = RunConfig()
    changed = {k: v for k, v in config.to_dict().items()
               if k not in NOT_MEASURED | _NAMED and v != getattr(defaults, k)}
    readable = config.dataset.replace("imagefolder:", "folder-").rstrip("/")
    dataset = re.sub(r"[^A-Za-z0-9_.]+", "_", readable).strip("_")[-40:]
    if dataset != readable:  # characters dropped or cut: a hash keeps the name unique
        dataset += "_" + hashlib.sha1(config.dataset.encode()).hexdigest()[:6]
    backbone = config.backbone.replace("timm:", "timm_").replace("/", "_")
    name = f"{config.task}-{backbone}-{dataset}-s{config.seed}"
    if changed:
        digest = hashlib.sha1(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()
        name += f"-{digest[:8]}"
    return name


def config_id(settings: dict[str, Any]) -> str:
    """The id of a configuration: 12 hex digits of a hash of every measured setting
    except the seed, so the seeds of one configuration share it and any other
    difference (task, backbone, dataset, budget, a resolved task option, an
    optimizer setting) gives another.

    Args:
        settings: resolved settings as recorded in ``results.json`` ``config``
            (``RunConfig`` fields with the task's resolved options and optimizers).
    """
    measured = {k: v for k, v in settings.items() if k not in NOT_MEASURED and k != "seed"
                and not (k in ADDED_LATER and v == ADDED_LATER[k])}
    return hashlib.sha1(json.dumps(measured, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_config_file(run_dir: Path) -> dict[str, Any]:
    """A run's ``config.yaml`` as recorded.

    Raises:
        DataError: naming the file when it is not UTF-8 YAML of a mapping (damaged).
    """
    path = Path(run_dir) / CONFIG
    try:
        stored = yaml.safe_load(path.read_text(encoding="utf-8"))
        problem = (None if isinstance(stored, dict) else
                   f"a YAML {type(stored).__name__}, not a mapping of settings")
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        problem = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "not valid YAML"
    if problem:
        raise DataError(f"{path} is damaged ({problem}); start the run over with --overwrite")
    return stored


def read_run_config(run_dir: Path) -> tuple[RunConfig, dict[str, Any]]:
    """A run's ``config.yaml`` as the :class:`RunConfig` it was made with (settings this
    version no longer has are dropped) and as the whole recorded dict.

    Raises:
        DataError: as :func:`read_config_file`.
    """
    stored = read_config_file(run_dir)
    config = RunConfig(**{f.name: stored[f.name] for f in dataclasses.fields(RunConfig)
                          if f.name in stored})
    return config, stored


def recorded_differences(config: RunConfig, run_dir: Path) -> list[str]:
    """The measured settings in which ``config`` differs from the ``config.yaml`` that
    ``run_dir`` was made with (task options as given, before defaults are filled in);
    empty when they agree or the folder has no ``config.yaml``. An unreadable
    ``config.yaml`` differs in everything (``["config.yaml"]``)."""
    if not (run_dir / CONFIG).exists():
        return []
    try:
        stored = read_config_file(run_dir)
    except (OSError, DataError):
        return [CONFIG]
    stored = {**stored, "task_options": stored.get("task_overrides", {})}
    return [key for key, value in config.to_dict().items()
            if key not in NOT_MEASURED and _canonical(value) != _canonical(stored.get(key))]


def _canonical(value: Any) -> str:
    """A setting as comparable text (tuples and lists, int and float keys alike)."""
    return json.dumps(value, sort_keys=True, default=str)
