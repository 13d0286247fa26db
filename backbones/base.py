"""The backbone seam: every encoder that a pretext task can pretrain."""

from __future__ import annotations

import bisect

import torch
from torch import nn

from ssl_bench.core.errors import IncompatibleError


class Backbone(nn.Module):
    """An image encoder with pooled, spatial and per-stage outputs.

    Inputs are float tensors ``(N, C, H, W)`` (any float dtype; values as the
    pretext task prepares them). Subclasses set these attributes:

    Attributes:
        num_features: D, the width of the pooled features from :meth:`forward`.
        feature_channels: C', the channels of :meth:`feature_map`.
        stage_names: one name per tensor that :meth:`forward_stages` returns.
        in_chans: input channels C.
        img_size: the input side the backbone was built for, in pixels.
        family: ``"cnn"`` or ``"vit"``; tasks that need one (MAE) check it.
    """

    num_features: int
    feature_channels: int
    stage_names: list[str]
    in_chans: int
    img_size: int
    family: str

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Intermediate feature maps, shallow to deep.

        Args:
            x: ``(N, C, H, W)`` float images.

        Returns:
            One ``(N, C_i, h_i, w_i)`` tensor per entry of :attr:`stage_names`;
            the last is :meth:`feature_map`.
        """
        raise NotImplementedError

    @torch.no_grad()
    def feature_map_shape(self, img_size: int | None = None) -> tuple[int, int, int]:
        """The shape ``(C', h, w)`` of :meth:`feature_map` for ``(N, in_chans, img_size,
        img_size)`` inputs (default: the side it was built for), from one forward pass
        on zeros in eval mode, so BatchNorm statistics stay untouched and no random
        number is drawn; the training mode is restored afterwards.

        Raises:
            IncompatibleError: if the backbone cannot process inputs of that size
                (e.g. a timm CNN that downsamples an 8 px jigsaw tile below 1 px).
        """
        img_size = img_size or self.img_size
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters(), torch.empty(0)).device
            fmap = self.feature_map(torch.zeros(2, self.in_chans, img_size, img_size,
                                                device=device))
        except RuntimeError as exc:
            raise IncompatibleError(
                f"the backbone cannot process {img_size}×{img_size} inputs with {self.in_chans} "
                f"channels ({exc}); use larger images (--image-size) or another backbone"
            ) from None
        finally:
            self.train(was_training)
        return tuple(fmap.shape[1:])

    @torch.no_grad()
    def smallest_side(self, start: int, min_map: int, limit: int = 1024) -> int:
        """The smallest input side ≥ ``start`` px at which every map of
        :meth:`forward_stages` is at least ``min_map`` × ``min_map``, found by forward
        passes on zeros in eval mode (as :meth:`feature_map_shape`), doubling then
        bisecting; map sides must not shrink as the input grows. A side the backbone
        cannot process counts as too small (convnet: 8 → 17 px for 3×3 maps, as each
        stride-2 stage gives ⌈side / 2⌉).

        Raises:
            IncompatibleError: if no side up to ``limit`` px is large enough.
        """
        was_training = self.training
        self.eval()
        try:
            high = start
            while not self._maps_reach(high, min_map):
                if high >= limit:
                    raise IncompatibleError(
                        f"the backbone's stages give maps under {min_map}×{min_map} on inputs "
                        f"of up to {limit} px; use another backbone")
                high *= 2
            sides = range(start, high + 1)
            return sides[bisect.bisect_left(sides, True,
                                            key=lambda s: self._maps_reach(s, min_map))]
        finally:
            self.train(was_training)

    def _maps_reach(self, side: int, min_map: int) -> bool:
        """Whether every stage map of a ``side`` px input is at least ``min_map`` px a side
        (``False`` if the backbone cannot process that size)."""
        device = next(self.parameters(), torch.empty(0)).device
        try:
            stages = self.forward_stages(torch.zeros(1, self.in_chans, side, side, device=device))
        except RuntimeError:
            return False
        return min(min(stage.shape[-2:]) for stage in stages) >= min_map

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The deepest spatial features ``(N, feature_channels, h, w)`` (decoders use it)."""
        return self.forward_stages(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, num_features)``: global average of :meth:`feature_map`."""
        return self.feature_map(x).mean(dim=(2, 3))

    def forward_with_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`forward` and :meth:`forward_stages` from one pass (evaluation
        extracts both); subclasses that override :meth:`forward` override this too.

        Returns:
            Pooled features ``(N, num_features)`` and the per-stage maps.
        """
        stages = self.forward_stages(x)
        return stages[-1].mean(dim=(2, 3)), stages
