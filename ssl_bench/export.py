"""Reuse a finished run's evaluated backbone: ``ssl-bench export`` and ``--init-from``.

What is exported is the module whose pooled output the run's evaluators scored, in the
key layout of its own plain definition, so that it loads with ``strict=True`` without
ssl-bench:

* ``resnet18`` and other timm CNNs: ``timm.create_model(name, pretrained=False,
  num_classes=0, in_chans=C)``; for images ≤ 64 px ``resnet18`` has the small-image
  stem (``conv1`` a 3×3 stride-1 convolution, ``maxpool`` an identity: He et al. 2016,
  §4.2), which the loader swaps in before loading. Features: ``model(x)``.
* ``vit_tiny`` and timm ViTs: ``timm.create_model(name, pretrained=False, num_classes=0,
  in_chans=C, img_size=S, patch_size=p)``. Features: ``model(x)`` (class token), or the
  patch-token mean of ``forward_features`` for ``global_pool=avg`` runs.
* ``convnet``: :class:`backbones.convnet.ConvNet` ``(in_chans, img_size, width)``.
  Features: ``model(x)``.

``x`` is the images in [0, 1] normalised as the run's task normalised them (recorded in
the metadata: the dataset's channel mean/std, or jigsaw's and relative-patch's
per-image standardisation). Runs whose evaluated features are more than one backbone's
pooled output are refused: the autoencoder family (the code), the VAE (μ), split-brain
(two half-width networks on Lab) and pixels (no weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backbones.base import Backbone
from ssl_bench.build import build_task
from ssl_bench.config import RunConfig, read_run_config
from ssl_bench.core.errors import DataError, IncompatibleError, OptionError, SslBenchError
from ssl_bench.core.rundir import CHECKPOINT, CONFIG, RESULTS, atomic_path, load_checkpoint
from ssl_bench.datasets import load_dataset
from tasks.base import PretextTask

#: Values of ``ssl-bench export --format``.
FORMATS = ("safetensors", "state_dict")
#: ``metadata["format"]`` of every exported file.
FORMAT_TAG = "ssl-bench-backbone/1"


def load_run_task(run_dir: str | Path) -> tuple[PretextTask, dict[str, Any]]:
    """A finished run's task rebuilt on the CPU as the run built it (data spec, seed,
    options) with its trained weights; torch's random generators are left as they were.

    Returns:
        The task (eval mode) and the run's ``config.yaml`` as a dict.

    Raises:
        DataError: no such folder, an unfinished run (no ``results.json``), a damaged
            ``config.yaml``, a missing, damaged or unfitting checkpoint, or the run's
            dataset cannot be loaded.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise DataError(f"{run_dir} is not a run directory (no {CONFIG})")
    if not (run_dir / RESULTS).is_file():
        raise DataError(f"{run_dir} is not a finished run (no {RESULTS}); finish it with "
                        "its own command and --resume first")
    config, stored = read_run_config(run_dir)
    spec = load_dataset(config.dataset, config.data_root, config.image_size,
                        download=config.download).spec()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)  # the run's initialisation (untrained references)
        task = build_task(config.task, config.backbone, spec, config.task_options,
                          config.backbone_options)
    load_run_weights(task, run_dir, config, torch.device("cpu"))
    return task.eval(), stored


def load_run_weights(task: PretextTask, run_dir: Path, config: RunConfig,
                     device: torch.device) -> None:
    """Give ``task``, built as the run in ``run_dir`` built it, the run's weights: its
    ``checkpoint.pt``, or for an untrained reference without one the ``--init-from``
    backbone it started from (nothing when it has neither).

    Raises:
        DataError: a task that pretrains without its checkpoint (its untrained
            initialisation is not the run), a damaged checkpoint, or one that does not
            fit the task as this version builds it.
    """
    checkpoint = Path(run_dir) / CHECKPOINT
    if not checkpoint.exists() and task.pretrains:
        raise DataError(f"{checkpoint} is missing: the trained weights of this {config.task} "
                        "run are gone (its untrained initialisation is not the run); run it "
                        "again with --overwrite")
    if checkpoint.exists():
        state = load_checkpoint(checkpoint, device)
        try:
            task.load_state_dict(state["task"])
        except (RuntimeError, KeyError) as exc:
            raise DataError(f"{checkpoint} does not fit task {config.task!r} as this version "
                            f"builds it ({exc.__class__.__name__})") from None
    elif config.init_from:
        init_backbone(task, config.init_from, config.backbone, run_dir)


