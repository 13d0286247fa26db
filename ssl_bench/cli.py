"""The ``ssl-bench`` command line: ``run``, ``sweep``, ``tune``, ``list``, ``leaderboard``,
``report``, ``evaluate``, ``export``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ssl_bench.config import MAX_SEED, RunConfig, run_name
from ssl_bench.core.precision import PRECISIONS
from ssl_bench.core.errors import Interrupted, OptionError, SslBenchError

CACHE_HELP = ("Decoded images and downloads are cached in $SSL_BENCH_CACHE (default "
              "~/.cache/ssl-bench); delete its decoded/ folder to clear the decoded copies.")


def _default(setting: str):
    """The default of a :class:`RunConfig` setting: the CLI never restates one."""
    f = next(f for f in dataclasses.fields(RunConfig) if f.name == setting)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _key_values(pairs: list[str] | None, option: str) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise OptionError(f"{option} takes KEY=VALUE, got {pair!r}")
        out[key.strip().replace("-", "_")] = value
    return out


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are the project's one-line ``error:`` (exit 2)."""

    def error(self, message: str):
        raise OptionError(message)


def _shown(value) -> str:
    """A default as a user types it: ``1 10`` for ``[1.0, 10.0]``, ``none`` for None."""
    if isinstance(value, (list, tuple)):
        return " ".join(map(_shown, value)) or "none"
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _dflt(setting: str) -> str:
    """``(default: …)`` of a :class:`RunConfig` setting."""
    return f"(default: {_shown(_default(setting))})"


def _seed(text: str) -> int:
    """``--seed``/``--seeds``: an integer from 0 to :data:`MAX_SEED`."""
    if not (text.isdigit() and int(text) <= MAX_SEED):
        raise argparse.ArgumentTypeError(
            f"give an integer from 0 to {MAX_SEED} (2**28 − 1: each step's seed must fit "
            f"torch's 64-bit generator), got {text!r}")
    return int(text)


