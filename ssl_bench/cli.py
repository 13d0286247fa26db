"""The ``ssl-bench`` command line: ``run``, ``sweep``, ``tune``, ``list``, ``leaderboard``,
``report``, ``evaluate``, ``export``."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ssl_bench.config import RunConfig
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


def _add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="pretrain a backbone with a pretext task and evaluate it",
                       description="Pretrain a backbone with a pretext task, then score its frozen "
                                   "features with k-NN and a linear probe; writes a run directory.")
    p.add_argument("--task", required=True, help="pretext task (see `ssl-bench list`)")
    p.add_argument("--backbone", default=_default("backbone"),
                   help="convnet | resnet18 | vit_tiny | timm:<name> (default: %(default)s)")
    p.add_argument("--dataset", default=_default("dataset"),
                   help="digits (embedded, offline) | mnist | fashion-mnist | cifar10 | cifar100 | "
                        "svhn | stl10 | imagefolder:<path> (default: %(default)s). "
                        + CACHE_HELP)
    p.add_argument("--seed", type=int, default=_default("seed"))
    p.add_argument("--name", help="run directory name (default: <task>-<backbone>-<dataset>-s<seed>"
                                  "[-<hash of non-default settings>])")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    resume.add_argument("--overwrite", action="store_true",
                        help="replace an existing run directory: the new run trains in a "
                        "hidden folder beside it and takes its place at the first checkpoint "
                        "(an untrained reference: when finished); if it fails or is killed "
                        "before that, the old run is kept as it was")
    p.add_argument("--init-from", metavar="RUN_DIR",
                   help="start from the evaluated backbone of this finished run (same --backbone "
                        "and channels; recorded in config.yaml and the run name)")
    _add_settings(p)


def _add_settings(p: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``sweep``: data, budget, optimizer, evaluation."""
    p.add_argument("--data-root", help="folder with an existing copy of the dataset")
    p.add_argument("--eval-dataset",
                   help="labelled dataset whose train/test splits the evaluators use (resized "
                        "to the pretraining size); --dataset then gives the pretraining images "
                        "only, e.g. an unlabeled folder (default: --dataset's own labels)")
    p.add_argument("--eval-data-root", help="folder with an existing copy of --eval-dataset")
    p.add_argument("--image-size", type=int, help="resize images to this side in pixels")
    p.add_argument("--epochs", type=int, default=_default("epochs"),
                   help="pretraining epochs (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=_default("batch_size"),
                   help="pretraining batch (default: %(default)s)")
    p.add_argument("--train-subset", type=int,
                   help="pretrain on a fixed, seeded subset of N train images")
    p.add_argument("--eval-train-subset", type=int,
                   help="evaluators use a fixed class-balanced subset of N labelled train "
                        "images (the same for every run; default: all)")
    p.add_argument("--test-subset", type=int,
                   help="score on a fixed class-balanced subset of N test images "
                        "(the same for every run; default: the whole test split)")
    p.add_argument("--lowshot", type=float, nargs="*", default=_default("lowshot"),
                   metavar="PERCENT",
                   help="low-shot evaluation with these percentages of the train split's labels "
                        "(default: %(default)s; none: off)")
    p.add_argument("--no-layer-probes", action="store_true",
                   help="skip the linear probe of every backbone stage")
    p.add_argument("--layer-dims", type=int, default=_default("layer_dims"),
                   help="pool each stage to at most this many features for its probe "
                        "(default: %(default)s)")
    p.add_argument("--no-step0", action="store_true",
                   help="skip the step-0 reference: the same evaluation before the first "
                        "optimizer step, for each row's gain over its own initialisation")
    p.add_argument("--bn-recalibrate", action="store_true",
                   help="re-estimate BatchNorm statistics on clean, full-size train images "
                        "(no labels, no gradients) before extracting features")
    p.add_argument("--out", default=_default("out"),
                   help="parent folder of run directories (default: %(default)s)")
    p.add_argument("--device", default=_default("device"),
                   help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--precision", default=_default("precision"),
                   help="auto | fp32 | bf16: bf16 autocast for pretraining and feature "
                        "extraction; auto picks bf16 where the device computes it natively "
                        "(CUDA, CPUs with AVX512-BF16 or AMX) (default: %(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="compile the task's modules with torch.compile (slow first steps)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the global batch "
                        "(SyncBatchNorm, GPUs only) instead of each process's shard")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="task_options",
                   help="override a task hyperparameter (repeatable; `ssl-bench list` shows them)")
    p.add_argument("--backbone-opt", action="append", metavar="KEY=VALUE",
                   help="backbone option, e.g. width=64 for convnet, global_pool=avg for ViTs")
    p.add_argument("--optimizer", choices=["adamw", "adam", "sgd"],
                   help="override the task's optimizer")
    p.add_argument("--lr", type=float, help="peak learning rate (other optimizers of the task "
                                            "keep their ratio to it)")
    p.add_argument("--lr-scale", type=float, default=_default("lr_scale"),
                   help="multiply every learning rate of the task (default: %(default)s)")
    p.add_argument("--tuned", metavar="FILE",
                   help="take each task's learning-rate scale and knob setting from this "
                        "`ssl-bench tune` file (explicit --set options win)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--evaluators", nargs="+", default=_default("evaluators"),
                   help="evaluators on frozen features (default: %(default)s)")
    p.add_argument("--eval-batch-size", type=int, default=_default("eval_batch_size"))
    p.add_argument("--pretext-eval-images", type=int, default=_default("pretext_eval_images"),
                   help="size of the fixed, seeded test subset for held-out pretext "
                        "metrics (default: %(default)s)")
    p.add_argument("--no-download", action="store_true",
                   help="never download; fail if the dataset is not under --data-root")


