"""Building blocks that several pretext tasks share, one meaning per name: the
convolutional decoder (from a feature map or from a latent vector), PSNR, two
per-sample standardisations, square crops, the backbone for small tiles and the
resize to its side, and constant tensors kept on each device.
This module registers no task."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from backbones.base import Backbone

if TYPE_CHECKING:
    from tasks.base import BackboneFactory, PretextTask

DECODER_MIN_SIDE = 4  # side of a latent decoder's first feature map (DCGAN starts at 4×4)
# Smallest map side of every backbone stage on tiles: on 3×3 maps each tap of a 3×3
# convolution meets a pixel somewhere; on 1×1 maps 8 of 9 taps meet only padding.
TILE_MIN_MAP = 3


@functools.lru_cache(maxsize=64)
def device_tensor(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The constant ``torch.tensor(values)`` on ``device`` as ``dtype``, built on the first
    call for that (values, device, dtype) and the same tensor afterwards: a tensor built
    from Python data is copied to an accelerator with a blocking copy, which a training
    step must not wait for. ``values``: numbers, or nested tuples of numbers (hashable).
    Read-only: callers must not modify it in place."""
    with torch.inference_mode(False):  # a normal tensor even if first asked for in inference
        return torch.tensor(values, dtype=dtype, device=device)


def normalization(channels: int, norm: bool) -> list[nn.Module]:
    """``[BatchNorm2d(channels)]`` when ``norm``, else ``[]``: the optional layer of the
    decoders' stages."""
    return [nn.BatchNorm2d(channels)] if norm else []


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
        in_size: its side h = w in pixels (see ``Backbone.feature_map_shape``).
        out_channels: C of the image.
        out_size: the image side in pixels.
        width: channels of the last upsampling stage.
        norm: BatchNorm after each up-convolution (DCGAN). ``False``: none, and the
            up-convolutions get a bias instead, so the output follows the input's scale
            and shifts (see :class:`LatentDecoder`).

    Raises:
        ValueError: if any size, channel count or width is not positive.
    """

    def __init__(self, in_channels: int, in_size: int, out_channels: int, out_size: int,
                 width: int = 32, *, norm: bool = True) -> None:
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
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=not norm),
                       *normalization(cout, norm), nn.ReLU(inplace=True)]
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


class LatentDecoder(nn.Module):
    """Decodes a latent vector ``(N, latent_dim)`` to an image ``(N, out_channels,
    image_size, image_size)`` (unbounded: logits or a regression target).

    ``project``: a linear layer to a ``(c, s, s)`` map, BatchNorm and ReLU, with
    s = ⌈image_size / 2^k⌉ ≥ :data:`DECODER_MIN_SIDE` after k = ⌊log2(image_size / 4)⌋
    doublings and c = width·2^k channels (32 px: a 4×4 map, 28 px: 7×7, 96 px: 6×6);
    then ``decoder``, a :class:`ConvDecoder` from that map to the image: the DCGAN
    generator's layout (Radford et al. 2016, §3: a projected 4×4 map, then
    up-convolutions). Built in that order (the random initialisation draws follow it).

    ``norm=False`` drops every BatchNorm (the linear layer keeps its bias, the
    up-convolutions gain one). The first BatchNorm divides each channel by its spread
    over the batch and map, so in train mode a code rescaled by any factor decodes the
    same but for the linear layer's fixed bias: a penalty on the code (sparsity,
    contraction) could then be met by shrinking the code. The autoencoders of
    Chollet's Keras blog and of Ng's CS294A notes have no BatchNorm.

    Raises:
        ValueError: if any size, channel count or width is not positive.
    """

    def __init__(self, latent_dim: int, out_channels: int, image_size: int,
                 width: int = 32, *, norm: bool = True) -> None:
        super().__init__()
        if min(latent_dim, out_channels, image_size, width) < 1:
            raise ValueError("LatentDecoder sizes, channels and width must be positive, got "
                             f"{latent_dim=}, {out_channels=}, {image_size=}, {width=}")
        doublings = max(0, int(math.log2(image_size / DECODER_MIN_SIDE)))
        side = math.ceil(image_size / 2**doublings)
        channels = width * 2**doublings
        self.project = nn.Sequential(nn.Linear(latent_dim, channels * side * side),
                                     nn.Unflatten(1, (channels, side, side)),
                                     *normalization(channels, norm), nn.ReLU(inplace=True))
        self.decoder = ConvDecoder(channels, side, out_channels, image_size, width, norm=norm)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, latent_dim)`` → ``(N, out_channels, image_size, image_size)``."""
        fmap = self.project(z)  # (N, c, s, s)
        return self.decoder(fmap)  # (N, out_channels, H, W)