def _device(text: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N (choices cannot express N)."""
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice {text!r}; choose auto, cpu, cuda or "
                                     "cuda:N (N: a GPU index)")


def _percent(text: str) -> float | None:
    """A ``--lowshot`` value: a percentage, or ``none`` (None: low-shot off)."""
    if text == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give percentages in (0, 100] or none, got "
                                         f"{text!r}") from None


def _groups(p: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """The option groups of ``run``, ``sweep`` and ``tune``, in the order --help shows."""
    return {title: p.add_argument_group(title, description) for title, description in (
        ("data", None), ("task", None), ("training", None),
        ("evaluation", "frozen features of the trained backbone, scored on the test split"),
        ("output", None),
        ("distributed", "launch with torchrun --nproc-per-node N ssl-bench …; --batch-size "
                        "is then the global batch, split over the N processes"))}


def _add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="pretrain a backbone with a pretext task and evaluate it",
                       description="Pretrain a backbone with a pretext task, then score its frozen "
                                   "features with k-NN and a linear probe; writes a run directory.")
    g = _groups(p)
    g["data"].add_argument(
        "--dataset", default=_default("dataset"),
        help="digits (embedded, offline) | mnist | fashion-mnist | cifar10 | cifar100 | svhn | "
             f"stl10 | imagefolder:<path> {_dflt('dataset')}. " + CACHE_HELP)
    g["task"].add_argument("--task", required=True, help="pretext task (see `ssl-bench list`)")
    g["task"].add_argument("--backbone", default=_default("backbone"),
                           help=f"convnet | resnet18 | vit_tiny | timm:<name> {_dflt('backbone')}")
    g["task"].add_argument("--init-from", metavar="RUN_DIR",
                           help="start from the evaluated backbone of this finished run (same "
                                "--backbone and channels; recorded in config.yaml and the run "
                                "name) (default: a fresh initialisation)")
    g["training"].add_argument("--seed", type=_seed, default=_default("seed"),
                               help="integer from 0 to 2**28 − 1 seeding weights, batch order, "
                                    f"corruptions and --train-subset {_dflt('seed')}")
    g["output"].add_argument("--name", help="run directory name (default: <task>-<backbone>-"
                                            "<dataset>-s<seed>[-<hash of non-default settings>])")
    resume = g["output"].add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint (default: refuse an existing "
                             "run directory)")
    resume.add_argument("--overwrite", action="store_true",
                        help="replace an existing run directory: the new run trains in a "
                        "hidden folder beside it and takes its place at the first checkpoint "
                        "(an untrained reference: when finished); if it fails or is killed "
                        "before that, the old run is kept as it was")
    _add_settings(g)


def _add_settings(g: dict[str, argparse._ArgumentGroup]) -> None:
    """Options shared by ``run``, ``sweep`` and ``tune``, into their :func:`_groups`."""
    data, task, train, ev, out = (g[k] for k in ("data", "task", "training", "evaluation",
                                                 "output"))
    data.add_argument("--data-root", help="folder with an existing copy of the dataset "
                                          "(default: the cache; digits and imagefolder: "
                                          "read no --data-root)")
    data.add_argument("--eval-dataset",
                      help="labelled dataset whose train/test splits the evaluators use (resized "
                           "to the pretraining size); --dataset then gives the pretraining images "
                           "only, e.g. an unlabeled folder (default: --dataset's own labels)")
    data.add_argument("--eval-data-root", help="folder with an existing copy of --eval-dataset "
                                               "(default: the cache)")
    data.add_argument("--image-size", type=int, metavar="PX",
                      help="resize images to this side in pixels, at least 8 (default: the "
                           "dataset's own side; imagefolder: 64)")
    data.add_argument("--train-subset", type=int, metavar="N",
                      help="pretrain on a fixed, seeded subset of N train images (default: all)")
    data.add_argument("--no-download", action="store_true",
                      help="never download; fail if the dataset is not under --data-root "
                           "(default: download a missing torchvision dataset)")
    task.add_argument("--set", action="append", metavar="KEY=VALUE", dest="task_options",
                      help="override a task hyperparameter (repeatable; `ssl-bench list` shows "
                           "them and their defaults)")
    task.add_argument("--backbone-opt", action="append", metavar="KEY=VALUE",
                      help="backbone option, e.g. width=64 for convnet, global_pool=avg for ViTs "
                           "(repeatable; default: the backbone's)")
    task.add_argument("--tuned", metavar="FILE",
                      help="take each task's learning-rate scale and knob setting from this "
                           "`ssl-bench tune` file (explicit --set options win) (default: the "
                           "task's own)")
    train.add_argument("--epochs", type=int, default=_default("epochs"),
                       help=f"passes over the pretraining images {_dflt('epochs')}")
    train.add_argument("--batch-size", type=int, default=_default("batch_size"),
                       help=f"pretraining images per optimizer step {_dflt('batch_size')}")
    train.add_argument("--optimizer", choices=["adamw", "adam", "sgd"],
                       help="override the task's optimizer (default: the task's)")
    train.add_argument("--lr", type=float,
                       help="peak learning rate per step, after warm-up; other optimizers of the "
                            "task keep their ratio to it (default: the task's, recorded in "
                            "config.yaml)")
    train.add_argument("--lr-scale", type=float, default=_default("lr_scale"),
                       help=f"multiply every learning rate of the task {_dflt('lr_scale')}")
    train.add_argument("--weight-decay", type=float,
                       help="weight decay of every optimizer: decoupled for adamw, L2 for adam "
                            "and sgd (default: the task's)")
    train.add_argument("--warmup-epochs", type=float,
                       help="linear learning-rate warm-up in epochs, fractions allowed, then a "
                            "cosine decay to 0 (default: the task's, recorded in config.yaml)")
    train.add_argument("--device", type=_device, default=_default("device"),
                       metavar="{auto,cpu,cuda,cuda:N}",
                       help=f"auto: cuda when available, else cpu {_dflt('device')}")
    train.add_argument("--precision", choices=PRECISIONS, default=_default("precision"),
                       help="bf16 autocast for pretraining and feature extraction; auto picks "
                            "bf16 where the device computes it natively (CUDA, CPUs with "
                            f"AVX512-BF16 or AMX) {_dflt('precision')}")
    train.add_argument("--compile", action="store_true",
                       help="compile the task's modules with torch.compile (slow first steps) "
                            "(default: eager)")
    ev.add_argument("--evaluators", nargs="+", default=_default("evaluators"),
                    help=f"evaluators on frozen features {_dflt('evaluators')}")
    ev.add_argument("--eval-train-subset", type=int, metavar="N",
                    help="evaluators use a fixed class-balanced subset of N labelled train "
                         "images (the same for every run; default: all)")
    ev.add_argument("--test-subset", type=int, metavar="N",
                    help="score on a fixed class-balanced subset of N test images "
                         "(the same for every run; default: the whole test split)")
    ev.add_argument("--lowshot", type=_percent, nargs="*", default=_default("lowshot"),
                    metavar="PERCENT",
                    help="low-shot evaluation with these percentages of the train split's "
                         f"labels; none or no value: off {_dflt('lowshot')}")
    ev.add_argument("--no-layer-probes", action="store_true",
                    help="skip the linear probe of every backbone stage (default: probe them)")
    ev.add_argument("--layer-dims", type=int, default=_default("layer_dims"), metavar="N",
                    help="pool each stage to at most N features for its probe "
                         f"{_dflt('layer_dims')}")
    ev.add_argument("--no-step0", action="store_true",
                    help="skip the step-0 reference: the same evaluation before the first "
                         "optimizer step, for each row's gain over its own initialisation "
                         "(default: evaluate it)")
    ev.add_argument("--bn-recalibrate", action="store_true",
                    help="re-estimate BatchNorm statistics on clean, full-size train images "
                         "(no labels, no gradients) before extracting features (default: off)")
    ev.add_argument("--eval-batch-size", type=int, default=_default("eval_batch_size"),
                    metavar="N", help="images per feature-extraction batch: memory and speed, "
                                      "not a setting the run name records "
                                      f"{_dflt('eval_batch_size')}")
    ev.add_argument("--pretext-eval-images", type=int, default=_default("pretext_eval_images"),
                    metavar="N", help="size of the fixed, seeded test subset for held-out "
                                      f"pretext metrics {_dflt('pretext_eval_images')}")
    out.add_argument("--out", default=_default("out"),
                     help=f"parent folder of run directories {_dflt('out')}")
    g["distributed"].add_argument(
        "--sync-bn", action="store_true",
        help="BatchNorm statistics over the global batch (SyncBatchNorm, GPUs only) instead of "
             "each process's shard; in a single process it changes nothing and is recorded "
             "as off (default: off)")


def _add_grid(g: dict[str, argparse._ArgumentGroup], tasks_help: str) -> None:
    """The grid options that ``sweep`` and ``tune`` share."""
    g["data"].add_argument("--datasets", nargs="+", default=[_default("dataset")],
                           help=f"datasets, as --dataset of run {_dflt('dataset')}")
    g["task"].add_argument("--tasks", nargs="+", required=True, help=tasks_help)
    g["task"].add_argument("--backbones", nargs="+", default=[_default("backbone")],
                           help=f"backbones, as --backbone of run {_dflt('backbone')}")


def _add_tune_parser(sub) -> None:
    from ssl_bench.tune import TUNING_SEEDS

    p = sub.add_parser(
        "tune", help="choose each task's learning rate and main knob on validation",
        description="For each task: its learning rate × {1/4, 1, 4} crossed with the two "
                    "settings of its main knob (6 runs at the budget given), scored by the "
                    "linear probe's validation top-1 on 10 % of all labelled train images "
                    "(5,000 on CIFAR-10), never on test. When the top two lie within two "
                    "standard errors of a difference, both run again at the other --seeds "
                    "and the better mean wins. Writes the choices and the tuning seeds to a "
                    "YAML file that run and sweep read with --tuned; they refuse to report a "
                    "run at a tuning seed. --set options other than the task's knob are held "
                    "fixed and make a row of their own (e.g. context-encoder "
                    "adversarial=false).")
    g = _groups(p)
    _add_grid(g, "pretext tasks to tune (references are skipped)")
    g["training"].add_argument("--seeds", type=_seed, nargs="+", default=list(TUNING_SEEDS),
                               help="integers from 0 to 2**28 − 1, never reported: the grid "
                                    "runs at the first, a close top two at all (default: "
                                    f"{' '.join(map(str, TUNING_SEEDS))})")
    g["output"].add_argument("-o", "--output", default="results/tuned.yaml",
                             help="tuned file to write or update (default: %(default)s)")
    _add_settings(g)


def _add_sweep_parser(sub) -> None:
    p = sub.add_parser(
        "sweep", help="run a grid of tasks × backbones × datasets × seeds",
        description="Run every (dataset, backbone, task, seed) of the grid with the same settings. "
                    "The whole grid's input is checked before the first run. "
                    "Finished runs are skipped, interrupted ones resumed from their checkpoint, "
                    "task/backbone pairs that cannot work together are reported and skipped, "
                    "and a failed run does not stop the sweep; a summary ends it.")
    g = _groups(p)
    _add_grid(g, "pretext tasks (and references)")
    g["training"].add_argument("--seeds", nargs="+", type=_seed, default=[0, 1, 2],
                               help="integers from 0 to 2**28 − 1 (default: 0 1 2)")
    _add_settings(g)


# Datasets that read no --data-root: digits is embedded in scikit-learn, an
# imagefolder: names its own path.
def _reads_no_root(dataset: str) -> bool:
    return dataset == "digits" or dataset.startswith("imagefolder:")


def _check_settings(args: argparse.Namespace, datasets: list[str]) -> None:
    """Refuse settings that nothing would read, and settle the ones whose effect
    depends on the launch (``--lowshot none``, ``--sync-bn`` in one process), once
    for a whole command.

    Raises:
        OptionError: ``--data-root`` that no dataset of the command reads,
            ``--eval-data-root`` without an ``--eval-dataset`` that reads it,
            ``--lowshot none`` beside percentages.
    """
    from ssl_bench import distributed

    if args.data_root and all(map(_reads_no_root, datasets)):
        raise OptionError(f"--data-root {args.data_root}: --dataset {' '.join(datasets)} reads "
                          "no --data-root (digits is embedded, imagefolder:<path> names its "
                          "own folder); drop it")
    if args.eval_data_root and not args.eval_dataset:
        raise OptionError(f"--eval-data-root {args.eval_data_root} is the folder of "
                          "--eval-dataset, which is not given; give --eval-dataset or drop it")
    if args.eval_data_root and _reads_no_root(args.eval_dataset):
        raise OptionError(f"--eval-data-root {args.eval_data_root}: --eval-dataset "
                          f"{args.eval_dataset} reads no folder; drop it")
    if None in args.lowshot:
        if len(args.lowshot) > 1:
            raise OptionError("--lowshot none turns low-shot evaluation off; give it alone "
                              "or give percentages")
        args.lowshot = []
    if args.sync_bn and distributed.world_size() == 1:
        # one process already has the whole batch: record what runs, plain BatchNorm
        print("warning: --sync-bn changes nothing in a single process; recorded as off",
              file=sys.stderr)
        args.sync_bn = False


def _config(args: argparse.Namespace, command: str, **names) -> "RunConfig":
    """A :class:`RunConfig` from the shared settings plus ``names`` (task, backbone, …)."""
    import yaml

    backbone_options = {k: yaml.safe_load(v) for k, v in
                        _key_values(args.backbone_opt, "--backbone-opt").items()}
    config = RunConfig(
        data_root=args.data_root, eval_dataset=args.eval_dataset,
        eval_data_root=args.eval_data_root, image_size=args.image_size, epochs=args.epochs,
        batch_size=args.batch_size, train_subset=args.train_subset,
        eval_train_subset=args.eval_train_subset, test_subset=args.test_subset,
        lowshot=list(args.lowshot), layer_probes=not args.no_layer_probes,
        step0=not args.no_step0, bn_recalibrate=args.bn_recalibrate,
        layer_dims=args.layer_dims, out=args.out, device=args.device, precision=args.precision,
        compile=args.compile, sync_bn=args.sync_bn,
        task_options=_key_values(args.task_options, "--set"), backbone_options=backbone_options,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, evaluators=args.evaluators,
        eval_batch_size=args.eval_batch_size, pretext_eval_images=args.pretext_eval_images,
        download=not args.no_download, command=command, lr_scale=args.lr_scale, **names)
    if args.tuned:
        from ssl_bench.tune import apply_tuned

        config = apply_tuned(config, args.tuned)
    return config


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from ssl_bench import distributed
    from ssl_bench.runner import run_experiment

    _check_settings(args, [args.dataset])
    config = _config(args, " ".join(["ssl-bench", *map(shlex.quote, argv)]),
                     task=args.task, backbone=args.backbone, dataset=args.dataset,
                     seed=args.seed, name=args.name, resume=args.resume, overwrite=args.overwrite,
                     init_from=str(Path(args.init_from).resolve()) if args.init_from else None)
    results = run_experiment(config)
    if distributed.is_main():
        _print_results(results, Path(config.out) / run_name(config))
    return 0


def _sweep(args: argparse.Namespace, argv: list[str]) -> int:
    from ssl_bench.sweep import Sweep, check_grid

    _check_settings(args, args.datasets)
    command = " ".join(["ssl-bench", *map(shlex.quote, argv)])
    # seeds outermost: a sweep cut short still covers every task with its first seeds
    grid = [_config(args, command, task=task, backbone=backbone, dataset=dataset, seed=seed)
            for seed in args.seeds for dataset in args.datasets
            for backbone in args.backbones for task in args.tasks]
    check_grid(grid)  # a bad name or option is refused before the first run, not per run
    outcome = Sweep(grid).run()
    return 0 if not outcome.failed else 1


@contextmanager
def _writing(path: str) -> Iterator[None]:
    """Turn a failure to write the ``-o`` file (a folder in the way, no permission)
    into one line naming it."""
    try:
        yield
    except OSError as exc:
        raise OptionError(f"-o {path}: cannot write it ({exc.strerror or exc})") from None


def _check_output_file(path: str) -> None:
    """Refuse an ``-o`` file that cannot be written: a folder, a path through a file,
    or a folder this user may not write to (it is replaced atomically, so its folder
    must be writable)."""
    from ssl_bench.core.rundir import check_writable

    if Path(path).is_dir():
        raise OptionError(f"-o {path} is a folder; give a file name")
    check_writable(Path(path).parent, f"-o {path}")


def _tune(args: argparse.Namespace, argv: list[str]) -> int:
    from ssl_bench.datasets import load_dataset
    from ssl_bench.sweep import Sweep, check_grid
    from ssl_bench.tune import (choose, extra_runs, grid, is_tuned, knob_keys, load_tuned,
                                row_key, tuning_key, validation_images, write_tuned)

    if args.tuned:
        raise OptionError("ssl-bench tune writes a tuned file; it does not read --tuned")
    # the grid sets these for every point: a value given here would be dropped unseen
    options = _key_values(args.task_options, "--set")
    chosen = sorted(k for k in options if any(k in knob_keys(t) for t in args.tasks
                                              if is_tuned(t)))
    if chosen or args.lr_scale != _default("lr_scale"):
        what = f"drop --set {chosen[0]}=… (other --set options are held fixed and make a row " \
            "of their own)" if chosen else "drop it"
        raise OptionError(f"{'--set' if chosen else '--lr-scale'}: ssl-bench tune chooses the "
                          "learning-rate scale and the task's knob itself, from the task's "
                          f"defaults; {what}")
    if args.eval_train_subset is not None:
        raise OptionError(f"--eval-train-subset {args.eval_train_subset}: ssl-bench tune gives "
                          "the probe every labelled train image, so that its validation split "
                          "(10 %) is large enough to rank the grid; drop it")
    _check_settings(args, args.datasets)
    _check_output_file(args.output)
    if Path(args.output).is_file():  # it is updated after the runs: refuse a broken one now
        load_tuned(args.output, option="-o")
    seeds = list(dict.fromkeys(args.seeds))
    command = " ".join(["ssl-bench", *map(shlex.quote, argv)])
    tuned = [t for t in args.tasks if is_tuned(t)]
    skipped = sorted(set(args.tasks) - set(tuned))
    if skipped:
        print(f"not tuned (references keep their recipe): {', '.join(skipped)}", file=sys.stderr)
    rows = {task: row_key(task, options) for task in tuned}  # a bad option stops it here
    grids, val_images = {}, {}
    for dataset in args.datasets:
        data = load_dataset(dataset, args.data_root, args.image_size,
                            download=not args.no_download, need_labels=not args.eval_dataset)
        labelled = data if not args.eval_dataset else load_dataset(
            args.eval_dataset, args.eval_data_root, data.image_size,
            download=not args.no_download, option="--eval-dataset")
        val_images[dataset] = validation_images(labelled.train_labels)
        for backbone in args.backbones:
            for task in tuned:
                base = _config(args, command, task=task, backbone=backbone, dataset=dataset,
                               seed=seeds[0])
                grids[(dataset, backbone, task)] = grid(base, data.channels)
    configs = [c for configs in grids.values() for c in configs]
    check_grid(configs)
    outcome = Sweep(configs).run()
    extra = [c for (dataset, _, _), configs in grids.items()
             for c in extra_runs(configs, seeds, val_images[dataset])]
    failed = bool(outcome.failed)
    if extra:  # the close top two, at the other tuning seeds
        failed = bool(Sweep(extra).run().failed) or failed
    entries: dict = {}
    for (dataset, backbone, task), configs in grids.items():
        choice = choose(configs, seeds, val_images[dataset])
        if choice["contested"] and len(seeds) == 1:
            print(f"warning: {task} on {dataset}/{backbone}: the top two lie within noise of "
                  "each other and --seeds gives no other seed to separate them",
                  file=sys.stderr)
        entries.setdefault(tuning_key(dataset, backbone), {})[rows[task]] = choice
    budget = {"train_subset": args.train_subset, "epochs": args.epochs,
              "batch_size": args.batch_size, "seeds": seeds}
    with _writing(args.output):
        write_tuned(args.output, entries, budget, command)
    print(f"wrote {args.output}")
    return 0 if not failed else 1


def _evaluate(args: argparse.Namespace, _: list[str]) -> int:
    from ssl_bench.core.rundir import atomic_write_json
    from ssl_bench.runner import reevaluate

    record = reevaluate(args.run_dir, args.bn_recalibrate)
    record["command"] = " ".join(["ssl-bench", *map(shlex.quote, sys.argv[1:])])
    with _writing(args.output):
        atomic_write_json(args.output, record)
    metrics = record["metrics"]
    print(f"wrote {args.output}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                                               if "top1" in k and "val" not in k))
    return 0


def _export(args: argparse.Namespace, _: list[str]) -> int:
    from ssl_bench.export import export_run

    with _writing(args.output):
        meta = export_run(args.run_dir, args.output, args.format, args.overwrite)
    model = meta["model"]
    print(f"wrote {args.output}: the {meta['backbone']} backbone of run {meta['run']} "
          f"({meta['task']}), loads into {model['library']} {model.get('name', model.get('class'))}"
          f" with strict=True")
    return 0


def _print_results(results: dict, run_dir: Path) -> None:
    """The end of ``ssl-bench run`` on stdout: the headline scores against step 0,
    the pretext score against chance, the cost, the run folder, the next commands
    (:func:`ssl_bench.summary.run_summary`); every metric stays in results.json."""
    from ssl_bench.summary import run_summary

    print(run_summary(results, run_dir))


def _list(_: argparse.Namespace, __: list[str]) -> int:
    from backbones import backbone_names
    from ssl_bench.datasets import dataset_names
    from ssl_bench.core.registry import EVALUATORS, TASKS

    print(listing(TASKS.items(), backbone_names(), dataset_names(), EVALUATORS.names()), end="")
    return 0


def listing(tasks: list[tuple[str, type]], backbones: list[str], datasets: list[str],
            evaluators: list[str]) -> str:
    """What ``ssl-bench list`` prints: every task with its source and the defaults of
    its ``Options`` dataclass, then the backbone, dataset and evaluator names."""
    lines = ["tasks:"]
    for name, cls in tasks:
        lines.append(f"  {name:18s} {cls.paper}" + (" [reference row]" if cls.reference else ""))
        defaults = cls.Options()
        opts = ", ".join(f"{f.name}={_show(getattr(defaults, f.name))}"
                         for f in dataclasses.fields(defaults))
        if opts:
            lines.append(f"  {'':18s} --set {opts}")
    for title, names in (("backbones", backbones), ("datasets", datasets),
                         ("evaluators", evaluators)):
        lines.append(f"{title}:\n  " + "\n  ".join(names))
    return "\n".join(lines) + "\n"


def _show(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


def _leaderboard(args: argparse.Namespace, _: list[str]) -> int:
    from ssl_bench.leaderboard import output_paths, write_leaderboard

    with _writing(args.output):
        summary, runs = write_leaderboard(args.run_dirs or ["runs"], args.output)
    csv_path, runs_path, md_path = output_paths(args.output)
    print(f"wrote {len(summary)} configurations ({len(runs)} runs) to {csv_path}, "
          f"{runs_path} and {md_path}")
    return 0


def _add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="write a Markdown report with the leaderboard and figures",
                       description="Write <out>/README.md: how the runs were made, their budget, "
                                   "the seed-aggregated leaderboard and figures (<out>/figures/).")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                   help="run directories or folders of them (default: runs)")
    p.add_argument("-o", "--output", default="results", help="report folder (default: results)")
    p.add_argument("--title", default="ssl-bench report", help="the report's heading")
    p.add_argument("--tuned", metavar="FILE",
                   help="an `ssl-bench tune` file whose grid and choices the report prints")
    p.add_argument("--sweep-command", action="append", metavar="TEXT",
                   help="the command that made the runs, printed verbatim (repeatable)")


def _report(args: argparse.Namespace, _: list[str]) -> int:
    from ssl_bench.report import build_report

    with _writing(args.output):
        readme = build_report(args.run_dirs or ["runs"], args.output, title=args.title,
                              sweep_commands=args.sweep_command, tuned=args.tuned)
    print(f"wrote {readme} (figures in {readme.parent / 'figures'})")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ssl-bench")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The ``ssl-bench`` parser; usage errors raise :class:`OptionError` (one line,
    exit 2) instead of printing the usage."""
    parser = _Parser(
        prog="ssl-bench", description="Benchmark self-supervised pretext tasks: pretrain, "
                                      "evaluate frozen features, compare on a leaderboard.",
        epilog=CACHE_HELP)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    _add_sweep_parser(sub)
    _add_tune_parser(sub)
    sub.add_parser("list", help="list tasks (with their options), backbones, datasets, evaluators")
    lb = sub.add_parser("leaderboard", help="collect finished runs into CSV + Markdown tables",
                        description="One row per configuration (mean, std, n, 95% CI over "
                                    "seeds) in <NAME>.csv, one row per run in <NAME>_runs.csv, "
                                    "a readable table in <NAME>.md, where NAME is OUTPUT less "
                                    "a .csv or .md suffix.")
    lb.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                    help="run directories or folders of them (default: runs)")
    lb.add_argument("-o", "--output", default="results/leaderboard.csv",
                    help="aggregated CSV (default: results/leaderboard.csv)")
    _add_report_parser(sub)
    ev = sub.add_parser("evaluate", help="evaluate a finished run's trained task again",
                        description="Re-run the evaluation of a finished run (its data, "
                                    "protocol and trained weights) with other evaluation "
                                    "settings; writes the record as JSON to OUTPUT.")
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument("--bn-recalibrate", action="store_true",
                    help="re-estimate BatchNorm statistics on clean, full-size train images")
    ev.add_argument("-o", "--output", required=True, help="JSON file to write")
    ex = sub.add_parser("export", help="write a finished run's evaluated backbone weights",
                        description="Write the backbone whose features a finished run evaluated, "
                                    "in the key layout of its plain model (timm.create_model(name,"
                                    " num_classes=0, …) or ConvNet), with metadata saying how to "
                                    "build it and normalise its input.")
    ex.add_argument("run_dir", metavar="RUN_DIR")
    ex.add_argument("-o", "--output", required=True, help="file to write")
    ex.add_argument("--format", choices=["safetensors", "state_dict"], default="safetensors",
                    help="safetensors, or a torch.save'd {'state_dict', 'metadata'} "
                         "(default: %(default)s)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ssl-bench`` console script; returns the exit status
    (0 success, 2 bad input or failed run, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else argv
    handlers = {"run": _run, "sweep": _sweep, "tune": _tune, "list": _list,
                "leaderboard": _leaderboard, "report": _report, "evaluate": _evaluate,
                "export": _export}
    try:
        args = build_parser().parse_args(argv)
        return handlers[args.command](args, argv)
    except SslBenchError as exc:
        return _fail(str(exc), 130 if isinstance(exc, Interrupted) else 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a file the checks could not foresee (disk full, permissions)
        return _fail(f"{exc.filename or 'a file'}: {exc.strerror or exc}", 2)


def _fail(message: str, status: int) -> int:
    """Print ``error: <message>`` on stderr and return ``status``; under torchrun, one
    line for all ranks (:func:`ssl_bench.distributed.report_failure`)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from ssl_bench.distributed import report_failure

        return report_failure(message, status)
    print(f"error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
