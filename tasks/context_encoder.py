"""``context-encoder``: feature learning by inpainting (Pathak et al., CVPR 2016)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.errors import OptionError
from ssl_bench.plots import image_rows
from ssl_bench.registry import TASKS
from tasks.base import (BackboneFactory, Logs, OptimConfig, PretextTask, check_choice,
                        check_range, count_parameters)
from tasks.decoders import ConvDecoder, probe_feature_map

MASKS = ("center", "random-block", "random-region")
RANDOM_BLOCKS = 4  # blocks per image; each at most side/(2·√4) = side/4 square, so ≤ ¼ in union
REGION_CELLS = 8  # noise samples per image side: the released code's 0.06 px⁻¹ on 128 px crops
REGION_AREA = (0.20, 0.30)  # masked fraction of a random region (the released code's bounds)
EVAL_SEED = 0  # held-out masks are drawn from a fixed-seed generator: deterministic metrics


def make_masks(kind: str, n: int, size: int, device: torch.device | str = "cpu",
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Region masks of Pathak et al. 2016 §3.3, built as one batched tensor.

    * ``center``: the centred square of side ⌊size/2⌋ (exactly ¼ of an even-sided image).
    * ``random-block``: the union of 4 axis-aligned, possibly overlapping blocks per
      image with sides drawn uniformly in [size/8, size/4] at uniform positions; the
      union covers more than 0 and at most ¼ of the image.
    * ``random-region``: arbitrary shapes. The paper pastes deformed PASCAL VOC 2012
      segmentation masks; having no segmentations here, we threshold smooth random
      fields instead, as the authors' released ``train_random.lua`` does: uniform
      noise on an 8×8 grid, upsampled bicubically to ``size``, keeps its highest k
      pixels, with k drawn uniformly so that 20–30% of the image is masked.

    Args:
        kind: one of ``center``, ``random-block``, ``random-region``.
        n: masks to draw.
        size: image side in pixels.
        device: where the masks live.
        generator: source of randomness (on ``device``); ``None`` uses torch's global RNG.

    Returns:
        ``(n, 1, size, size)`` bool, True where pixels are hidden from the encoder.

    Raises:
        OptionError: for an unknown ``kind``.
    """
    check_choice("mask", kind, MASKS)
    coords = torch.arange(size, device=device)
    if kind == "center":
        side = size // 2
        inside = (coords >= (size - side) // 2) & (coords < (size - side) // 2 + side)
        return (inside[:, None] & inside[None, :]).expand(n, 1, size, size).clone()
    if kind == "random-block":
        longest = max(1, int(size / (2 * math.sqrt(RANDOM_BLOCKS))))
        shape = (n, RANDOM_BLOCKS, 1)
        spans = []
        for _ in range(2):  # rows, then columns
            length = torch.randint(max(1, longest // 2), longest + 1, shape, device=device,
                                   generator=generator)
            start = (torch.rand(shape, device=device, generator=generator)
                     * (size - length + 1)).long()
            spans.append((coords >= start) & (coords < start + length))  # (n, K, size)
        rows, cols = spans
        return (rows[..., :, None] & cols[..., None, :]).any(dim=1, keepdim=True)
    noise = torch.rand(n, 1, REGION_CELLS, REGION_CELLS, device=device, generator=generator)
    field = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=True)
    low, high = math.ceil(REGION_AREA[0] * size * size), math.floor(REGION_AREA[1] * size * size)
    count = torch.randint(low, high + 1, (n, 1), device=device, generator=generator)
    rank = field.flatten(1).argsort(dim=1, descending=True).argsort(dim=1)
    return (rank < count).view(n, 1, size, size)


def loss_weights(mask: torch.Tensor, overlap_px: int, overlap_weight: float) -> torch.Tensor:
    """Per-pixel weights of the reconstruction loss (Pathak et al. 2016 §4).

    The decoder predicts a slightly larger patch than the hole: the hole dilated by
    ``overlap_px`` pixels, a border that overlaps the visible context; the border's
    squared error is weighted ``overlap_weight`` times more than the hole's.

    Args:
        mask: ``(N, 1, H, W)`` bool hole mask.
        overlap_px: width of the border in pixels (0: no border).
        overlap_weight: weight of the border (the paper's 10).

    Returns:
        ``(N, 1, H, W)`` float32: 1 in the hole, ``overlap_weight`` on the border, 0 elsewhere.
    """
    hole = mask.float()
    if overlap_px == 0:
        return hole
    patch = F.max_pool2d(hole, 2 * overlap_px + 1, stride=1, padding=overlap_px)
    return hole + overlap_weight * (patch - hole)


def masked_psnr_db(prediction: torch.Tensor, target: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """PSNR of each image over its masked pixels only, 10·log10(1 / MSE), in dB.

    Args:
        prediction: ``(N, C, H, W)`` float in [0, 1].
        target: ``(N, C, H, W)`` float in [0, 1].
        mask: ``(N, 1, H, W)`` bool; each image needs at least one True pixel.

    Returns:
        ``(N,)`` float32; the MSE is floored at 1e-10 (100 dB for a perfect fill).
    """
    err = (prediction.float() - target.float()).pow(2) * mask
    mse = err.sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * prediction.shape[1])
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


class ChannelWiseFC(nn.Module):
    """Channel-wise fully-connected layer (Pathak et al. 2016 §3.1).

    A dense n²→n² map within each of the m feature maps and no weights between
    maps: m·n⁴ weights (against m²·n⁴ for a full layer) plus a bias of shape
    ``(m, n²)``, one per output unit, so m·n⁴ + m·n² parameters in all. Computed
    for all channels at once with one einsum.

    Args:
        channels: m.
        side: n, the side of the square feature maps.
    """

    def __init__(self, channels: int, side: int) -> None:
        super().__init__()
        units = side * side
        bound = 1.0 / side  # 1/√fan_in, fan_in = n² (nn.Linear's default range)
        self.weight = nn.Parameter(torch.empty(channels, units, units).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels, units).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, m, n, n)`` → ``(N, m, n, n)``; output channel c depends on input channel c only."""
        y = torch.einsum("bci,coi->bco", x.flatten(2), self.weight) + self.bias
        return y.view_as(x)


class Discriminator(nn.Sequential):
    """DCGAN discriminator (Radford et al. 2016 §3): 4×4 stride-2 convolutions that
    halve the side and double the width, BatchNorm (not on the first layer) and
    LeakyReLU(0.2), until the side is at most 4; a last convolution over the whole
    remaining map gives one logit per image (the sigmoid lives in the BCE loss).

    Args:
        in_channels: image channels C.
        size: image side in pixels.
        width: channels of the first layer.

    Shapes:
        ``(N, C, size, size)`` float → ``(N,)`` logits that the input is real.
    """

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

    Pathak, Krähenbühl, Donahue, Darrell & Efros, "Context Encoders: Feature
    Learning by Inpainting", CVPR 2016.

    * §3.1 encoder–decoder: the encoder is the backbone's spatial feature map
      (m channels of n×n, ``backbone.feature_map``) of the image with its hole
      filled by the dataset mean (§4). A :class:`ChannelWiseFC` layer lets every
      unit see the whole map, a stride-1 1×1 convolution (+ BatchNorm, ReLU) then
      mixes channels, and a decoder of up-convolutions
      (:class:`tasks.decoders.ConvDecoder`) with a sigmoid output returns a full
      image in [0, 1] (the paper's tanh on [-1, 1], rescaled).
    * §3.2 loss: λ_rec·L_rec + λ_adv·L_adv with λ_rec = 1 − λ_adv = 0.999. L_rec is
      the mean squared error over the predicted patch, weighted 10× on a border
      that overlaps the context (:func:`loss_weights`; §4). L_adv is the
      non-saturating GAN loss of a DCGAN :class:`Discriminator` that sees only the
      predicted patch: real and generated images are both multiplied by the patch
      mask, context zeroed. With a ``center`` mask this is the released code's
      input (the centre crop), zero-padded; the context is kept from the
      discriminator, which would otherwise spot the seam between prediction and
      context (§3.2: only the generator is conditioned on context).
      Default ``adversarial=True`` (the joint loss, as requested for this
      benchmark); the paper's own feature-learning runs used L2 alone (§3.2,
      §5.2: joint training diverged on AlexNet), hence ``adversarial=false``.
    * §3.3 masks (:func:`make_masks`): ``random-region`` by default, the mask the
      paper uses for its feature-learning experiments.
    * §4 optimisation: Adam with β1 = 0.5 for both networks; the encoder–decoder's
      learning rate is 10× the discriminator's (2e-3 vs 2e-4, the released
      ``train.lua``). Each training step updates D first, then the encoder–decoder.

    Overlap width: §4 predicts a patch slightly larger than the hole and weights
    its overlap with the context 10×; the width used here is the released code's
    4 px at 128 px (``overlapPred=4``), i.e. 1/32 of the side: 1 px at 32 px,
    3 px at 96 px.

    Features: the pooled backbone output on standardized, unmasked images ``(N, D)``.
    """

    name = "context-encoder"
    paper = "Pathak et al., CVPR 2016, §3.1–3.3, §4"

    @dataclass
    class Options:
        """Hyperparameters; defaults follow Pathak et al. 2016 scaled to 28–96 px.

        Attributes:
            mask: hole shape, ``center``, ``random-block`` or ``random-region`` (§3.3).
            adversarial: add the adversarial loss and its discriminator (§3.2).
            adv_weight: λ_adv; λ_rec = 1 − λ_adv (§3.2: 0.001).
            overlap: width of the 10×-weighted border as a fraction of the image side
                (the released code's 4 px of 128).
            overlap_weight: weight of that border relative to the hole (§4: 10).
            decoder_width: channels of the decoder's last up-convolution.
            disc_width: channels of the discriminator's first layer (DCGAN: 64 at 64 px).
        """

        mask: str = "random-region"
        adversarial: bool = True
        adv_weight: float = 0.001
        overlap: float = 4 / 128
        overlap_weight: float = 10.0
        decoder_width: int = 32
        disc_width: int = 32

        def __post_init__(self) -> None:
            check_choice("mask", self.mask, MASKS)
            check_range("adv_weight", self.adv_weight, 0.0, 1.0)
            check_range("overlap", self.overlap, 0.0, 0.25)
            check_range("overlap_weight", self.overlap_weight, 0.0, 1000.0)
            check_range("decoder_width", self.decoder_width, 1, 1024)
            check_range("disc_width", self.disc_width, 1, 1024)

    def __init__(self, make_backbone: BackboneFactory, spec, options: Options) -> None:
        super().__init__(make_backbone, spec, options)
        self.backbone = make_backbone()
        channels, side, _ = probe_feature_map(self.backbone, spec.channels, spec.image_size)
        self.cwfc = ChannelWiseFC(channels, side)
        self.channel_mix = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1, bias=False),
                                         nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.decoder = ConvDecoder(channels, side, spec.channels, spec.image_size,
                                   options.decoder_width)
        self.discriminator = (Discriminator(spec.channels, spec.image_size, options.disc_width)
                              if options.adversarial else None)
        self.overlap_px = round(options.overlap * spec.image_size)

    # ---------------------------------------------------------------- model

    def inpaint(self, masked: torch.Tensor) -> torch.Tensor:
        """The encoder–decoder F: a full image ``(N, C, H, W)`` in [0, 1] predicted from
        mean-filled images ``(N, C, H, W)`` in [0, 1] (only the hole is meant to be used)."""
        context = self.cwfc(self.backbone.feature_map(self.normalize(masked)))
        return torch.sigmoid(self.decoder(self.channel_mix(context)))

    def hide(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Fill the masked pixels ``(N, 1, H, W)`` of ``images`` with the dataset mean (§4)."""
        return torch.where(mask, self.pixel_mean.to(images.dtype), images)

    def _eval_masks(self, images: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device=images.device).manual_seed(EVAL_SEED)
        return make_masks(self.options.mask, len(images), images.shape[-1], images.device,
                          generator)

    # ---------------------------------------------------------------- training

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """Adam, β1 = 0.5, no weight decay: the encoder–decoder at 2e-3, then (with the
        adversarial loss) the discriminator at 2e-4 (§4; released ``train.lua``)."""
        generator = OptimConfig("adam", lr=2e-3, weight_decay=0.0, betas=(0.5, 0.999))
        if self.discriminator is None:
            return [generator]
        return [generator, OptimConfig("adam", lr=2e-4, weight_decay=0.0, betas=(0.5, 0.999))]

    def configure_optimizers(self, optims: list[OptimConfig]) -> list[torch.optim.Optimizer]:
        """The encoder–decoder's optimizer (every parameter outside the discriminator),
        then the discriminator's.

        Raises:
            OptionError: if ``optims`` does not have one entry per network.
        """
        expected = 1 if self.discriminator is None else 2
        if len(optims) != expected:
            raise OptionError(f"context-encoder takes {expected} optimizer settings "
                              f"(encoder–decoder{', discriminator' * (expected - 1)}), "
                              f"got {len(optims)}")
        discriminator = set(self.discriminator.parameters()) if self.discriminator else set()
        generator = [p for p in self.parameters() if p.requires_grad and p not in discriminator]
        built = [optims[0].build(generator)]
        if self.discriminator is not None:
            built.append(optims[1].build(list(self.discriminator.parameters())))
        return built

    def training_step(self, images: torch.Tensor,
                      optimizers: list[torch.optim.Optimizer]) -> Logs:
        """One discriminator step, then one encoder–decoder step, on fresh masks.

        Args:
            images: ``(N, C, H, W)`` float in [0, 1].
            optimizers: from :meth:`configure_optimizers`.

        Returns:
            ``loss`` (the encoder–decoder's total), ``rec_loss``, and with the
            adversarial loss ``adv_loss`` (generator) and ``disc_loss``.
        """
        mask = make_masks(self.options.mask, len(images), images.shape[-1], images.device)
        weights = loss_weights(mask, self.overlap_px, self.options.overlap_weight)
        patch = (weights > 0).to(images.dtype)  # hole plus border: what F is asked to predict
        prediction = self.inpaint(self.hide(images, mask))
        logs: Logs = {}

        if self.discriminator is not None:
            disc_opt = optimizers[1]
            disc_opt.zero_grad(set_to_none=True)
            real = self.discriminator(images * patch)
            fake = self.discriminator(prediction.detach() * patch)
            disc_loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                         + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
            disc_loss.backward()
            disc_opt.step()
            logs["disc_loss"] = disc_loss.detach()

        gen_opt = optimizers[0]
        gen_opt.zero_grad(set_to_none=True)
        err = (prediction.float() - images.float()).pow(2) * weights
        rec_loss = err.sum() / (patch.sum() * images.shape[1])
        loss = rec_loss
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)  # D is a fixed critic in this step
            judged = self.discriminator(prediction * patch)
            self.discriminator.requires_grad_(True)
            adv_loss = F.binary_cross_entropy_with_logits(judged, torch.ones_like(judged))
            loss = (1.0 - self.options.adv_weight) * rec_loss + self.options.adv_weight * adv_loss
            logs["adv_loss"] = adv_loss.detach()
        loss.backward()
        gen_opt.step()
        return {"loss": loss.detach(), "rec_loss": rec_loss.detach(), **logs}

    # ---------------------------------------------------------------- evaluation

    @torch.no_grad()
    def pretext_metrics(self, images: torch.Tensor) -> dict[str, float]:
        """Inpainting quality on held-out images, over the hole only, with masks of the
        training kind drawn from a fixed seed.

        Returns:
            ``masked_psnr_db``: PSNR (dB) of the prediction in the hole;
            ``mean_fill_psnr_db``: PSNR of the dataset-mean fill there (the baseline).
        """
        mask = self._eval_masks(images)
        masked = self.hide(images, mask)
        prediction = self.inpaint(masked)
        return {"masked_psnr_db": masked_psnr_db(prediction, images, mask).mean().item(),
                "mean_fill_psnr_db": masked_psnr_db(masked, images, mask).mean().item()}

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """Rows: masked input (mean-filled), the prediction composited into the context,
        the original."""
        mask = self._eval_masks(images)
        masked = self.hide(images, mask)
        filled = torch.where(mask, self.inpaint(masked), images)
        return image_rows([("masked input", masked), ("filled in", filled), ("original", images)],
                          title=f"context encoder ({self.options.mask} mask)")

    def summary(self) -> dict:
        """Parameter counts of the CW-FC layer, decoder and discriminator, and the
        border width in pixels."""
        return {"cwfc_parameters": count_parameters(self.cwfc),
                "decoder_parameters": count_parameters(self.decoder)
                + count_parameters(self.channel_mix),
                "discriminator_parameters": count_parameters(self.discriminator)
                if self.discriminator is not None else 0,
                "overlap_px": self.overlap_px}
