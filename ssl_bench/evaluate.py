"""Frozen-feature evaluation of a task as it stands: held-out pretext metrics, one
feature pass over the labelled and test images, and the evaluation protocol.

The runner calls :func:`evaluate_frozen` twice per run: before the first optimizer
step (the run's **step-0 reference**: the same task, seed and initialisation,
untrained) and after training; the leaderboard reports each row's gain over its
own initialisation. Every task is scored on its backbone's pooled output and
stages; a task's own representation (a code, μ) is scored besides (``code_*``).
Tasks that start from the same backbone, normalise the same way and are evaluated
the same way have bit-identical step-0 features, so the step-0 reference caches
the backbone part under :func:`frozen_key`.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from eval.features import extract_features, extract_features_and_stages
from eval.protocol import Protocol
from ssl_bench.core.images import to_float
from ssl_bench.core.precision import autocast
from ssl_bench.core.rundir import atomic_write_json
from ssl_bench.provenance import versions
from tasks.base import PretextTask

#: The folder that holds the project's packages (whose source :func:`frozen_key` hashes).
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class EvalData:
    """The images and labels every evaluation of a run sees.

    Attributes:
        train_images: ``uint8`` ``(N_train, C, H, W)``, the labelled evaluation subset.
        train_labels: ``int64`` ``(N_train,)``.
        test_images: ``uint8`` ``(N_test, C, H, W)``.
        test_labels: ``int64`` ``(N_test,)``.
        num_classes: C.
        pretext_images: ``uint8`` test images for the held-out pretext metrics.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    pretext_images: torch.Tensor


@dataclass
class EvalSettings:
    """How features are extracted: ``batch_size`` images per pass, per-layer stage
    features when ``layer_probes`` (each pooled to at most ``layer_dims``), under
    bf16 autocast when ``precision`` is ``"bf16"`` (the held-out pretext metrics too),
    and with BatchNorm statistics re-estimated on clean train images when
    ``bn_recalibrate``."""

    batch_size: int
    layer_probes: bool
    layer_dims: int
    precision: str = "fp32"
    bn_recalibrate: bool = False


