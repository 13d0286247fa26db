"""``supervised``: the backbone trained with labels, the upper reference row."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.core.registry import TASKS
from tasks.base import BackboneFactory, Logs, OptimConfig, PretextTask


@TASKS.register("supervised")
class Supervised(PretextTask):
    """The same backbone trained with class labels under the same budget.

    Not a pretext task: the reference that a label-free representation is read
    against (the "ImageNet labels" row of Doersch et al. 2015, Table 1; Noroozi
    & Favaro 2016, Table 2; Zhang et al. 2017, Table 4). A linear classifier on
    the pooled backbone output, trained with softmax cross-entropy on the
    pretraining images' labels, with the CIFAR-10 recipe of He et al. (CVPR
    2016, §4.2): SGD, momentum 0.9, weight decay 1e-4, learning rate 0.1 at
    batch 128 (scaled linearly with the batch). The trainer's random
    horizontal flips are its augmentation. After training the head is
    dropped; features are the pooled backbone output, as for every other row.

    The trainer passes ``labels`` to :meth:`training_step` (and so to
    :meth:`loss`) because :attr:`uses_labels` is set; no other task sees labels.
    """

    paper = "reference: He et al. 2016, §4.2 (CIFAR-10 recipe)"
    uses_labels = True
    reference = True

    def __init__(self, make_backbone: BackboneFactory, spec, options) -> None:
        super().__init__(make_backbone, spec, options)
        self.backbone = self.build_backbone(make_backbone)
        self.head = nn.Linear(self.backbone.num_features, spec.num_classes)

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """SGD, lr 0.1·batch/128, momentum 0.9, weight decay 1e-4 (He et al. 2016, §4.2)."""
        return [OptimConfig("sgd", lr=0.1 * batch_size / 128, weight_decay=1e-4, momentum=0.9)]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, num_classes)`` of images ``(N, C, H, W)`` in [0, 1]."""
        x = self.normalize(images)  # (N, C, H, W)
        x = self.backbone(x)  # (N, D)
        return self.head(x)  # (N, num_classes)

    def loss(self, images: torch.Tensor, labels: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, Logs]:
        """Mean softmax cross-entropy (nats) of the class logits against ``labels``
        (``int64`` ``(N,)``); logs the batch ``top1`` (%).

        Raises:
            ValueError: if ``labels`` is missing.
        """
        if labels is None:
            raise ValueError("the supervised reference needs labels")
        logits = self.logits(images)  # (N, num_classes)
        top1 = (logits.argmax(dim=1) == labels).float().mean() * 100.0
        return F.cross_entropy(logits, labels), {"top1": top1.detach()}
