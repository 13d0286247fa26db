"""Batched image-tensor helpers: dtype conversion, flips, resizing."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images → floats in [0, 1] of the default dtype (``float32`` unless a caller
    set another, as the float64 data-parallel tests do), same shape."""
    return images.to(torch.get_default_dtype()).div_(255.0)


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of a ``(N, C, H, W)`` batch horizontally with probability ½."""
    # drawn on the images' device: a host-to-device copy per batch would wait for the device
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``uint8`` ``(N, C, H, W)`` images to ``(N, C, size, size)`` (bilinear,
    antialiased), 4,096 images at a time."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = [F.interpolate(chunk.float(), size=(size, size), mode="bilinear",
                         antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)
           for chunk in images.split(4096)]
    return torch.cat(out)
