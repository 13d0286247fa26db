"""timm backbones: ``resnet18`` (small-image stem), ``vit_tiny`` and ``timm:<name>``."""

from __future__ import annotations

import timm
import torch
from torch import nn

from backbones.base import Backbone
from ssl_bench.core.errors import IncompatibleError, OptionError, UnknownNameError
from ssl_bench.core.precision import attention_kernels
from ssl_bench.core.registry import BACKBONES

SMALL_IMAGE_MAX_SIDE = 64  # inputs up to this side get the CIFAR-style ResNet stem


class TimmCNN(Backbone):
    """Any timm CNN through ``features_only``: its stages are :meth:`forward_stages`.

    Args:
        model_name: a timm model name (``resnet18``, ``convnext_atto``, …).
        in_chans: input channels C.
        img_size: input side in pixels.
        small_stem: replace a ResNet's 7×7 stride-2 conv1 + max-pool by a 3×3
            stride-1 conv1 and no pool, the usual stem for 32×32 inputs
            (He et al. 2016, §4.2 CIFAR-10 experiments).
        width_multiplier: only 1.0 is supported for timm CNNs.

    Raises:
        IncompatibleError: for ``width_multiplier != 1`` or a ``small_stem`` on a
            model without ``conv1``/``maxpool``.
    """

    family = "cnn"

    def __init__(self, model_name: str, in_chans: int = 3, img_size: int = 32,
                 small_stem: bool = False, width_multiplier: float = 1.0) -> None:
        super().__init__()
        if width_multiplier != 1.0:
            raise IncompatibleError(
                f"backbone {model_name!r} cannot be built at width_multiplier={width_multiplier}; "
                "only convnet and vit_tiny scale their width")
        self.in_chans, self.img_size, self.small_stem = in_chans, img_size, small_stem
        body = timm.create_model(model_name, pretrained=False, features_only=True,
                                 in_chans=in_chans)
        if small_stem:
            if not (hasattr(body, "conv1") and hasattr(body, "maxpool")):
                raise IncompatibleError(f"{model_name!r} has no ResNet stem to shrink")
            body.conv1 = nn.Conv2d(in_chans, body.conv1.out_channels, 3, 1, 1, bias=False)
            body.maxpool = nn.Identity()
        self.body = body
        channels = body.feature_info.channels()
        self.stage_names = [info["module"] for info in body.feature_info.get_dicts()]
        self.num_features = self.feature_channels = channels[-1]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))


