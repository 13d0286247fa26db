"""``pixels``: raw pixels as features, the floor every representation must clear."""

from __future__ import annotations

import torch

from backbones.base import Backbone
from ssl_bench.core.registry import TASKS
from tasks.base import BackboneFactory, PretextTask


class PixelIdentity(Backbone):
    """The identity "backbone": one stage, the standardized image itself.

    ``forward`` flattens ``(N, C, H, W)`` to ``(N, C·H·W)``; ``forward_stages``
    returns ``[x]``. It has no parameters.
    """

    family = "pixels"

    def __init__(self, in_chans: int, img_size: int) -> None:
        super().__init__()
        self.in_chans, self.img_size = in_chans, img_size
        self.num_features = in_chans * img_size * img_size
        self.feature_channels = in_chans
        self.stage_names = ["pixels"]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x]  # [(N, C, H, W)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)  # (N, C·H·W)

    def forward_with_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return x.flatten(1), [x]  # (N, C·H·W), [(N, C, H, W)]


@TASKS.register("pixels")
class Pixels(PretextTask):
    """Raw pixels, standardized per channel, as the representation.

    The reference row below every learned one: the k-NN and linear-probe
    numbers of the images themselves (e.g. the pixel baseline of Coates, Ng &
    Lee, AISTATS 2011, Table 1, on CIFAR-10). Features are ``(N, C·H·W)``
    float; the per-layer probe sees one layer, ``pixels``. The ``--backbone``
    of the run is not built or used (its name only groups the row with the
    backbone's table); the summary says so.
    """

    paper = "reference: raw pixels (Coates, Ng & Lee 2011, Table 1)"
    pretrains = False
    reference = True

    def __init__(self, make_backbone: BackboneFactory, spec, options) -> None:
        super().__init__(make_backbone, spec, options)
        self.backbone = PixelIdentity(spec.channels, spec.image_size)
        self.unused_backbone = make_backbone.name

    def summary(self) -> dict:
        """The base's (empty) parameter counts and a note that ``--backbone`` is unused."""
        return {**super().summary(), "features": "standardized raw pixels",
                "backbone_not_used": self.unused_backbone}
