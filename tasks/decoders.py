"""Decoder heads that map a backbone's feature map back to image space.

Shared by the reconstruction pretext tasks (denoising autoencoder; reusable by the
context encoder and the VAE). This module registers no task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backbones.base import Backbone
from ssl_bench.errors import IncompatibleError


@torch.no_grad()
def probe_feature_map(backbone: Backbone, in_chans: int, img_size: int) -> tuple[int, int, int]:
    """The shape ``(C', h, w)`` of ``backbone.feature_map`` for ``(N, in_chans, img_size,
    img_size)`` inputs, found by one forward pass on zeros.

    The pass runs in eval mode so that BatchNorm running statistics stay untouched;
    the backbone's training mode is restored afterwards.

    Raises:
        IncompatibleError: if the backbone cannot process inputs of that size
            (e.g. a timm CNN that downsamples an 8 px jigsaw tile below 1 px).
    """
    was_training = backbone.training
    backbone.eval()
    try:
        device = next(backbone.parameters()).device
        fmap = backbone.feature_map(torch.zeros(2, in_chans, img_size, img_size, device=device))
    except RuntimeError as exc:
        raise IncompatibleError(
            f"the backbone cannot process {img_size}×{img_size} inputs with {in_chans} channels "
            f"({exc}); use larger images (--image-size) or another backbone") from None
    finally:
        backbone.train(was_training)
    return tuple(fmap.shape[1:])


class ConvDecoder(nn.Module):
    """Upsamples a feature map ``(N, in_channels, in_size, in_size)`` to an image
    ``(N, out_channels, out_size, out_size)``.

    k = ⌈log2(out_size / in_size)⌉ stages of a 4×4 stride-2 transposed convolution,
    BatchNorm and ReLU double the side; their widths halve from ``width·2^(k-1)``
    down to ``width`` (the DCGAN generator layout, Radford et al. 2016 §3, also used
    by the context encoder's decoder, Pathak et al. 2016 §3.1). When
    ``in_size·2^k ≠ out_size`` (e.g. 28 px images: 4 → 32) the last feature map is
    resized bilinearly to ``out_size`` before a final 3×3 convolution maps it to
    ``out_channels``. The output is unbounded (a regression target or logits); the
    caller applies any sigmoid.

    Args:
        in_channels: C' of the feature map.
        in_size: its side h = w in pixels (see :func:`probe_feature_map`).
        out_channels: C of the image.
        out_size: the image side in pixels.
        width: channels of the last upsampling stage.

    Raises:
        ValueError: if any size, channel count or width is not positive.
    """

    def __init__(self, in_channels: int, in_size: int, out_channels: int, out_size: int,
                 width: int = 32) -> None:
        super().__init__()
        if min(in_channels, in_size, out_channels, out_size, width) < 1:
            raise ValueError("ConvDecoder sizes, channels and width must be positive, got "
                             f"{in_channels=}, {in_size=}, {out_channels=}, {out_size=}, {width=}")
        stages = 0
        while in_size * 2 ** stages < out_size:
            stages += 1
        layers: list[nn.Module] = []
        cin = in_channels
        for i in range(stages):
            cout = width * 2 ** (stages - 1 - i)
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.upsample = nn.Sequential(*layers)
        self.to_image = nn.Conv2d(cin, out_channels, 3, padding=1)
        self.out_size = out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, in_size, in_size)`` → ``(N, out_channels, out_size, out_size)``."""
        x = self.upsample(x)
        if x.shape[-2:] != (self.out_size, self.out_size):
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear",
                              align_corners=False)
        return self.to_image(x)