def decoded_image(out: torch.Tensor, loss: str) -> torch.Tensor:
    """A decoder's output ``(N, C, H, W)`` as an image float32 in [0, 1]: the sigmoid of
    logits trained with binary cross-entropy (``loss="bce"``), else (``"mse"``) the
    regression output clamped to [0, 1]."""
    out = out.float()
    return out.sigmoid() if loss == "bce" else out.clamp(0.0, 1.0)


def psnr_db(prediction: torch.Tensor, target: torch.Tensor,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio of each sample, 10·log10(1 / MSE), in dB, for
    values in [0, 1].

    Args:
        prediction: ``(N, ...)`` float, e.g. images ``(N, C, H, W)`` or patches
            ``(N, L, P)``.
        target: the same shape.
        mask: where the MSE is taken, broadcastable to ``prediction`` (e.g. a hole
            ``(N, 1, H, W)`` or masked patches ``(N, L, 1)``); each sample needs a
            nonzero entry. ``None``: everywhere.

    Returns:
        ``(N,)`` float32; the MSE is floored at 1e-10, so a perfect prediction gives 100 dB.
    """
    err = (prediction.float() - target.float()).pow(2)
    if mask is None:
        mse = err.flatten(1).mean(dim=1)
    else:
        mask = mask.to(err.dtype).expand_as(err)
        mse = (err * mask).flatten(1).sum(dim=1) / mask.flatten(1).sum(dim=1)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def standardize(x: torch.Tensor, min_std: float) -> torch.Tensor:
    """Per-sample standardisation of ``(M, C, h, w)`` images or tiles: subtract each
    sample's mean and divide by its standard deviation, both over all channels and
    pixels (std floored at ``min_std`` so that flat samples do not blow up). Same
    shape and dtype. Noroozi & Favaro 2016, §3.2 (per-tile normalisation)."""
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True).clamp_min(min_std)
    return (x - mean) / std


def center_channels(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-sample normalisation of ``(M, C, h, w)`` images or patches: subtract each
    channel's own mean, then divide all channels by one standard deviation over
    channels and pixels (plus ``eps``). One scale for all channels keeps a dropped
    channel's noise as small as it was made (Doersch et al. 2015, §3.1). Same shape."""
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    return centred / (centred.flatten(1).std(dim=1).view(-1, 1, 1, 1) + eps)


def crop_squares(images: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    """Square crops by advanced indexing, each channel at its own corner (so
    channels can be jittered apart).

    Args:
        images: ``(N, C, H, W)``.
        corners: ``(N, K, C, 2)`` int64 (row, column) of each crop channel's
            top-left pixel; every crop must lie inside the image.
        size: crop side in pixels.

    Returns:
        ``(N, K, C, size, size)``, same dtype as ``images``.
    """
    n, c = images.shape[:2]
    steps = torch.arange(size, device=images.device)
    rows = (corners[..., 0, None] + steps)[..., :, None]  # (N, K, C, size, 1)
    cols = (corners[..., 1, None] + steps)[..., None, :]  # (N, K, C, 1, size)
    batch_index = torch.arange(n, device=images.device).view(n, 1, 1, 1, 1)
    channel_index = torch.arange(c, device=images.device).view(1, 1, c, 1, 1)
    return images[batch_index, channel_index, rows, cols]


def tile_backbone(task: PretextTask, make_backbone: BackboneFactory, tile: int) -> Backbone:
    """The backbone for ``tile`` px tiles or patches, built (``task.build_backbone``) for
    the side it is fed them at: the smallest side ≥ ``tile`` at which every stage map is
    at least :data:`TILE_MIN_MAP` px a side (``Backbone.smallest_side``; convnet 7–10 px
    → 17 px). The Noroozi & Favaro release enlarges its 64 px tiles to 75 px for the same
    reason. The sizing probe is built under a forked RNG, so the backbone's initial
    weights are those one build would draw. Read the side back as ``img_size``.

    Raises:
        IncompatibleError: as ``task.build_backbone``, or no side gives such maps.
    """
    with torch.random.fork_rng(devices=[]):
        side = make_backbone(img_size=tile).smallest_side(tile, TILE_MIN_MAP)
    return task.build_backbone(make_backbone, img_size=side)


def resize_tiles(tiles: torch.Tensor, side: int) -> torch.Tensor:
    """``(M, C, t, t)`` tiles enlarged to ``(M, C, side, side)`` (bilinear, half-pixel
    centres, no antialiasing: that only matters when shrinking); the same tensor when
    ``t == side``."""
    if tiles.shape[-1] == side:
        return tiles
    return F.interpolate(tiles, size=(side, side), mode="bilinear", align_corners=False)