def evaluated_backbone(task: PretextTask) -> Backbone:
    """``task.backbone`` when the task's evaluated features are its pooled output.

    Raises:
        IncompatibleError: for tasks evaluated on more than one backbone (the message
            quotes what they are evaluated on).
    """
    from backbones.convnet import ConvNet
    from backbones.timm_backbones import TimmCNN, TimmViT

    if type(task).features is not PretextTask.features:
        reason = _first_line(type(task).features.__doc__)
    elif not isinstance(task.backbone, (ConvNet, TimmCNN, TimmViT)):
        reason = _first_line(type(task.backbone).__doc__)
    else:
        return task.backbone
    raise IncompatibleError(
        f"task {task.name!r} is not evaluated on one backbone's pooled output ({reason}); "
        "export and --init-from take runs of the tasks whose evaluated features are the "
        "pooled backbone (README, table of pretext tasks)")


def plain_model(model: dict[str, Any]) -> nn.Module:
    """The exported backbone's own definition, from ``metadata["model"]``: the timm model
    (with the small-image stem swapped in where ``small_stem``) or a ConvNet."""
    if model["library"] == "timm":
        import timm

        net = timm.create_model(model["name"], **model["kwargs"])
        if model.get("small_stem"):
            net.conv1 = nn.Conv2d(model["kwargs"]["in_chans"], net.conv1.out_channels, 3, 1, 1,
                                  bias=False)
            net.maxpool = nn.Identity()
        return net
    from backbones.convnet import ConvNet

    return ConvNet(**model["kwargs"])


