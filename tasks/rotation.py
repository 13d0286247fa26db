"""``rotation``: predicting image rotations, RotNet (Gidaris, Singh & Komodakis, ICLR 2018)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.core.errors import IncompatibleError, OptionError
from ssl_bench.core.figures import image_rows
from ssl_bench.core.registry import TASKS
from ssl_bench.core.spec import DataSpec
from tasks.base import BackboneFactory, Logs, OptimConfig, PretextTask
from tasks.options import option

ANGLES = (0, 90, 180, 270)  # the rotations that torch.rot90 makes exactly (no resampling)
PAPER_BATCH = 128  # source images per step of the paper's CIFAR-10 training (§3.1)


def check_rotations(rotations: tuple[int, ...]) -> None:
    """Raise :class:`OptionError` unless ``rotations`` holds at least two distinct
    angles of :data:`ANGLES` (the paper's Table 2 compares {0°, 180°}, {90°, 270°} and
    all four; its 45° set needs resampling, which this module does not do)."""
    bad = [angle for angle in rotations if not isinstance(angle, int) or angle not in ANGLES]
    if bad or len(set(rotations)) != len(rotations) or len(rotations) < 2:
        raise OptionError(f"--set rotations={list(rotations)} is not valid; give 2 to 4 "
                          f"distinct angles of {', '.join(map(str, ANGLES))}")


def rotate(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Each image ``(C, H, W)`` of ``(N, C, H, W)`` turned by its angle ``(N,)`` (int
    degrees, multiples of 90) counter-clockwise as displayed: ``torch.rot90`` from the
    row axis towards the column axis. Exact: pixels are permuted, never interpolated.
    One gather for the whole batch, each image through the pixel order of its turn, so
    nothing waits for the angles' values. Same shape and dtype. Images must be square
    unless every angle is 0 or 180: a quarter turn of a non-square image has no pixel
    order of its shape, and gathering it fails (RuntimeError)."""
    n, c, height, width = images.shape
    turns = torch.remainder(angles // 90, 4)                              # (N,) in 0…3
    pixels = torch.arange(height * width, device=images.device).view(height, width)
    absent = torch.full((height * width,), height * width, device=images.device)
    orders = torch.stack([  # (4, H·W): the source pixel of each output pixel, per turn
        torch.rot90(pixels, k, dims=(0, 1)).flatten() if k % 2 == 0 or height == width
        else absent for k in range(4)])
    source = orders[turns][:, None].expand(n, c, -1)                      # (N, C, H·W)
    return images.flatten(2).gather(2, source).view_as(images)            # (N, C, H, W)


@TASKS.register("rotation")
class Rotation(PretextTask):
    """Predict which of four rotations (0°, 90°, 180°, 270°) was applied to an image.

    Gidaris, Singh & Komodakis, "Unsupervised representation learning by predicting
    image rotations", ICLR 2018. §2.1–2.2: a ConvNet F classifies the rotation
    y ∈ {0°, 90°, 180°, 270°} applied to an image, loss −log F_y(rot(X, y)) averaged over
    the four rotations (eq. 1–2); rotations by multiples of 90° are flips and
    transposes, so they leave no interpolation artefact to cheat on. §3.1: every image
    of a batch goes in with all four rotated copies at once, which the authors found
    markedly better than one random rotation per image, so **the network sees 4N
    images per step** for a batch of N; the trainer's images/s counts the N source
    images. Rotation-major order: copies k·N … (k+1)·N − 1 carry rotation k.

    Head: a linear 4-way classifier on the backbone's pooled features ``(4N, D)`` (the
    NIN's global-average-pooled last block with its linear classifier), cross-entropy
    in nats; logs ``top1`` (%, chance 25). Features for evaluation: the default, the
    pooled backbone on upright, dataset-standardised images ``(N, D)``.

    Reference number, the paper's own (Table 1, CIFAR-10): NIN with 4 conv blocks,
    non-linear classifier on block 2's features: 89.06 % top-1. It is the paper's
    result for its NIN setting (a classifier trained on frozen block-2 maps), not
    something this code reproduces with its backbones, schedules and probes on
    pooled features.

    Raises:
        OptionError: ``rotations`` not 2–4 distinct angles of 0, 90, 180, 270.
        IncompatibleError: non-square images when 90° or 270° is among the rotations
            (from :meth:`loss`; the harness's images are always square).
    """

    paper = "Gidaris, Singh & Komodakis, ICLR 2018, §2.1–2.2, §3.1"
    tune_knob = ({}, {"all_rotations": False})  # all four rotations or one per image

    @dataclass
    class Options:
        """RotNet hyperparameters; the paper's values in brackets."""

        # the classes, in degrees counter-clockwise [0, 90, 180, 270: Table 2's best set]
        rotations: tuple = option(ANGLES)
        # all rotated copies of every image per step [True, §3.1]; False: one random each
        all_rotations: bool = option(True, choices=(True, False))

    def __init__(self, make_backbone: BackboneFactory, spec: DataSpec, options: Options) -> None:
        check_rotations(tuple(options.rotations))
        super().__init__(make_backbone, spec, options)
        self.register_buffer("angles", torch.tensor(options.rotations), persistent=False)
        self.backbone = self.build_backbone(make_backbone)
        self.head = nn.Linear(self.backbone.num_features, len(self.angles))

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """SGD, momentum 0.9, weight decay 5e-4, lr 0.1 at 128 source images per step
        (§3.1, CIFAR-10; the same in the authors' released CIFAR-10 config), scaled
        linearly with the batch (Goyal et al. 2017). The paper's step decay (lr ÷5 at
        fixed epochs) gives way to the harness's warm-up + cosine; the released config
        also sets Nesterov momentum, which ``OptimConfig`` does not offer."""
        return [OptimConfig(name="sgd", lr=0.1 * batch_size / PAPER_BATCH, momentum=0.9,
                            weight_decay=5e-4)]

    def make_rotations(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated copies of ``(N, C, H, W)`` images and their labels: ``(K·N, C, H, W)``
        rotation-major and ``(K·N,)`` int64 in 0…K−1 (index into ``rotations``) with
        ``all_rotations``, else ``(N, C, H, W)`` and ``(N,)`` with one uniform random
        rotation per image (torch's global RNG). Same dtype as ``images``.

        Raises:
            IncompatibleError: non-square images and a quarter turn among the rotations.
        """
        n, _, height, width = images.shape
        if height != width and any(angle % 180 for angle in self.options.rotations):
            raise IncompatibleError(f"task 'rotation' needs square images to turn them by "
                                    f"90°; got {height}×{width} px")
        k = len(self.angles)
        if self.options.all_rotations:
            labels = torch.arange(k, device=images.device).repeat_interleave(n)   # (K·N,)
            images = images.repeat(k, 1, 1, 1)                                     # (K·N, C, H, W)
        else:
            labels = torch.randint(k, (n,), device=images.device)                  # (N,)
        return rotate(images, self.angles[labels]), labels                # (M, C, H, W), (M,)

    def logits(self, rotated: torch.Tensor) -> torch.Tensor:
        """Rotation logits ``(M, K)`` of rotated ``(M, C, H, W)`` images in [0, 1]."""
        features = self.backbone(self.normalize(rotated))                 # (M, D)
        return self.head(features)                                        # (M, K)

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """Cross-entropy (nats) of the rotation over all rotated copies of ``(N, C, H,
        W)`` images in [0, 1]; logs ``top1`` (%, chance 100 / K = 25)."""
        rotated, labels = self.make_rotations(images)                    # (M, C, H, W), (M,)
        logits = self.logits(rotated)                                     # (M, K)
        top1 = (logits.argmax(dim=1) == labels).float().mean() * 100
        return F.cross_entropy(logits.float(), labels), {"top1": top1.detach()}

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """Up to six test images, one row per rotation, each captioned with the
        predicted rotation (✓ right, ✗ wrong)."""
        images = images[:6]
        n, k = len(images), len(self.angles)
        rotated = rotate(images.repeat(k, 1, 1, 1),
                         self.angles.repeat_interleave(n))               # (K·n, C, H, W)
        predicted = self.angles[self.logits(rotated).argmax(dim=1)]      # (K·n,) degrees
        truth = self.angles.repeat_interleave(n)                          # (K·n,) degrees
        rows = [(f"{angle}°", rotated[i * n:(i + 1) * n])
                for i, angle in enumerate(self.angles.tolist())]
        right = (predicted == truth).float().mean().item() * 100
        fig = image_rows(rows, title=f"rotation: predicted angle ({right:.0f} % right here)")
        for ax, guess, true in zip(fig.axes, predicted.tolist(), truth.tolist()):
            ax.set_xlabel(f"pred {guess}° {'✓' if guess == true else '✗'}", fontsize=7,
                          color="green" if guess == true else "red")
        fig.tight_layout()
        return fig

    def pretext_chance(self) -> dict[str, float]:
        return {"top1": 100.0 / len(self.angles)}

    def summary(self) -> dict:
        """Adds the rotation classes (degrees) and how many rotated copies of each
        source image one step feeds the backbone."""
        copies = len(self.angles) if self.options.all_rotations else 1
        return {**super().summary(), "rotations": self.angles.tolist(),
                "copies_per_image": copies}