def _add_grid(p: argparse.ArgumentParser, tasks_help: str) -> None:
    """The grid options that ``sweep`` and ``tune`` share."""
    p.add_argument("--tasks", nargs="+", required=True, help=tasks_help)
    p.add_argument("--backbones", nargs="+", default=[_default("backbone")])
    p.add_argument("--datasets", nargs="+", default=[_default("dataset")])


def _add_tune_parser(sub) -> None:
    p = sub.add_parser(
        "tune", help="choose each task's learning rate and main knob on validation",
        description="For each task: its learning rate × {1/4, 1, 4} crossed with the two "
                    "settings of its main knob (6 runs at the budget given), scored by the "
                    "linear probe's validation top-1 on a split of the labelled train "
                    "images, never on test. Writes the choices to a YAML file that run and "
                    "sweep read with --tuned.")
    _add_grid(p, "pretext tasks to tune (references are skipped)")
    p.add_argument("--seed", type=int, default=_default("seed"))
    p.add_argument("-o", "--output", default="results/tuned.yaml",
                   help="tuned file to write or update (default: %(default)s)")
    _add_settings(p)


def _add_sweep_parser(sub) -> None:
    p = sub.add_parser(
        "sweep", help="run a grid of tasks × backbones × datasets × seeds",
        description="Run every (dataset, backbone, task, seed) of the grid with the same settings. "
                    "Finished runs are skipped, interrupted ones resumed from their checkpoint, "
                    "task/backbone pairs that cannot work together are reported and skipped, "
                    "and a failed run does not stop the sweep; a summary ends it.")
    _add_grid(p, "pretext tasks (and references)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    _add_settings(p)


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

    config = _config(args, " ".join(["ssl-bench", *map(shlex.quote, argv)]),
                     task=args.task, backbone=args.backbone, dataset=args.dataset,
                     seed=args.seed, name=args.name, resume=args.resume, overwrite=args.overwrite,
                     init_from=str(Path(args.init_from).resolve()) if args.init_from else None)
    results = run_experiment(config)
    if distributed.is_main():
        _print_results(results)
    return 0


def _sweep(args: argparse.Namespace, argv: list[str]) -> int:
    from ssl_bench.sweep import Sweep

    command = " ".join(["ssl-bench", *map(shlex.quote, argv)])
    # seeds outermost: a sweep cut short still covers every task with its first seeds
    grid = [_config(args, command, task=task, backbone=backbone, dataset=dataset, seed=seed)
            for seed in args.seeds for dataset in args.datasets
            for backbone in args.backbones for task in args.tasks]
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


def _tune(args: argparse.Namespace, argv: list[str]) -> int:
    from ssl_bench.datasets import load_dataset
    from ssl_bench.sweep import Sweep
    from ssl_bench.tune import choose, grid, is_tuned, tuning_key, write_tuned

    if args.tuned:
        raise OptionError("ssl-bench tune writes a tuned file; it does not read --tuned")
    command = " ".join(["ssl-bench", *map(shlex.quote, argv)])
    tuned = [t for t in args.tasks if is_tuned(t)]
    skipped = sorted(set(args.tasks) - set(tuned))
    if skipped:
        print(f"not tuned (references keep their recipe): {', '.join(skipped)}", file=sys.stderr)
    grids = {}
    for dataset in args.datasets:
        channels = load_dataset(dataset, args.data_root, args.image_size,
                                download=not args.no_download).channels
        for backbone in args.backbones:
            for task in tuned:
                base = _config(args, command, task=task, backbone=backbone, dataset=dataset,
                               seed=args.seed)
                grids[(dataset, backbone, task)] = grid(base, channels)
    outcome = Sweep([c for configs in grids.values() for c in configs]).run()
    entries: dict = {}
    for (dataset, backbone, task), configs in grids.items():
        entries.setdefault(tuning_key(dataset, backbone), {})[task] = choose(configs)
    budget = {"train_subset": args.train_subset, "epochs": args.epochs,
              "batch_size": args.batch_size, "eval_train_subset": args.eval_train_subset,
              "seed": args.seed}
    with _writing(args.output):
        write_tuned(args.output, entries, budget, command)
    print(f"wrote {args.output}")
    return 0 if not outcome.failed else 1


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


def _print_results(results: dict) -> None:
    trained = (f"{results['epochs']} epochs, {results['images_seen']} images seen"
               if results["epochs"] else "untrained reference")
    print(f"\n{results['task']} / {results['backbone']} / {results['dataset']} "
          f"(seed {results['seed']}, {trained})")
    for section in ("pretext", "metrics"):
        for key, value in results[section].items():
            print(f"  {key:24s} {value:10.4g}" if isinstance(value, float) else
                  f"  {key:24s} {value}")
    cost = results["cost"]
    print(f"  train: {cost['train_seconds']:.1f} s at {cost['train_images_per_s']:.0f} images/s; "
          f"backbone parameters {cost['backbone_params']:,}")


def _show(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


def _list(_: argparse.Namespace, __: list[str]) -> int:
    # read from the source: importing the registries' modules would import torch (seconds)
    from ssl_bench.catalog import Catalog
    from ssl_bench.core.registry import BACKBONES, DATASETS, EVALUATORS, TASKS

    catalog = Catalog()
    print("tasks:")
    for task in catalog.tasks(TASKS):
        print(f"  {task.name:18s} {task.paper}" + (" [reference row]" if task.reference else ""))
        opts = ", ".join(f"{name}={_show(value)}" for name, value in task.options)
        if opts:
            print(f"  {'':18s} --set {opts}")
    print("backbones:\n  " + "\n  ".join(catalog.listed_names(BACKBONES)))
    print("datasets:\n  " + "\n  ".join(catalog.listed_names(DATASETS)))
    print("evaluators:\n  " + "\n  ".join(catalog.listed_names(EVALUATORS)))
    return 0


def _leaderboard(args: argparse.Namespace, _: list[str]) -> int:
    from ssl_bench.leaderboard import write_leaderboard

    with _writing(args.output):
        summary, runs = write_leaderboard(args.run_dirs or ["runs"], args.output)
    stem = args.output.rsplit(".", 1)[0]
    print(f"wrote {len(summary)} configurations ({len(runs)} runs) to {args.output}, "
          f"{stem}_runs.csv and {stem}.md")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssl-bench", description="Benchmark self-supervised pretext tasks: pretrain, "
                                      "evaluate frozen features, compare on a leaderboard.",
        epilog=CACHE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    _add_sweep_parser(sub)
    _add_tune_parser(sub)
    sub.add_parser("list", help="list tasks (with their options), backbones, datasets, evaluators")
    lb = sub.add_parser("leaderboard", help="collect finished runs into CSV + Markdown tables",
                        description="One row per configuration (mean, std, n, 95% CI over "
                                    "seeds) in OUTPUT, one row per run in <OUTPUT stem>_runs.csv, "
                                    "a readable table in <OUTPUT stem>.md.")
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
    args = build_parser().parse_args(argv)
    handlers = {"run": _run, "sweep": _sweep, "tune": _tune, "list": _list,
                "leaderboard": _leaderboard, "report": _report, "evaluate": _evaluate,
                "export": _export}
    try:
        return handlers[args.command](args, argv)
    except SslBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 130 if isinstance(exc, Interrupted) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a file the checks could not foresee (disk full, permissions)
        print(f"error: {exc.filename or 'a file'}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