@contextmanager
def recalibrated_batchnorm(task: PretextTask, images: torch.Tensor, batch_size: int,
                           device: torch.device) -> Iterator[None]:
    """Within the block, every BatchNorm layer of ``task.backbone`` holds running
    statistics re-estimated on ``images`` (``uint8`` ``(N, C, H, W)``, clean and full
    size), seen the way evaluation sees them (:meth:`PretextTask.features`): a plain
    average over all batches (``momentum=None``), no labels, no gradients. Tasks
    that train on tiles, patches or corrupted images otherwise evaluate whole clean
    images with statistics of other inputs. Afterwards the task's buffers are
    restored, so training (e.g. after a step-0 evaluation) is unaffected."""
    norms = [m for m in task.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:  # e.g. a ViT: nothing to re-estimate
        yield
        return
    saved = {name: b.clone() for name, b in task.named_buffers()}
    momenta = [m.momentum for m in norms]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for chunk in images.split(batch_size):
                task.features(to_float(chunk.to(device)))
        for m in norms:
            m.eval()
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            m.eval()
        for name, buffer in task.named_buffers():
            buffer.copy_(saved[name])


def evaluate_frozen(task: PretextTask, data: EvalData, protocol: Protocol,
                    settings: EvalSettings, seed: int, device: torch.device,
                    cache: Path | None = None) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Evaluate the task's frozen features (eval mode, no gradients): held-out pretext
    metrics, the protocol on the pooled backbone features and its stages, and, for a
    task with a representation of its own (:meth:`PretextTask.task_features`), every
    evaluator on it (``code_*`` metrics).

    Args:
        cache: a folder of earlier results of the backbone part (the protocol on the
            pooled features and stages), one ``<frozen_key>.json`` each
            (:func:`frozen_key`); a hit skips its feature extraction and fits. The
            pretext and ``code_*`` metrics depend on the task's heads and are always
            computed. ``None``: no cache.

    Returns:
        A record ``{"metrics", "layers", "layer_best", "pretext", "eval_seconds"}``
        (accuracies in %, seconds wall-clock; see :class:`eval.protocol.Evaluation`),
        with ``"cached"`` (whether the backbone part came from the cache) when a
        cache is given, and the test features ``float32`` ``(N_test, D)`` (``None``
        when they came from the cache).
    """
    task.eval()
    # The layout training leaves the task in (see Trainer), also for a checkpoint loaded
    # by `ssl-bench evaluate`: another layout runs other convolution kernels, whose ~1e-8
    # differences in fp32 are enough to flip a k-NN vote.
    task.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    with autocast(settings.precision, device):  # as in training: the losses stay fp32
        pretext = task.held_out_metrics(to_float(chunk.to(device)) for chunk
                                        in data.pretext_images.split(settings.batch_size))
    path = (None if cache is None
            else cache / f"{frozen_key(task, data, protocol, settings, seed, device)}.json")
    part, test_x = _read_cached(path), None
    has_code = type(task).task_features is not PretextTask.task_features
    with (recalibrated_batchnorm(task, data.train_images, settings.batch_size, device)
          if settings.bn_recalibrate and (part is None or has_code) else nullcontext()):
        if part is None:
            part, test_x = _backbone_part(task, data, protocol, settings, seed, device)
            _write_cached(path, part)
        code = _code_metrics(task, data, protocol, settings, seed, device) if has_code else {}
    record = {"metrics": {**part["metrics"], **code}, "layers": part["layers"],
              "layer_best": part["layer_best"], "pretext": _rounded(pretext),
              "eval_seconds": round(time.perf_counter() - start, 2)}
    if cache is not None:
        record["cached"] = test_x is None
    return record, test_x


def _backbone_part(task: PretextTask, data: EvalData, protocol: Protocol,
                   settings: EvalSettings, seed: int, device: torch.device
                   ) -> tuple[dict[str, Any], torch.Tensor]:
    """The protocol on the pooled backbone features and stages: ``{"metrics", "layers",
    "layer_best"}`` (rounded) and the test features."""
    (train_x, train_stages), (test_x, test_stages) = (
        _encode(task, images, settings, device, split)
        for images, split in ((data.train_images, "train"), (data.test_images, "test")))
    result = protocol.evaluate(train_x, data.train_labels, test_x, data.test_labels,
                               data.num_classes, seed, train_stages, test_stages,
                               task.backbone.stage_names)
    return {"metrics": _rounded(result.metrics), "layers": [_rounded(r) for r in result.layers],
            "layer_best": result.layer_best}, test_x


def _code_metrics(task: PretextTask, data: EvalData, protocol: Protocol,
                  settings: EvalSettings, seed: int, device: torch.device) -> dict[str, float]:
    """:meth:`Protocol.evaluate_code` on :meth:`PretextTask.task_features` (rounded)."""
    autocast_dtype = torch.bfloat16 if settings.precision == "bf16" else None
    train_c, test_c = (extract_features(task.task_features, images, settings.batch_size, device,
                                        autocast_dtype, progress=f"{split} code")
                       for images, split in ((data.train_images, "train"),
                                             (data.test_images, "test")))
    return _rounded(protocol.evaluate_code(train_c, data.train_labels, test_c, data.test_labels,
                                           data.num_classes, seed))


def _encode(task: PretextTask, images: torch.Tensor, settings: EvalSettings,
            device: torch.device, split: str) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Frozen pooled features (and per-stage features when layer probes are on)."""
    autocast = torch.bfloat16 if settings.precision == "bf16" else None
    if not settings.layer_probes:
        return extract_features(task.features, images, settings.batch_size, device, autocast,
                                progress=f"{split} features"), None
    return extract_features_and_stages(task.features_and_stages, images, settings.batch_size,
                                       device, autocast, progress=f"{split} features",
                                       max_dims=settings.layer_dims)


def _rounded(values: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in values.items()}


# ------------------------------------------------------------- cache of the backbone part


def frozen_key(task: PretextTask, data: EvalData, protocol: Protocol, settings: EvalSettings,
               seed: int, device: torch.device) -> str:
    """A sha256 hex digest of everything the backbone part of :func:`evaluate_frozen`
    depends on, so that equal keys mean bit-identical results: the backbone (class,
    architecture as printed, every parameter and buffer: name, dtype, shape, bytes), the
    normalisation (the classes that define ``normalize`` and the feature methods, and
    the bytes of ``normalize`` on the first labelled images: buffers and options it
    reads included), the evaluation images and labels themselves, the evaluators'
    and the protocol's settings, the extraction settings (batch size, precision, layer
    probes, BatchNorm re-estimation), the seed, the device and the numeric switches of
    torch on it, and the code (:func:`_code_version`). Errs towards a miss."""
    digest = hashlib.sha256()

    def add(*parts: Any) -> None:
        for part in parts:
            if isinstance(part, torch.Tensor):  # raw bytes, after its dtype and shape
                add(str(part.dtype), tuple(part.shape))
                part = part.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            else:
                part = repr(part).encode()
            digest.update(len(part).to_bytes(8, "little"))  # length-prefixed: unambiguous
            digest.update(part)

    cls = type(task)
    files = {Path(inspect.getfile(c)).resolve() for c in (cls, type(task.backbone))}
    # a plugin's task or backbone lies outside the project's source: its file too
    add("frozen-v1", _code_version(),
        sorted(f.read_bytes() for f in files if not f.is_relative_to(PROJECT_ROOT)))
    add(f"{type(task.backbone).__module__}.{type(task.backbone).__qualname__}", str(task.backbone))
    for name, tensor in [*task.backbone.named_parameters(), *task.backbone.named_buffers()]:
        add(name, tensor)
    add([f"{m.__module__}.{m.__qualname__}" for m in (cls.normalize, cls.features,
                                                      cls.feature_stages, cls.features_and_stages)])
    with torch.no_grad():
        add(task.normalize(to_float(data.train_images[:64].to(device))))
    add(data.train_images, data.train_labels, data.test_images, data.test_labels, data.num_classes)
    add([(name, _settings_of(e)) for name, e in protocol.evaluators.items()], protocol.lowshot,
        _settings_of(protocol.layer_probe), settings, seed)
    add(str(device), torch.get_num_threads(), torch.get_float32_matmul_precision(),
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
        torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    return digest.hexdigest()


def _settings_of(obj: Any) -> Any:
    """An evaluator's class and attributes (its settings), ``None`` for ``None``."""
    if obj is None:
        return None
    return f"{type(obj).__module__}.{type(obj).__qualname__}", sorted(vars(obj).items())


@functools.cache
def _code_version() -> tuple[str, dict[str, str]]:
    """The sha256 of the project's source (every ``.py`` of ``ssl_bench``, ``eval``,
    ``tasks``, ``backbones``) and the library versions (faiss's too: it runs the k-NN
    search), read once per process, so that it describes the code the process
    imported; a git commit would miss uncommitted edits."""
    import faiss

    digest = hashlib.sha256()
    for path in sorted(path for package in ("ssl_bench", "eval", "tasks", "backbones")
                       for path in (PROJECT_ROOT / package).rglob("*.py")):
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest(), {**versions(), "faiss": faiss.__version__}


def _read_cached(path: Path | None) -> dict[str, Any] | None:
    """The cached backbone part at ``path``; ``None`` when absent or unreadable."""
    if path is None or not path.exists():
        return None
    try:
        part = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(part, dict) or not {"metrics", "layers", "layer_best"} <= part.keys():
        return None
    print(f"eval backbone features and probes: from the cache, {path}", file=sys.stderr)
    return part


def _write_cached(path: Path | None, part: dict[str, Any]) -> None:
    """Store the backbone part (atomically); a cache that cannot be written costs the
    next run a recomputation, not this run, so it is a warning."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, part)
    except OSError as exc:
        print(f"warning: cannot write the evaluation cache {path} ({exc.strerror or exc}); "
              "the next identical step 0 is computed again", file=sys.stderr)
