"""Pixelation of patches as batched device code (relative patch location, Doersch et
al., ICCV 2015, §3.1): a patch is area-downsampled and linearly upsampled back by one
batched product with precomputed resampling matrices, so no per-size Python loop runs."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=16)
def pixelation_operators(p: int, low: int, device: torch.device) -> torch.Tensor:
    """``(p − low, p, p)`` float32 on ``device``: entry ``s − low`` is the linear map of a
    line of p pixels area-downsampled to s, then linearly upsampled back to p
    (``align_corners=False``). Both resamplings are separable, so pixelating a
    ``(p, p)`` patch to side s is ``A X Aᵀ``. Built once per (p, low, device), in float64
    on the device itself (nothing copied from the host)."""
    with torch.inference_mode(False):  # a normal tensor even if first asked for in inference
        eye = torch.eye(p, dtype=torch.float64, device=device)[:, None]         # (p, 1, p)
        maps = []
        for side in range(low, p):
            down = F.interpolate(eye, size=side, mode="area")                   # (p, 1, s)
            up = F.interpolate(down, size=p, mode="linear", align_corners=False)  # (p, 1, p)
            maps.append(up[:, 0].T)                                             # (p, p)
        return torch.stack(maps).float()                                        # (p − low, p, p)


def pixelate(patches: torch.Tensor, prob: float, min_area: float) -> torch.Tensor:
    """Downsample a random ``prob`` share of ``(M, C, p, p)`` patches and upsample them
    back (§3.1: "as little as 100 total pixels" of a 96 px patch, ``min_area`` ≈ 1.1 %)
    against sampling-artefact shortcuts. Reduced side: uniform in ``round(p √min_area)``
    …``p − 1``, at least 2 px so small patches keep some structure; area down,
    bilinear up, as one batched product with each patch's side's
    :func:`pixelation_operators` (float32, also under autocast). Same shape and dtype."""
    m, p = patches.shape[0], patches.shape[-1]
    low = max(2, round(p * math.sqrt(min_area)))
    if prob == 0 or low >= p:
        return patches
    chosen = torch.rand(m, device=patches.device) < prob                        # (M,)
    sides = torch.randint(low, p, (m,), device=patches.device)                  # (M,)
    with torch.autocast(patches.device.type, enabled=False):
        ops = pixelation_operators(p, low, patches.device)[sides - low]         # (M, p, p)
        pixelated = torch.einsum("mij,mcjk,mlk->mcil", ops, patches.float(), ops)  # A X Aᵀ
    return torch.where(chosen.view(m, 1, 1, 1), pixelated.to(patches.dtype), patches)
