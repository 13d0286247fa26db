"""Frozen-feature extraction: encode a uint8 image split batch by batch into a
float32 CPU feature matrix that the evaluators consume."""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, TypeVar

import torch
import torch.nn.functional as F
from eval.progress import phase
from ssl_bench.core.images import to_float

Out = TypeVar("Out")

#: Upper bound on the width of a pooled stage feature (see :func:`stage_grid`).
MAX_STAGE_DIMS = 4096


def _encode_batches(encode: Callable[[torch.Tensor], Out], images: torch.Tensor, batch_size: int,
                    device: torch.device, autocast_dtype: torch.dtype | None,
                    progress: str | None) -> Iterator[Out]:
    """Yield ``encode`` of each batch of ``images``, converted to float in [0, 1] on
    ``device``, computed under ``no_grad`` (and autocast when a dtype is given)."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W); got {images.dtype} "
                         f"{tuple(images.shape)}")
    if len(images) == 0:
        raise ValueError("no images to encode")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    with phase(progress, len(images), "images") as counter:
        for start in range(0, len(images), batch_size):
            batch = to_float(images[start:start + batch_size].to(device, non_blocking=True))
            autocast = (contextlib.nullcontext() if autocast_dtype is None
                        else torch.autocast(device.type, dtype=autocast_dtype))
            with torch.no_grad(), autocast:
                out = encode(batch)
            yield out
            counter.update(len(batch))


def extract_features(encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     batch_size: int = 512, device: torch.device = torch.device("cpu"),
                     autocast_dtype: torch.dtype | None = None,
                     progress: str | None = None) -> torch.Tensor:
    """Encode a whole image split into frozen features.

    Args:
        encode: maps float images ``(n, C, H, W)`` in [0, 1] on ``device`` to
            features ``(n, D)`` (e.g. ``task.features`` of a task in eval mode).
        images: ``uint8`` ``(N, C, H, W)``, on any device; moved per batch.
        batch_size: images per call of ``encode``.
        device: where ``encode`` runs.
        autocast_dtype: run ``encode`` under ``torch.autocast`` with this dtype
            (e.g. ``torch.bfloat16`` on CUDA); ``None``: full precision.
        progress: name of the phase whose progress is shown on stderr
            (:func:`eval.progress.phase`), e.g. ``"train features"``; ``None``:
            nothing shown.

    Returns:
        ``float32`` ``(N, D)`` CPU tensor.

    Raises:
        ValueError: images not ``uint8`` ``(N, C, H, W)`` or empty, a batch size
            < 1, or ``encode`` not returning ``(n, D)`` for a batch of n.
    """
    chunks = []
    for out in _encode_batches(encode, images, batch_size, device, autocast_dtype, progress):
        if out.ndim != 2:
            raise ValueError(f"encode must return (n, D) features, got {tuple(out.shape)}")
        chunks.append(out.float().cpu())
    return torch.cat(chunks)


def stage_grid(channels: int, height: int, width: int, max_dims: int = MAX_STAGE_DIMS) -> int:
    """Side g of the grid a ``(C, h, w)`` stage map is average-pooled to.

    The rule: the largest g ≤ min(h, w) with C·g² ≤ ``max_dims``, and at least
    1 (global average pooling when C alone exceeds ``max_dims``). Every stage
    thus gives features of comparable width, at most ``max_dims`` (4096 by
    default) unless C > ``max_dims``: a 32-channel 32×32 map becomes 11×11
    (3872 dims), a 256-channel 4×4 map 4×4 (4096), a 512-channel map 2×2
    (2048). This follows the per-layer linear classification of split-brain
    autoencoders (Zhang, Isola & Efros, CVPR 2017), which resizes each layer's
    map to about 9k dimensions; the bound is lower here because our images
    and datasets are far smaller than ImageNet's.

    Args:
        channels: C.
        height: h.
        width: w.
        max_dims: the bound on C·g².

    Returns:
        g ≥ 1.
    """
    return max(1, min(height, width, math.isqrt(max_dims // channels)))


def extract_features_and_stages(encode: Callable[[torch.Tensor],
                                                 tuple[torch.Tensor, list[torch.Tensor]]],
                                images: torch.Tensor, batch_size: int = 512,
                                device: torch.device = torch.device("cpu"),
                                autocast_dtype: torch.dtype | None = None,
                                progress: str | None = None, max_dims: int = MAX_STAGE_DIMS
                                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Pooled features and pooled per-stage features of a split from one pass.

    Each stage map ``(n, C_i, h_i, w_i)`` is adaptive-average-pooled to a
    g_i × g_i grid with g_i = :func:`stage_grid` ``(C_i, h_i, w_i, max_dims)``
    and flattened channel-major, giving ``D_i = C_i · g_i²`` features.

    Args:
        encode: maps float images ``(n, C, H, W)`` in [0, 1] to features
            ``(n, D)`` and stage maps ``(n, C_i, h_i, w_i)`` (e.g.
            ``task.features_and_stages``).
        images, batch_size, device, autocast_dtype, progress: as in
            :func:`extract_features`.
        max_dims: the bound on each stage's width (see :func:`stage_grid`).

    Returns:
        ``float32`` ``(N, D)`` and one ``float32`` ``(N, D_i)`` per stage, on the CPU.

    Raises:
        ValueError: as in :func:`extract_features`, or ``encode`` returning
            features that are not ``(n, D)`` or stages that are not 4-D maps.
    """
    features, stages = [], []
    for out, maps in _encode_batches(encode, images, batch_size, device, autocast_dtype,
                                     progress):
        if out.ndim != 2 or any(m.ndim != 4 for m in maps):
            raise ValueError("encode must return (n, D) features and (n, C_i, h_i, w_i) maps, "
                             f"got {tuple(out.shape)} and {[tuple(m.shape) for m in maps]}")
        features.append(out.float().cpu())
        stages.append([_pool_stage(m, max_dims) for m in maps])
    return torch.cat(features), [torch.cat(stage) for stage in zip(*stages)]


def _pool_stage(stage_map: torch.Tensor, max_dims: int) -> torch.Tensor:
    """``(n, C, h, w)`` → ``(n, C·g²)`` float32 CPU, g from :func:`stage_grid`."""
    grid = stage_grid(*stage_map.shape[1:], max_dims)
    return F.adaptive_avg_pool2d(stage_map.float(), grid).flatten(1).cpu()
