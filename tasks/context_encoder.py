"""``context-encoder``: feature learning by inpainting (Pathak et al., CVPR 2016)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.core.errors import OptionError
from ssl_bench.core.figures import image_rows
from ssl_bench.core.registry import TASKS
from tasks.base import BackboneFactory, Logs, OptimConfig, PretextTask
from tasks.options import check_choice, option
from tasks.blocks import ConvDecoder, psnr_db

MASKS = ("center", "random-block", "random-region")
RANDOM_BLOCKS = 4  # blocks per image, each ≤ side/(2·√4) = side/4 square: ≤ ¼ in union
REGION_CELLS = 8  # noise samples per image side: the released code's 0.06 px⁻¹ on 128 px crops
REGION_AREA = (0.20, 0.30)  # masked fraction of a random region (the released code's bounds)


def make_masks(kind: str, n: int, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Hole masks of §3.3, ``(n, 1, size, size)`` bool, True where the encoder sees
    nothing, drawn from torch's global RNG; OptionError for an unknown ``kind``.

    * ``center``: the centred square of side ⌊size/2⌋ (¼ of an even-sided image).
    * ``random-block``: the union of 4 possibly overlapping blocks with sides uniform
      in [size/8, size/4] at uniform positions: more than 0, at most ¼ of the image.
    * ``random-region``: the paper pastes PASCAL VOC segmentations; lacking them we
      threshold smooth noise as the released ``train_random.lua`` does: 8×8 uniform
      noise upsampled bicubically, its top k pixels with k uniform in 20–30% of the image.
    """
    check_choice("mask", kind, MASKS)
    coords = torch.arange(size, device=device)  # (size,)
    if kind == "center":
        side = size // 2
        inside = (coords >= (size - side) // 2) & (coords < (size - side) // 2 + side)  # (size,)
        return (inside[:, None] & inside[None, :]).expand(n, 1, size, size).clone()
    if kind == "random-block":
        most = max(1, int(size / (2 * math.sqrt(RANDOM_BLOCKS))))  # longest block side
        shape = (n, RANDOM_BLOCKS, 1)
        spans = []
        for _ in range(2):  # rows, then columns
            length = torch.randint(max(1, most // 2), most + 1, shape, device=device)  # (n, K, 1)
            start = (torch.rand(shape, device=device) * (size - length + 1)).long()  # (n, K, 1)
            spans.append((coords >= start) & (coords < start + length))  # (n, K, size)
        rows, cols = spans
        return (rows[..., :, None] & cols[..., None, :]).any(dim=1, keepdim=True)  # (n, 1, s, s)
    noise = torch.rand(n, 1, REGION_CELLS, REGION_CELLS, device=device)  # (n, 1, 8, 8)
    field = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=True)
    low, high = math.ceil(REGION_AREA[0] * size * size), math.floor(REGION_AREA[1] * size * size)
    count = torch.randint(low, high + 1, (n, 1), device=device)  # (n, 1) pixels to hide
    rank = field.flatten(1).argsort(dim=1, descending=True).argsort(dim=1)  # (n, s²)
    return (rank < count).view(n, 1, size, size)


def loss_weights(mask: torch.Tensor, overlap_px: int, overlap_weight: float) -> torch.Tensor:
    """Per-pixel weights of the reconstruction loss (§4): the decoder predicts the hole
    ``(N, 1, H, W)`` bool dilated by ``overlap_px`` pixels, and the border that overlaps
    the context weighs ``overlap_weight`` (paper: 10) times the hole. Returns
    ``(N, 1, H, W)`` float32: 1 in the hole, ``overlap_weight`` on the border, 0 elsewhere."""
    hole = mask.float()
    if overlap_px == 0:
        return hole
    patch = F.max_pool2d(hole, 2 * overlap_px + 1, stride=1, padding=overlap_px)
    return hole + overlap_weight * (patch - hole)


class ChannelWiseFC(nn.Module):
    """Channel-wise fully-connected layer (§3.1): a dense n²→n² map within each of m
    feature maps, none between them: m·n⁴ weights (not m²·n⁴) + m·n² biases."""

    def __init__(self, channels: int, side: int) -> None:
        super().__init__()
        units = side * side
        bound = 1.0 / side  # 1/√fan_in, fan_in = n² (nn.Linear's default range)
        self.weight = nn.Parameter(torch.empty(channels, units, units).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels, units).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, m, n, n)`` → ``(N, m, n, n)``; output channel c sees input channel c only."""
        y = torch.einsum("bci,coi->bco", x.flatten(2), self.weight) + self.bias  # (N, m, n²)
        return y.view_as(x)


class Discriminator(nn.Sequential):
    """DCGAN discriminator (Radford et al. 2016 §3), ``(N, C, size, size)`` → ``(N,)``
    logits that the input is real: 4×4 stride-2 convolutions halve the side and double
    the width from ``width`` (BatchNorm but on the first, LeakyReLU(0.2)) down to a side
    ≤ 4, then one convolution spans the remaining map."""

    def __init__(self, in_channels: int, size: int, width: int) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1),
                                   nn.LeakyReLU(0.2, inplace=True)]
        side, channels = size // 2, width
        while side > 4:
            layers += [nn.Conv2d(channels, 2 * channels, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(2 * channels), nn.LeakyReLU(0.2, inplace=True)]
            side, channels = side // 2, 2 * channels
        layers += [nn.Conv2d(channels, 1, max(1, side)), nn.Flatten(0)]
        super().__init__(*layers)


@TASKS.register("context-encoder")
class ContextEncoder(PretextTask):
    """Context encoder: inpaint hidden image regions from their context.

    Pathak, Krähenbühl, Donahue, Darrell & Efros, "Context Encoders: Feature Learning
    by Inpainting", CVPR 2016.

    * §3.1 encoder–decoder F: the backbone's m×n×n feature map of the image with its
      hole filled by the dataset mean (§4), a :class:`ChannelWiseFC` (every unit sees
      the whole map), a 1×1 convolution mixing channels, and up-convolutions
      (:class:`tasks.blocks.ConvDecoder`) with a sigmoid (the paper's tanh, rescaled).
    * §3.2 loss: (1 − λ_adv)·L_rec + λ_adv·L_adv. L_rec: squared error over the
      predicted patch, 10× on a border overlapping the context (:func:`loss_weights`,
      §4). L_adv: non-saturating GAN loss of a DCGAN :class:`Discriminator` shown only
      the patch (a ``center`` mask gives the released code's centre crop, zero-padded):
      with the context it would spot the seam (§3.2: only the generator sees context).
      ``adversarial=True`` by default, the joint loss asked of this benchmark; the
      paper's feature runs used L2 alone (§5.2: joint training diverged on AlexNet).
    * §3.3 masks (:func:`make_masks`): ``random-region``, the paper's for features.
    * §4: Adam, β1 = 0.5, F at 10× D's rate (2e-3 vs 2e-4, released ``train.lua``);
      each step updates D, then F. Border: the released code's 4 px at 128 px
      (``overlapPred=4``): 1 px at 32 px, 3 px at 96 px, and, as there, only around
      the ``center`` hole: around random regions the border would put most of the
      loss weight on pixels the encoder sees (89 % at 32 px).

    Features: the pooled backbone output on standardized, unmasked images ``(N, D)``."""

    paper = "Pathak et al., CVPR 2016, §3.1–3.3, §4"
    tune_knob = ({}, {"mask": "center"})  # hole shape (§3.3, Table 1)

    @dataclass
    class Options:
        """Defaults: Pathak et al. 2016, scaled to 28–96 px images."""

        mask: str = option("random-region", choices=MASKS)  # hole shape (§3.3)
        adversarial: bool = option(True)  # add L_adv and its discriminator (§3.2)
        adv_weight: float = option(0.001, low=0.0, high=1.0)  # λ_adv (§3.2), λ_rec = 1−λ_adv
        overlap: float = option(4 / 128, low=0.0, high=0.25)  # border width / image side
        overlap_weight: float = option(10.0, low=0.0, high=1000.0)  # border vs hole (§4)
        decoder_width: int = option(32, low=1, high=1024)  # decoder's last up-convolution
        disc_width: int = option(32, low=1, high=1024)  # D's first layer (DCGAN: 64 at 64 px)

    def __init__(self, make_backbone: BackboneFactory, spec, options: Options) -> None:
        super().__init__(make_backbone, spec, options)
        self.backbone = self.build_backbone(make_backbone)
        channels, side, _ = self.backbone.feature_map_shape()  # m, n, n
        self.cwfc = ChannelWiseFC(channels, side)
        self.channel_mix = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1, bias=False),
                                         nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.decoder = ConvDecoder(channels, side, spec.channels, spec.image_size,
                                   options.decoder_width)
        self.discriminator = (Discriminator(spec.channels, spec.image_size, options.disc_width)
                              if options.adversarial else None)
        centre = options.mask == "center"  # the released code's border is the centre hole's
        self.overlap_px = round(options.overlap * spec.image_size) if centre else 0

    def inpaint(self, masked: torch.Tensor) -> torch.Tensor:
        """F: mean-filled images ``(N, C, H, W)`` in [0, 1] → predicted images, same shape."""
        fmap = self.backbone.feature_map(self.normalize(masked))  # (N, m, n, n)
        context = self.channel_mix(self.cwfc(fmap))  # (N, m, n, n)
        return torch.sigmoid(self.decoder(context))  # (N, C, H, W) in [0, 1]

    def fill_holes(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Holes drawn from the global RNG, filled with the dataset mean (§4), inpainted:
        ``mask`` ``(N, 1, H, W)`` bool, mean-filled input and prediction ``(N, C, H, W)``."""
        mask = make_masks(self.options.mask, len(images), images.shape[-1], images.device)
        masked = torch.where(mask, self.pixel_mean.to(images.dtype), images)  # (N, C, H, W)
        return mask, masked, self.inpaint(masked)  # prediction (N, C, H, W)

    def objective(self, images: torch.Tensor, mask: torch.Tensor, masked: torch.Tensor,
                  prediction: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """F's loss (§3.2) against the current discriminator, a fixed critic here, and
        its logs: ``rec_loss``, ``adv_loss`` (if adversarial), and the PSNR (dB) over
        the hole of the prediction (``psnr_db``) and of the mean fill (``input_psnr_db``)."""
        weights = loss_weights(mask, self.overlap_px, self.options.overlap_weight)  # (N, 1, H, W)
        patch = (weights > 0).to(images.dtype)  # (N, 1, H, W): hole + border, what F predicts
        err = (prediction.float() - images.float()).pow(2) * weights  # (N, C, H, W)
        rec_loss = err.sum() / (patch.sum() * images.shape[1])  # mean over the patch
        loss, logs = rec_loss, {"rec_loss": rec_loss.detach()}
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)
            judged = self.discriminator(prediction * patch)  # (N,) logits
            self.discriminator.requires_grad_(True)
            adv_loss = F.binary_cross_entropy_with_logits(judged, torch.ones_like(judged))
            loss = (1.0 - self.options.adv_weight) * rec_loss + self.options.adv_weight * adv_loss
            logs["adv_loss"] = adv_loss.detach()
        with torch.no_grad():
            logs["psnr_db"] = psnr_db(prediction, images, mask).mean()
            logs["input_psnr_db"] = psnr_db(masked, images, mask).mean()
        return loss, logs

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """:meth:`objective` on fresh holes in images ``(N, C, H, W)`` in [0, 1]."""
        return self.objective(images, *self.fill_holes(images))

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """Adam, β1 = 0.5, no weight decay: F at 2e-3, then D (if adversarial) at 2e-4 (§4)."""
        rates = (2e-3,) if self.discriminator is None else (2e-3, 2e-4)
        return [OptimConfig("adam", lr=lr, weight_decay=0.0, betas=(0.5, 0.999)) for lr in rates]

    def configure_optimizers(self, optims: list[OptimConfig]) -> list[torch.optim.Optimizer]:
        """F's optimizer (all but D's parameters), then D's; OptionError unless one per network."""
        expected = 1 if self.discriminator is None else 2
        if len(optims) != expected:
            raise OptionError(f"context-encoder takes {expected} optimizer settings (encoder–"
                              f"decoder{', discriminator' * (expected - 1)}), got {len(optims)}")
        critic = list(self.discriminator.parameters()) if self.discriminator else []
        generator = [p for name, p in self.named_parameters()
                     if p.requires_grad and not name.startswith("discriminator.")]
        return [optim.build(params) for optim, params in zip(optims, (generator, critic))]

    def training_step(self, images: torch.Tensor, optimizers: list[torch.optim.Optimizer]) -> Logs:
        """One D step, then one F step, on one draw of holes; logs ``disc_loss`` too."""
        mask, masked, prediction = self.fill_holes(images)  # (N, 1, H, W), 2 × (N, C, H, W)
        logs: Logs = {}
        if self.discriminator is not None:
            weights = loss_weights(mask, self.overlap_px, self.options.overlap_weight)
            patch = (weights > 0).to(images.dtype)  # (N, 1, H, W)
            optimizers[1].zero_grad(set_to_none=True)
            real = self.discriminator(images * patch)  # (N,) logits
            fake = self.discriminator(prediction.detach() * patch)  # (N,) logits
            disc_loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                         + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
            disc_loss.backward()
            optimizers[1].step()
            logs["disc_loss"] = disc_loss.detach()
        optimizers[0].zero_grad(set_to_none=True)
        loss, gen_logs = self.objective(images, mask, masked, prediction)
        loss.backward()
        optimizers[0].step()
        return {"loss": loss.detach(), **gen_logs, **logs}

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """Rows: mean-filled input, prediction pasted into the context, original."""
        mask, masked, prediction = self.fill_holes(images)  # (n, 1, H, W), 2 × (n, C, H, W)
        filled = torch.where(mask, prediction, images)  # (n, C, H, W)
        return image_rows([("masked input", masked), ("filled in", filled), ("original", images)],
                          title=f"context encoder ({self.options.mask} mask)")

    def summary(self) -> dict:
        """Adds the overlap border's width in pixels."""
        return {**super().summary(), "overlap_px": self.overlap_px}
