"""``split-brain``: cross-channel prediction in Lab space (Zhang, Isola & Efros, CVPR 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbones.base import Backbone
from ssl_bench.core.errors import IncompatibleError, OptionError
from ssl_bench.core.figures import image_rows
from ssl_bench.core.registry import TASKS
from tasks.base import BackboneFactory, Logs, OptimConfig, PretextTask
from tasks.options import option, refuse_at_image_size
from tasks.color import (ZHANG_GRID, in_gamut_ab_bins, lab_to_rgb, quantize_ab, quantize_l,
                         rebalance_weights, rgb_to_lab, soft_encode_ab, zhang_ab_bins)

AB_SCALE = 110.0  # |a|, |b| of sRGB colours stay below this, so ab / 110 lies in [-1, 1]
NEIGHBOURS, SIGMA, MIX = 5, 5.0, 0.5  # Zhang et al. 2016: soft-encoding k, σ (§2.1), λ (§2.2)


class SplitBrainBackbone(Backbone):
    """The two disjoint halves seen as one backbone (§3.2, Fig. 1).

    Input: scaled Lab ``(N, 3, H, W)`` from :meth:`SplitBrain.normalize`; channel 0 (L)
    goes to ``l_net`` (1 input channel, predicts ab), channels 1–2 (ab) to ``ab_net``
    (2 input channels, predicts L). Output: both halves' features concatenated along
    channels, so ``num_features = D_L + D_ab``.
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
        """Per-stage maps of both halves concatenated along channels; the ab half's map
        is resized (bilinear) to the L half's if their sides differ."""
        return self._join(self.l_net.forward_stages(x[:, :1]), self.ab_net.forward_stages(x[:, 1:]))

    def forward_with_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        l_pooled, l_stages = self.l_net.forward_with_stages(x[:, :1])  # (N, D_L), maps
        ab_pooled, ab_stages = self.ab_net.forward_with_stages(x[:, 1:])  # (N, D_ab), maps
        return torch.cat([l_pooled, ab_pooled], dim=1), self._join(l_stages, ab_stages)

    @staticmethod
    def _join(l_stages: list[torch.Tensor], ab_stages: list[torch.Tensor]) -> list[torch.Tensor]:
        stages = []
        for l_map, ab_map in zip(l_stages, ab_stages):
            if ab_map.shape[-2:] != l_map.shape[-2:]:
                ab_map = F.interpolate(ab_map, size=l_map.shape[-2:], mode="bilinear",
                                       align_corners=False)  # (N, C_ab, h, w)
            stages.append(torch.cat([l_map, ab_map], dim=1))  # (N, C_L + C_ab, h, w)
        return stages


