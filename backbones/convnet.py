"""``convnet``: a small, fast CNN for CPU runs."""

from __future__ import annotations

import torch
from torch import nn

from backbones.base import Backbone
from backbones.small_map_conv import SmallMapConv2d
from ssl_bench.core.errors import OptionError
from ssl_bench.core.registry import BACKBONES


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [
        SmallMapConv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


@BACKBONES.register("convnet")
class ConvNet(Backbone):
    """Four stages of two 3×3 conv–BatchNorm–ReLU layers; widths w, 2w, 4w, 8w.

    The first stage keeps the resolution, the next three halve it, so a 32×32
    input gives a 4×4 feature map and 8w pooled features (w = 32: 256, about
    1.2 M parameters). Inputs as small as 8×8 work (jigsaw tiles).

    Args:
        in_chans: input channels C.
        img_size: input side in pixels (recorded; the network is size-agnostic).
        width: w, channels of the first stage.
        width_multiplier: scales w (split-brain halves each sub-network).

    Raises:
        OptionError: ``width`` < 1.
    """

    family = "cnn"

    def __init__(self, in_chans: int = 3, img_size: int = 32, width: int = 32,
                 width_multiplier: float = 1.0) -> None:
        super().__init__()
        if width < 1:
            raise OptionError(f"--backbone-opt width={width} is not valid for convnet; "
                              "give a whole number ≥ 1")
        w = max(1, int(round(width * width_multiplier)))
        widths = [w, 2 * w, 4 * w, 8 * w]
        self.in_chans, self.img_size = in_chans, img_size
        self.stages = nn.ModuleList()
        cin = in_chans
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            self.stages.append(nn.Sequential(*_conv_bn_relu(cin, cout, stride),
                                             *_conv_bn_relu(cout, cout, 1)))
            cin = cout
        self.stage_names = [f"stage{i + 1}" for i in range(len(widths))]
        self.num_features = self.feature_channels = widths[-1]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs
