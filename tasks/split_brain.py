"""``split-brain``: cross-channel prediction in Lab space (Zhang, Isola & Efros, CVPR 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbones.base import Backbone
from ssl_bench.errors import IncompatibleError
from ssl_bench.plots import image_rows
from ssl_bench.registry import TASKS
from tasks.base import (BackboneFactory, Logs, OptimConfig, PretextTask, check_range,
                        count_parameters)
from tasks.color import in_gamut_ab_bins, lab_to_rgb, quantize_ab, quantize_l, rgb_to_lab

AB_SCALE = 110.0  # |a|, |b| of sRGB colours stay below this, so ab / 110 lies in [-1, 1]


class SplitBrainBackbone(Backbone):
    """The two disjoint halves of a split-brain autoencoder seen as one backbone.

    Input is the scaled Lab image of :meth:`SplitBrain.normalize`, ``(N, 3, H, W)``
    float: channel 0 (L) goes to the L half, channels 1–2 (ab) to the ab half.
    The representation is both halves' outputs concatenated along channels
    (Zhang et al. 2017, §3.2, Fig. 1), so ``num_features = D_L + D_ab``.

    Args:
        l_net: backbone with 1 input channel (sees L, predicts ab).
        ab_net: backbone of the same kind with 2 input channels (sees ab, predicts L).
    """

    def __init__(self, l_net: Backbone, ab_net: Backbone) -> None:
        super().__init__()
        self.l_net, self.ab_net = l_net, ab_net
        self.family = l_net.family
        self.in_chans, self.img_size = 3, l_net.img_size
        self.num_features = l_net.num_features + ab_net.num_features
        self.feature_channels = l_net.feature_channels + ab_net.feature_channels
        self.stage_names = list(l_net.stage_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, D_L + D_ab)``: each half's own pooling, concatenated."""
        return torch.cat([self.l_net(x[:, :1]), self.ab_net(x[:, 1:])], dim=1)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage maps of both halves concatenated along channels; the ab half's
        map is resized (bilinear) to the L half's if their sides differ."""
        return self._join(self.l_net.forward_stages(x[:, :1]), self.ab_net.forward_stages(x[:, 1:]))

    def forward_with_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        l_pooled, l_stages = self.l_net.forward_with_stages(x[:, :1])
        ab_pooled, ab_stages = self.ab_net.forward_with_stages(x[:, 1:])
        return torch.cat([l_pooled, ab_pooled], dim=1), self._join(l_stages, ab_stages)

    @staticmethod
    def _join(l_stages: list[torch.Tensor], ab_stages: list[torch.Tensor]) -> list[torch.Tensor]:
        stages = []
        for l_map, ab_map in zip(l_stages, ab_stages):
            if ab_map.shape[-2:] != l_map.shape[-2:]:
                ab_map = F.interpolate(ab_map, size=l_map.shape[-2:], mode="bilinear",
                                       align_corners=False)
            stages.append(torch.cat([l_map, ab_map], dim=1))
        return stages


@TASKS.register("split-brain")
class SplitBrain(PretextTask):
    """Split-brain autoencoder (Zhang, Isola & Efros, CVPR 2017, §3.1–3.2, §4.1).

    Images are converted to CIE Lab. The network is split into two disjoint
    halves, each as wide as ``width_multiplier`` × the backbone (½: the paper
    halves every layer so the pair costs one network, §3.2): the L half predicts
    the ab channels from L (colourisation) and the ab half predicts L from ab.
    Both predictions are per-pixel **classifications** trained with
    cross-entropy, the paper's best variant "(cl,cl)" (§3.1, §4.1):
    ab is quantised on a grid of side 10 restricted to in-gamut bins (Zhang et
    al. 2016, §2.1; here 261 bins derived from the sRGB gamut, see
    :func:`tasks.color.in_gamut_ab_bins`), L into 50 bins of 2 units. Targets
    are hard one-hot bins and the loss is the plain sum of both halves'
    cross-entropies (§3.2), without the class rebalancing of Zhang et al. 2016
    (§2.2), which there served vivid colourisations rather than features.

    Predictions are made at ``target_scale`` of the image side (¼, the output
    resolution of the colourisation network of Zhang et al. 2016): a 1×1
    convolution (per-pixel linear classifier) on each half's deepest feature
    map, bilinearly upsampled to that side; targets are the Lab image average-
    pooled to it and then quantised.

    Evaluation features: both halves' pooled features concatenated,
    ``(N, D_L + D_ab)``, through :class:`SplitBrainBackbone`.

    Raises:
        IncompatibleError: for 1-channel data: there is no colour to split off,
            so the task is meaningless (nothing predicts L from ab).
    """

    name = "split-brain"
    paper = "Zhang, Isola & Efros, CVPR 2017, §3–4"

    @dataclass
    class Options:
        """Split-brain hyperparameters.

        Attributes:
            ab_grid: side of the square ab bins in Lab units (paper: 10).
            l_bins: number of L bins over [0, 100] (paper: 50, i.e. 2 units each).
            target_scale: prediction side as a fraction of the image side (¼).
            width_multiplier: width of each half relative to the backbone (½).
                Backbones that cannot scale (timm CNNs) fall back to full width;
                ``summary()['width_multiplier']`` records what was built.
            temperature: T of the annealed mean that decodes the predicted ab
                distribution for the picture (Zhang et al. 2016, §2.3: 0.38).
        """

        ab_grid: float = 10.0
        l_bins: int = 50
        target_scale: float = 0.25
        width_multiplier: float = 0.5
        temperature: float = 0.38

        def __post_init__(self) -> None:
            check_range("ab_grid", self.ab_grid, 2.0, 50.0)
            check_range("l_bins", self.l_bins, 2, 100)
            check_range("target_scale", self.target_scale, 0.01, 1.0)
            check_range("width_multiplier", self.width_multiplier, 0.05, 1.0)
            check_range("temperature", self.temperature, 0.01, 1.0)

    def __init__(self, make_backbone: BackboneFactory, spec, options: "SplitBrain.Options") -> None:
        super().__init__(make_backbone, spec, options)
        if spec.channels != 3:
            raise IncompatibleError(
                f"split-brain needs RGB images to split into L and ab; dataset {spec.name!r} has "
                f"{spec.channels} channel(s)")
        self.width_used = options.width_multiplier
        try:
            l_net = make_backbone(in_chans=1, width_multiplier=self.width_used)
            ab_net = make_backbone(in_chans=2, width_multiplier=self.width_used)
        except IncompatibleError:
            if self.width_used == 1.0:
                raise
            self.width_used = 1.0  # e.g. timm CNNs: keep the split, at full width
            l_net = make_backbone(in_chans=1)
            ab_net = make_backbone(in_chans=2)
        self.backbone = SplitBrainBackbone(l_net, ab_net)

        centres, lookup, origin = in_gamut_ab_bins(options.ab_grid)
        self.register_buffer("ab_centres", centres, persistent=False)
        self.register_buffer("ab_lookup", lookup, persistent=False)
        self.ab_origin = origin
        l_centres = (torch.arange(options.l_bins) + 0.5) * (100.0 / options.l_bins)
        self.register_buffer("l_centres", l_centres, persistent=False)
        self.target_size = max(1, round(spec.image_size * options.target_scale))
        self.ab_head = nn.Conv2d(l_net.feature_channels, len(centres), kernel_size=1)
        self.l_head = nn.Conv2d(ab_net.feature_channels, options.l_bins, kernel_size=1)

    # ---------------------------------------------------------------- pieces

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """What both halves see: Lab scaled to about [-1, 1].

        Args:
            images: ``(N, 3, H, W)`` float RGB in [0, 1].

        Returns:
            ``(N, 3, H, W)`` float32: ``L / 50 - 1``, ``a / 110``, ``b / 110``.
        """
        return self._scale(rgb_to_lab(images))

    @staticmethod
    def _scale(lab: torch.Tensor) -> torch.Tensor:
        return torch.cat([lab[:, :1] / 50.0 - 1.0, lab[:, 1:] / AB_SCALE], dim=1)

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel class logits of both halves.

        Args:
            x: ``(N, 3, H, W)`` scaled Lab from :meth:`normalize`.

        Returns:
            ab logits ``(N, K_ab, s, s)`` (from L) and L logits ``(N, K_L, s, s)``
            (from ab), ``s = target_size``.
        """
        size = (self.target_size, self.target_size)
        ab_logits = self.ab_head(self.backbone.l_net.feature_map(x[:, :1]))
        l_logits = self.l_head(self.backbone.ab_net.feature_map(x[:, 1:]))
        return (F.interpolate(ab_logits, size=size, mode="bilinear", align_corners=False),
                F.interpolate(l_logits, size=size, mode="bilinear", align_corners=False))

    def targets(self, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ab and L bin indices ``(N, s, s)`` int64 of Lab images ``(N, 3, H, W)``,
        average-pooled to the prediction side ``s`` first."""
        small = F.adaptive_avg_pool2d(lab, self.target_size)
        return (quantize_ab(small[:, 1:], self.ab_lookup, self.ab_origin, self.options.ab_grid),
                quantize_l(small[:, :1], self.options.l_bins))

    # ---------------------------------------------------------------- training

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """Adam with β = (0.9, 0.99) and weight decay 1e-3, the colourisation
        network's settings (Zhang et al. 2016, §3) on which split-brain builds; the
        learning rate is 1e-3 instead of 3e-5, for short runs of small networks."""
        return [OptimConfig(name="adam", lr=1e-3, betas=(0.9, 0.99), weight_decay=1e-3)]

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """Sum of both halves' mean per-pixel cross-entropies in nats (§3.2).

        Args:
            images: ``(N, 3, H, W)`` float RGB in [0, 1].
        """
        lab = rgb_to_lab(images)
        ab_logits, l_logits = self.predict(self._scale(lab))
        ab_target, l_target = self.targets(lab)
        loss_ab = F.cross_entropy(ab_logits, ab_target)
        loss_l = F.cross_entropy(l_logits, l_target)
        return loss_ab + loss_l, {"loss_ab": loss_ab.detach(), "loss_l": loss_l.detach()}

    # ---------------------------------------------------------------- evaluation

    @torch.no_grad()
    def pretext_metrics(self, images: torch.Tensor) -> dict[str, float]:
        """Per-pixel top-1 accuracy (%) of the ab bins predicted from L
        (``pretext_ab_top1``) and of the L bins predicted from ab (``pretext_l_top1``),
        at the prediction side."""
        lab = rgb_to_lab(images)
        ab_logits, l_logits = self.predict(self._scale(lab))
        ab_target, l_target = self.targets(lab)
        return {
            "pretext_ab_top1": 100.0 * (ab_logits.argmax(1) == ab_target).float().mean().item(),
            "pretext_l_top1": 100.0 * (l_logits.argmax(1) == l_target).float().mean().item(),
        }

    @torch.no_grad()
    def decode(self, ab_logits: torch.Tensor, l_logits: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Point estimates from the predicted distributions: the annealed mean of
        ab (softmax of logits / T, Zhang et al. 2016, §2.3) ``(N, 2, s, s)``
        and the mean of L ``(N, 1, s, s)``, in Lab units."""
        p_ab = torch.softmax(ab_logits.float() / self.options.temperature, dim=1)
        p_l = torch.softmax(l_logits.float(), dim=1)
        return (torch.einsum("nkhw,kc->nchw", p_ab, self.ab_centres),
                torch.einsum("nkhw,k->nhw", p_l, self.l_centres)[:, None])

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """Rows: the L input, its colourisation (true L + annealed-mean ab predicted
        from L), L predicted from ab, and the original."""
        lab = rgb_to_lab(images)
        ab, lightness = self.decode(*self.predict(self._scale(lab)))
        size = images.shape[-2:]
        ab = F.interpolate(ab, size=size, mode="bilinear", align_corners=False)
        lightness = F.interpolate(lightness, size=size, mode="bilinear", align_corners=False)
        return image_rows([
            ("input L", lab[:, :1] / 100.0),
            ("ab from L", lab_to_rgb(torch.cat([lab[:, :1], ab], dim=1))),
            ("L from ab", lightness / 100.0),
            ("original", images),
        ], title=f"split-brain (annealed mean, T={self.options.temperature})")

    def summary(self) -> dict[str, Any]:
        """Bin counts, prediction side, the width each half was built at and
        parameter counts of the halves and heads."""
        return {
            "ab_bins": int(self.ab_centres.shape[0]),
            "l_bins": self.options.l_bins,
            "target_size": self.target_size,
            "width_multiplier": self.width_used,
            "half_width": self.width_used < 1.0,
            "params_l_net": count_parameters(self.backbone.l_net),
            "params_ab_net": count_parameters(self.backbone.ab_net),
            "params_ab_head": count_parameters(self.ab_head),
            "params_l_head": count_parameters(self.l_head),
        }