def plain_features(net: nn.Module, metadata: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """The run's evaluated features ``(N, D)`` from a :func:`plain_model` on normalised
    images ``x`` ``(N, C, H, W)``."""
    if metadata["model"].get("pooling") == "patch_token_mean":
        return net.forward_features(x)[:, net.num_prefix_tokens:].mean(dim=1)
    return net(x)


def backbone_export(task: PretextTask, stored: dict[str, Any], run: str
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The evaluated backbone's weights in its plain model's key layout (contiguous
    tensors) and the metadata that says what they are and how to use them.

    Raises:
        IncompatibleError: as :func:`evaluated_backbone`, or a timm model whose
            feature stages do not hold every weight of its plain model.
    """
    from backbones.timm_backbones import TimmCNN, TimmViT

    backbone = evaluated_backbone(task)
    weights = backbone.state_dict()
    if isinstance(backbone, TimmViT):
        vit = backbone.vit
        model = {"library": "timm", "name": vit.pretrained_cfg["architecture"], "kwargs": dict(
            pretrained=False, num_classes=0, in_chans=backbone.in_chans,
            img_size=backbone.img_size, patch_size=backbone.patch_size),
            "pooling": "class_token" if backbone.global_pool == "token" else "patch_token_mean"}
        weights = {k.removeprefix("vit."): v for k, v in weights.items()}
    elif isinstance(backbone, TimmCNN):
        model = {"library": "timm", "name": backbone.body.pretrained_cfg["architecture"],
                 "kwargs": dict(pretrained=False, num_classes=0, in_chans=backbone.in_chans),
                 "small_stem": backbone.small_stem, "pooling": "global_average"}
        weights = _to_plain_keys({k.removeprefix("body."): v for k, v in weights.items()},
                                 plain_model(model), model["name"])
    else:
        model = {"library": "ssl-bench", "class": "backbones.convnet.ConvNet",
                 "kwargs": dict(in_chans=backbone.in_chans, img_size=backbone.img_size,
                                width=backbone.stages[0][0].out_channels),
                 "pooling": "global_average"}
    if type(task).normalize is PretextTask.normalize:
        norm = {"kind": "channel", "mean": task.pixel_mean.flatten().tolist(),
                "std": task.pixel_std.flatten().tolist()}
    else:
        norm = {"kind": "task", "description": _first_line(type(task).normalize.__doc__),
                "source": f"{type(task).__module__}.{type(task).__name__}.normalize"}
    metadata = {"format": FORMAT_TAG, "task": stored["task"], "backbone": stored["backbone"],
                "dataset": stored["dataset"], "seed": stored["seed"],
                "config_id": stored.get("config_id"), "run": run, "model": model,
                "in_chans": backbone.in_chans, "img_size": stored["data"]["image_size"],
                "input": norm, "run_command": stored.get("command", "")}
    return {k: v.detach().contiguous() for k, v in weights.items()}, metadata


def export_run(run_dir: str | Path, output: str | Path, fmt: str = "safetensors",
               overwrite: bool = False) -> dict[str, Any]:
    """Write a finished run's evaluated backbone to ``output`` atomically: safetensors
    (metadata as JSON under the header key ``ssl_bench``) or ``torch.save`` of
    ``{"state_dict": …, "metadata": …}`` (loads with ``weights_only=True``). Before
    writing, the plain model is loaded strictly and its features are checked against
    the run's backbone on random images.

    Returns:
        The metadata.

    Raises:
        OptionError: an unknown ``fmt``, or ``output`` exists and not ``overwrite``.
        DataError, IncompatibleError: as :func:`load_run_task`, :func:`backbone_export`.
    """
    if fmt not in FORMATS:
        raise OptionError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    output = Path(output)
    if output.exists() and not overwrite:
        raise OptionError(f"-o {output} exists; pass --overwrite to replace it")
    task, stored = load_run_task(run_dir)
    weights, metadata = backbone_export(task, stored, Path(run_dir).resolve().name)
    _check_plain_model(task, weights, metadata)
    with atomic_path(output) as tmp:
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(weights, str(tmp), {"format": "pt", "ssl_bench": json.dumps(metadata)})
        else:
            torch.save({"state_dict": weights, "metadata": metadata}, tmp)
    return metadata


def load_export(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The :func:`plain_model` of an exported file with its weights loaded strictly
    (eval mode), and the file's metadata.

    Raises:
        DataError: a file that is neither format's, or not an ssl-bench export.
    """
    path = Path(path)
    try:
        if path.read_bytes()[:2] == b"PK":  # torch.save's zip archive
            saved = torch.load(path, map_location="cpu", weights_only=True)
            weights, metadata = saved["state_dict"], saved["metadata"]
        else:
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(path), "pt") as f:
                metadata = json.loads(f.metadata()["ssl_bench"])
            weights = load_file(str(path))
    except Exception as exc:  # any unreadable or foreign file is the same user error
        raise DataError(f"{path} is not an ssl-bench backbone export ({exc})") from None
    net = plain_model(metadata["model"])
    net.load_state_dict(weights, strict=True)
    return net.eval(), metadata


def init_backbone(task: PretextTask, source: str | Path, backbone: str,
                  run_dir: Path | None = None) -> None:
    """Load the evaluated backbone of the finished run ``source`` into ``task.backbone``
    (``--init-from``), strictly.

    Raises:
        OptionError: one line naming ``--init-from`` when ``source`` is ``run_dir``
            itself, is not a finished exportable run, or its backbone (name, channels,
            size) does not fit this run's.
    """
    source = Path(source)
    if run_dir is not None and source.resolve() == Path(run_dir).resolve():
        raise OptionError(f"--init-from {source}: a run cannot start from itself")
    try:
        source_task, stored = load_run_task(source)
        src = evaluated_backbone(source_task)
    except SslBenchError as exc:
        raise OptionError(f"--init-from {source}: {exc}") from None
    mine = task.backbone
    if stored["backbone"] != backbone or src.in_chans != mine.in_chans:
        raise OptionError(f"--init-from {source}: its backbone is {stored['backbone']} on "
                          f"{src.in_chans} channel(s), this run's {backbone} on "
                          f"{mine.in_chans}; give a run with the same --backbone and data "
                          "channels")
    try:
        mine.load_state_dict(src.state_dict(), strict=True)
    except RuntimeError as exc:
        detail = next((s.strip() for s in str(exc).splitlines()[1:] if s.strip()), str(exc))
        raise OptionError(f"--init-from {source}: its {backbone} does not fit this run's "
                          f"({detail.rstrip('.')}); give a run made with the same --backbone-opt "
                          "and image size") from None


def _to_plain_keys(weights: dict[str, torch.Tensor], plain: nn.Module,
                   name: str) -> dict[str, torch.Tensor]:
    """Rename the keys of a timm ``features_only`` body to its plain model's: the body
    flattens nested sequences (``stages.0`` → ``stages_0``).

    Raises:
        IncompatibleError: when the renamed keys are not exactly the plain model's.
    """
    plain_keys = list(plain.state_dict())
    flat = {k.replace(".", "_"): k for k in plain_keys}
    renamed = {flat.get(k.replace(".", "_"), k): v for k, v in weights.items()}
    missing = sorted(set(plain_keys) - set(renamed))
    extra = sorted(set(renamed) - set(plain_keys))
    if missing or extra or len(flat) != len(plain_keys):
        raise IncompatibleError(
            f"timm model {name!r}: the run trained its feature stages, which are not the whole "
            f"plain model (untrained: {', '.join(missing[:3]) or '-'}; unmatched: "
            f"{', '.join(extra[:3]) or '-'}); export supports timm ResNets and ViTs")
    return renamed


def _check_plain_model(task: PretextTask, weights: dict[str, torch.Tensor],
                       metadata: dict[str, Any]) -> None:
    """Load ``weights`` strictly into the plain model and compare its features with the
    run's backbone on 2 random images in fp32.

    Raises:
        IncompatibleError: if they differ (a model this export does not describe).
    """
    net = plain_model(metadata["model"]).eval()
    net.load_state_dict(weights, strict=True)
    side, chans = metadata["img_size"], metadata["in_chans"]
    x = torch.rand(2, chans, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = task.backbone(x), plain_features(net, metadata, x)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise IncompatibleError(f"the exported {metadata['backbone']} does not reproduce "
                                "the run's features; this backbone cannot be exported")


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0].rstrip(".") if doc else "undocumented"