def vit_patch_size(img_size: int) -> int:
    """The patch size for a ViT on ``img_size`` px images: 16 from 128 px up,
    else the divisor of ``img_size`` giving the patch grid side closest to 8
    (32 px → 4, 28 px → 4, 64 px → 8, 96 px → 12)."""
    if img_size >= 128 and img_size % 16 == 0:
        return 16
    divisors = [p for p in range(1, img_size + 1) if img_size % p == 0]
    return min(divisors, key=lambda p: (abs(img_size // p - 8), -p))


class TimmViT(Backbone):
    """A timm Vision Transformer with a patch size suited to the image size.

    :meth:`forward` returns the class token after the final norm (``global_pool
    ="token"``, MAE's linear-probe feature, He et al. 2022 §A.2) or the mean of
    the patch tokens (``"avg"``). :meth:`forward_stages` gives the patch tokens of
    four evenly spaced blocks as ``(N, D, H/p, W/p)`` maps.

    Args:
        model_name: a timm ViT name (``vit_tiny_patch16_224``, …).
        in_chans: input channels C.
        img_size: input side in pixels.
        patch_size: patch side p; ``None`` picks :func:`vit_patch_size`.
        global_pool: ``"token"`` or ``"avg"``.
        width_multiplier: scales the embedding width by scaling the number of
            attention heads (each head keeps its width).

    Raises:
        OptionError: for an unknown ``global_pool``.
        IncompatibleError: if the image side is not a multiple of the patch size.
    """

    family = "vit"

    def __init__(self, model_name: str, in_chans: int = 3, img_size: int = 32,
                 patch_size: int | None = None, global_pool: str = "token",
                 width_multiplier: float = 1.0) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise OptionError("--backbone-opt global_pool must be 'token' or 'avg', got "
                              f"{global_pool!r}")
        patch_size = patch_size or vit_patch_size(img_size)
        if img_size % patch_size:
            raise IncompatibleError(
                f"image size {img_size} is not a multiple of the ViT patch size {patch_size}")
        kwargs = dict(pretrained=False, img_size=img_size, patch_size=patch_size,
                      num_classes=0, in_chans=in_chans)
        if width_multiplier != 1.0:
            ref = timm.create_model(model_name, pretrained=False, num_classes=0)
            heads = max(1, int(round(ref.blocks[0].attn.num_heads * width_multiplier)))
            kwargs.update(embed_dim=heads * ref.blocks[0].attn.head_dim, num_heads=heads)
        self.vit = timm.create_model(model_name, **kwargs)
        self.in_chans, self.img_size, self.patch_size = in_chans, img_size, patch_size
        self.global_pool = global_pool
        depth = len(self.vit.blocks)
        self.stage_indices = sorted({max(0, round(depth * q) - 1) for q in (0.25, 0.5, 0.75, 1.0)})
        self.stage_names = [f"block{i + 1}" for i in self.stage_indices]
        self.num_features = self.feature_channels = self.vit.num_features
        self.grid_size = img_size // patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with attention_kernels(x.device):
            return self._pool(self.vit.forward_features(x))

    def _pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, 1 + L, D)`` normed tokens → ``(N, D)`` (class token or patch mean)."""
        if self.global_pool == "token":
            return tokens[:, 0]
        return tokens[:, self.vit.num_prefix_tokens:].mean(dim=1)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        with attention_kernels(x.device):
            return self.vit.forward_intermediates(
                x, indices=self.stage_indices, output_fmt="NCHW", intermediates_only=True)

    def forward_with_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with attention_kernels(x.device):
            tokens, stages = self.vit.forward_intermediates(x, indices=self.stage_indices,
                                                            output_fmt="NCHW")
        return self._pool(tokens), stages


def _is_vit(model_name: str) -> bool:
    return "vit" in model_name or "deit" in model_name


@BACKBONES.register("resnet18")
def resnet18(in_chans: int = 3, img_size: int = 32, width_multiplier: float = 1.0) -> Backbone:
    """timm's ResNet-18 (He et al. 2016); the small-image stem for inputs ≤ 64 px."""
    return TimmCNN("resnet18", in_chans, img_size, small_stem=img_size <= SMALL_IMAGE_MAX_SIDE,
                   width_multiplier=width_multiplier)


@BACKBONES.register("vit_tiny")
def vit_tiny(in_chans: int = 3, img_size: int = 32, width_multiplier: float = 1.0,
             patch_size: int | None = None, global_pool: str = "token") -> Backbone:
    """timm's ViT-Tiny (Dosovitskiy et al. 2021; 12 blocks, width 192, 3 heads)
    with the patch size of :func:`vit_patch_size` (4 for 32 px)."""
    return TimmViT("vit_tiny_patch16_224", in_chans, img_size, patch_size=patch_size,
                   global_pool=global_pool, width_multiplier=width_multiplier)


def timm_backbone(model_name: str, in_chans: int = 3, img_size: int = 32,
                  width_multiplier: float = 1.0, **kwargs) -> Backbone:
    """Any timm model by name: ViTs through :class:`TimmViT`, the rest through
    :class:`TimmCNN` (no stem change).

    Raises:
        UnknownNameError: if timm does not know ``model_name``.
    """
    if not timm.is_model(model_name):
        raise UnknownNameError(
            f"timm has no model {model_name!r} for --backbone timm:<name>; "
            "see timm.list_models() for the valid names")
    if _is_vit(model_name):
        return TimmViT(model_name, in_chans, img_size, width_multiplier=width_multiplier, **kwargs)
    return TimmCNN(model_name, in_chans, img_size, width_multiplier=width_multiplier)
