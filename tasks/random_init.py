"""``random-init``: the untrained backbone, the baseline every leaderboard needs."""

from __future__ import annotations

from ssl_bench.core.registry import TASKS
from tasks.base import BackboneFactory, PretextTask


@TASKS.register("random-init")
class RandomInit(PretextTask):
    """The backbone at its random initialisation, evaluated without pretraining.

    Random convolutional features are a strong k-NN baseline at small scale
    (e.g. Caron et al. 2018, Table 1 reports random AlexNet features well above
    chance), so every pretext task must be read against this row.
    Features: the pooled backbone output on standardized images, ``(N, D)``.
    """

    paper = "baseline (no pretraining)"
    pretrains = False
    reference = True

    def __init__(self, make_backbone: BackboneFactory, spec, options) -> None:
        super().__init__(make_backbone, spec, options)
        self.backbone = self.build_backbone(make_backbone)