@TASKS.register("split-brain")
class SplitBrain(PretextTask):
    """Split-brain autoencoder (Zhang, Isola & Efros, CVPR 2017, §3.1–3.2, §4.1).

    Images are converted to CIE Lab and the network is split into two disjoint
    halves, each ``width_multiplier`` × the backbone's width (½: the paper halves
    every layer so the pair costs one network, §3.2): the L half predicts ab from L
    (colourisation), the ab half predicts L from ab. Both are per-pixel
    **classifications** trained with cross-entropy, the paper's best variant
    "(cl,cl)" (§3.1, §4.1); the loss is the plain sum of both (§3.2). ab classes:
    by default the 313 bins (grid 10) released with Zhang et al. 2016 (§2.1),
    :func:`tasks.color.zhang_ab_bins`; ``ab_bin_set=derived``: the 261 bins that
    8-bit sRGB colours fall in (a subset, :func:`tasks.color.in_gamut_ab_bins`).
    L: 50 bins of 2 units. Options from Zhang et al. 2016: ``soft_encoding``
    (targets over the 5 nearest ab bins, Gaussian σ = 5, §2.1) and ``rebalance``
    (each pixel's ab term × its bin's weight, eq. 4, λ = ½, σ = 5, §2.2); the ab
    distribution is a running histogram of the training batches' bins (counted in
    train mode with gradients on, never from held-out images; weights are 1 before).

    Not verified (the split-brain paper's text was not at hand offline): the 313
    ab bins (stated by the project's fairness review), the 50 L bins, and whether
    split-brain kept soft encoding or rebalancing; so both stay off by default.

    Predictions are made at ``target_scale`` of the image side (¼, the output
    resolution of the colourisation network of Zhang et al. 2016): a 1×1 convolution
    (per-pixel linear classifier) on each half's deepest feature map, upsampled
    bilinearly; targets are the Lab image average-pooled to that side, then quantised.

    Raises IncompatibleError on grayscale data (no colour to split off), OptionError
    for ``ab_grid`` ≠ 10 with the 313 bins. Features: both halves' pooled features
    concatenated, ``(N, D_L + D_ab)``."""

    paper = "Zhang, Isola & Efros, CVPR 2017, §3–4"
    tune_knob = ({}, {"soft_encoding": True})  # hard ab bins or soft encoding
    channels = (3,)

    @dataclass
    class Options:
        """Defaults: Zhang et al. 2017. ``width_multiplier``: backbones that cannot scale
        (timm CNNs) fall back to full width, recorded in ``summary()['width_multiplier']``.
        ``temperature``: T of the annealed mean that decodes predicted ab for the picture
        (Zhang et al. 2016, §2.3)."""

        ab_bin_set: str = option("zhang313", choices=("zhang313", "derived"))  # Zhang 2016 §2.1
        ab_grid: float = option(10.0, low=2.0, high=50.0)  # ab bin side ("derived" only)
        soft_encoding: bool = option(False)  # 5 nearest bins, σ = 5 (Zhang 2016 §2.1)
        rebalance: bool = option(False)  # class weights, eq. 4 (Zhang 2016 §2.2)
        l_bins: int = option(50, low=2, high=100)  # L bins over [0, 100]: 2 units each
        target_scale: float = option(0.25, low=0.01, high=1.0)  # prediction side / image side
        width_multiplier: float = option(0.5, low=0.05, high=1.0)  # each half's width (§3.2)
        temperature: float = option(0.38, low=0.01, high=1.0)  # annealed-mean T (picture only)

    def __init__(self, make_backbone: BackboneFactory, spec, options: "SplitBrain.Options") -> None:
        super().__init__(make_backbone, spec, options)
        if options.ab_bin_set == "zhang313" and options.ab_grid != ZHANG_GRID:
            raise OptionError(f"--set ab_grid={options.ab_grid} needs ab_bin_set=derived: the "
                              f"313 bins of Zhang et al. lie on a grid of {ZHANG_GRID:g}")
        self.width_used = options.width_multiplier
        try:
            l_net = self.build_backbone(make_backbone, in_chans=1, width_multiplier=self.width_used)
            ab_net = self.build_backbone(make_backbone, in_chans=2,
                                         width_multiplier=self.width_used)
        except IncompatibleError:
            if self.width_used == 1.0:
                raise
            self.width_used = 1.0  # e.g. timm CNNs: keep the split, at full width
            l_net = self.build_backbone(make_backbone, in_chans=1)
            ab_net = self.build_backbone(make_backbone, in_chans=2)
        self.backbone = SplitBrainBackbone(l_net, ab_net)

        centres, lookup, self.ab_origin = (zhang_ab_bins() if options.ab_bin_set == "zhang313" else
                                           in_gamut_ab_bins(options.ab_grid))  # (K_ab, 2), (G, G)
        self.register_buffer("ab_centres", centres, persistent=False)
        self.register_buffer("ab_lookup", lookup, persistent=False)
        self.register_buffer("ab_counts", torch.zeros(len(centres), dtype=torch.float64),
                             persistent=options.rebalance)  # (K_ab,) training pixels per bin
        l_centres = (torch.arange(options.l_bins) + 0.5) * (100.0 / options.l_bins)  # (K_L,)
        self.register_buffer("l_centres", l_centres, persistent=False)
        self.target_size = round(spec.image_size * options.target_scale)
        if self.target_size < 1:
            refuse_at_image_size("target_scale", options.target_scale, "0 px predictions",
                                 spec.image_size, 1 / spec.image_size, 1)
        self.ab_head = nn.Conv2d(l_net.feature_channels, len(centres), kernel_size=1)
        self.l_head = nn.Conv2d(ab_net.feature_channels, options.l_bins, kernel_size=1)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """What both halves see: RGB ``(N, 3, H, W)`` in [0, 1] → Lab scaled to about
        [-1, 1], ``(N, 3, H, W)`` float32: ``L / 50 - 1``, ``a / 110``, ``b / 110``."""
        return self._scale(rgb_to_lab(images))

    @staticmethod
    def _scale(lab: torch.Tensor) -> torch.Tensor:
        return torch.cat([lab[:, :1] / 50.0 - 1.0, lab[:, 1:] / AB_SCALE], dim=1)  # (N, 3, H, W)

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel class logits from scaled Lab ``(N, 3, H, W)``: ab from L
        ``(N, K_ab, s, s)`` and L from ab ``(N, K_L, s, s)``, ``s = target_size``."""
        ab_logits = self.ab_head(self.backbone.l_net.feature_map(x[:, :1]))  # (N, K_ab, h, w)
        l_logits = self.l_head(self.backbone.ab_net.feature_map(x[:, 1:]))  # (N, K_L, h, w)
        up = dict(size=(self.target_size, self.target_size), mode="bilinear", align_corners=False)
        return F.interpolate(ab_logits, **up), F.interpolate(l_logits, **up)  # (N, K_*, s, s)

    def targets(self, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ab and L bin indices ``(N, s, s)`` int64 of Lab images ``(N, 3, H, W)``,
        average-pooled to the prediction side ``s`` first."""
        small = F.adaptive_avg_pool2d(lab, self.target_size)  # (N, 3, s, s)
        return (quantize_ab(small[:, 1:], self.ab_lookup, self.ab_origin, self.options.ab_grid),
                quantize_l(small[:, :1], self.options.l_bins))

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """Adam, β = (0.9, 0.99), weight decay 1e-3: the colourisation network's settings
        (Zhang et al. 2016, §3) that split-brain builds on, but lr 1e-3 instead of 3e-5
        for short runs of small networks."""
        return [OptimConfig(name="adam", lr=1e-3, betas=(0.9, 0.99), weight_decay=1e-3)]

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """Sum of both halves' mean per-pixel cross-entropies in nats (§3.2) on RGB
        images ``(N, 3, H, W)`` in [0, 1]; logs each (``ab_loss``, ``l_loss``) and the
        per-pixel top-1 accuracy (%) of each against the hard bins at the prediction
        side (``ab_top1``, ``l_top1``)."""
        lab = rgb_to_lab(images)  # (N, 3, H, W)
        ab_logits, l_logits = self.predict(self._scale(lab))  # (N, K_ab, s, s), (N, K_L, s, s)
        small = F.adaptive_avg_pool2d(lab, self.target_size)  # (N, 3, s, s)
        ab_target, l_target = self.targets(small)  # (N, s, s) each
        ab_loss = self.ab_cross_entropy(ab_logits, small[:, 1:], ab_target)
        l_loss = F.cross_entropy(l_logits, l_target)
        with torch.no_grad():
            ab_top1 = 100.0 * (ab_logits.argmax(1) == ab_target).float().mean()
            l_top1 = 100.0 * (l_logits.argmax(1) == l_target).float().mean()
        return ab_loss + l_loss, {"ab_loss": ab_loss.detach(), "l_loss": l_loss.detach(),
                                  "ab_top1": ab_top1, "l_top1": l_top1}

    def ab_cross_entropy(self, ab_logits: torch.Tensor, ab: torch.Tensor,
                         ab_target: torch.Tensor) -> torch.Tensor:
        """Mean per-pixel cross-entropy (nats) of ab logits ``(N, K_ab, s, s)``: against
        the hard bins ``ab_target`` ``(N, s, s)``, or the soft encoding of the pooled ab
        ``(N, 2, s, s)`` (Zhang et al. 2016, eq. 2); with ``rebalance``, each pixel's
        term × the weight of its bin (eq. 3–4), after counting the bins of training batches."""
        if self.options.soft_encoding:
            index, weight = soft_encode_ab(ab, self.ab_centres, NEIGHBOURS, SIGMA)  # (N, k, s, s)
            log_p = F.log_softmax(ab_logits.float(), dim=1)  # (N, K_ab, s, s)
            per_pixel = -(weight * log_p.gather(1, index)).sum(1)  # (N, s, s)
        else:
            per_pixel = F.cross_entropy(ab_logits, ab_target, reduction="none")  # (N, s, s)
        if self.options.rebalance:
            if self.training and torch.is_grad_enabled():  # training images only
                bins = ab_target.flatten()  # (N·s·s,); index_add_: bincount syncs on CUDA
                self.ab_counts.index_add_(0, bins, torch.ones_like(bins, dtype=torch.float64))
            weights = rebalance_weights(self.ab_counts, self.ab_centres, MIX, SIGMA)  # (K_ab,)
            per_pixel = per_pixel * weights[ab_target]  # (N, s, s)
        return per_pixel.mean()

    @torch.no_grad()
    def decode(self, ab_logits: torch.Tensor, l_logits: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Point estimates in Lab units: the annealed mean of ab (softmax of logits / T,
        Zhang et al. 2016, §2.3) ``(N, 2, s, s)`` and the mean of L ``(N, 1, s, s)``."""
        p_ab = torch.softmax(ab_logits.float() / self.options.temperature, dim=1)  # (N, K_ab, s, s)
        p_l = torch.softmax(l_logits.float(), dim=1)  # (N, K_L, s, s)
        return (torch.einsum("nkhw,kc->nchw", p_ab, self.ab_centres),
                torch.einsum("nkhw,k->nhw", p_l, self.l_centres)[:, None])

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """Rows: L input, its colourisation (L, annealed-mean ab from L), L from ab, original."""
        lab = rgb_to_lab(images)  # (n, 3, H, W)
        ab, lightness = self.decode(*self.predict(self._scale(lab)))  # (n, 2, s, s), (n, 1, s, s)
        up = dict(size=images.shape[-2:], mode="bilinear", align_corners=False)
        ab, lightness = F.interpolate(ab, **up), F.interpolate(lightness, **up)  # (n, 2|1, H, W)
        return image_rows([
            ("input L", lab[:, :1] / 100.0),
            ("ab from L", lab_to_rgb(torch.cat([lab[:, :1], ab], dim=1))),
            ("L from ab", lightness / 100.0), ("original", images),
        ], title=f"split-brain (annealed mean, T={self.options.temperature})")

    def summary(self) -> dict[str, Any]:
        """Adds the bin counts, the prediction side, the width each half was built at and,
        with ``rebalance``, how many training pixels the ab histogram holds."""
        extra = {"rebalance_pixels": int(self.ab_counts.sum())} if self.options.rebalance else {}
        return {**super().summary(), "ab_bins": int(self.ab_centres.shape[0]),
                "l_bins": self.options.l_bins, "target_size": self.target_size,
                "width_multiplier": self.width_used, **extra}
