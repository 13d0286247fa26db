"""The backbone seam: every encoder that a pretext task can pretrain."""

from __future__ import annotations

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
