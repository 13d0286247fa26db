"""The ``ssl-bench`` command line: ``run``, ``list`` and ``leaderboard``."""

from __future__ import annotations

import argparse
import shlex
import sys

from ssl_bench.errors import OptionError, SslBenchError


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
    p.add_argument("--backbone", default="convnet",
                   help="convnet | resnet18 | vit_tiny | timm:<name> (default: convnet)")
    p.add_argument("--dataset", default="digits",
                   help="digits (embedded, offline) | mnist | fashion-mnist | cifar10 | cifar100 | "
                        "svhn | stl10 | imagefolder:<path> (default: digits)")
    p.add_argument("--data-root", help="folder with an existing copy of the dataset")
    p.add_argument("--image-size", type=int, help="resize images to this side in pixels")
    p.add_argument("--epochs", type=int, default=20, help="pretraining epochs (default: 20)")
    p.add_argument("--batch-size", type=int, default=128, help="pretraining batch (default: 128)")
    p.add_argument("--train-subset", type=int,
                   help="pretrain on a fixed, seeded subset of N train images")
    p.add_argument("--eval-train-subset", type=int,
                   help="evaluators use a fixed class-balanced subset of N labelled train "
                        "images (the same for every run; default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs", help="parent folder of run directories (default: runs)")
    p.add_argument("--name", help="run directory name (default: <task>-<backbone>-<dataset>-s<seed>"
                                  "[-<hash of non-default settings>])")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    resume.add_argument("--overwrite", action="store_true", help="delete an existing run directory")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="task_options",
                   help="override a task hyperparameter (repeatable; `ssl-bench list` shows them)")
    p.add_argument("--backbone-opt", action="append", metavar="KEY=VALUE",
                   help="backbone option, e.g. width=64 for convnet, global_pool=avg for ViTs")
    p.add_argument("--optimizer", choices=["adamw", "adam", "sgd"],
                   help="override the task's optimizer")
    p.add_argument("--lr", type=float, help="peak learning rate (other optimizers of the task "
                                            "keep their ratio to it)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--evaluators", nargs="+", default=["knn", "linear"],
                   help="evaluators on frozen features (default: knn linear)")
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--pretext-eval-images", type=int, default=2048,
                   help="size of the fixed, seeded test subset for held-out pretext "
                        "metrics (default: 2048)")
    p.add_argument("--no-download", action="store_true",
                   help="never download; fail if the dataset is not under --data-root")


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    import yaml

    from ssl_bench.config import RunConfig
    from ssl_bench.runner import run_experiment

    backbone_options = {k: yaml.safe_load(v) for k, v in
                        _key_values(args.backbone_opt, "--backbone-opt").items()}
    config = RunConfig(
        task=args.task, backbone=args.backbone, dataset=args.dataset, data_root=args.data_root,
        image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
        train_subset=args.train_subset, eval_train_subset=args.eval_train_subset, seed=args.seed, out=args.out, name=args.name,
        device=args.device, resume=args.resume, overwrite=args.overwrite,
        task_options=_key_values(args.task_options, "--set"), backbone_options=backbone_options,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, evaluators=args.evaluators,
        eval_batch_size=args.eval_batch_size, pretext_eval_images=args.pretext_eval_images,
        download=not args.no_download,
        command=" ".join(["ssl-bench", *map(shlex.quote, argv)]))
    results = run_experiment(config)
    _print_results(results)
    return 0


def _print_results(results: dict) -> None:
    print(f"\n{results['task']} / {results['backbone']} / {results['dataset']} "
          f"(seed {results['seed']}, {results['epochs']} epochs, {results['images_seen']} images seen)")
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
    import dataclasses

    from backbones import backbone_names
    from ssl_bench.data import dataset_names
    from ssl_bench.registry import EVALUATORS, TASKS, load_builtins

    load_builtins()
    print("tasks:")
    for name, cls in TASKS.items():
        print(f"  {name:18s} {cls.paper}")
        if dataclasses.is_dataclass(cls.Options):
            defaults = cls.Options()
            opts = ", ".join(f"{f.name}={_show(getattr(defaults, f.name))}"
                             for f in dataclasses.fields(cls.Options))
            print(f"  {'':18s} --set {opts}")
    print("backbones:\n  " + "\n  ".join(backbone_names()))
    print("datasets:\n  " + "\n  ".join(dataset_names()))
    print("evaluators:\n  " + "\n  ".join(EVALUATORS.names()))
    return 0


def _leaderboard(args: argparse.Namespace, _: list[str]) -> int:
    from ssl_bench.leaderboard import write_leaderboard

    frame = write_leaderboard(args.run_dirs or ["runs"], args.output)
    print(f"wrote {len(frame)} rows to {args.output} and {args.output.rsplit('.', 1)[0]}.md")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssl-bench", description="Benchmark self-supervised pretext tasks: pretrain, "
                                      "evaluate frozen features, compare on a leaderboard.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    sub.add_parser("list", help="list tasks (with their options), backbones, datasets, evaluators")
    lb = sub.add_parser("leaderboard", help="collect finished runs into a CSV + Markdown table")
    lb.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                    help="run directories or folders of them (default: runs)")
    lb.add_argument("-o", "--output", default="results/leaderboard.csv")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ssl-bench`` console script; returns the exit status
    (0 success, 2 bad input or failed run, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    handlers = {"run": _run, "list": _list, "leaderboard": _leaderboard}
    try:
        return handlers[args.command](args, argv)
    except SslBenchError as exc:
        from ssl_bench.train import Interrupted

        print(f"error: {exc}", file=sys.stderr)
        return 130 if isinstance(exc, Interrupted) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
