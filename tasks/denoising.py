"""``denoising``: the denoising autoencoder (Vincent et al. 2008; 2010)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_bench.plots import image_rows
from ssl_bench.registry import TASKS
from tasks.base import (BackboneFactory, Logs, OptimConfig, PretextTask, check_choice,
                        check_range, count_parameters)
from tasks.decoders import ConvDecoder, probe_feature_map

NOISES = ("gaussian", "masking", "salt-and-pepper")
LOSSES = ("mse", "bce")


def corrupt(images: torch.Tensor, noise: str, sigma: float, fraction: float) -> torch.Tensor:
    """The corruption process q(x̃ | x) of a denoising autoencoder.

    * ``gaussian``: additive isotropic Gaussian noise x̃ = x + σ·ε, ε ~ N(0, I), per
      element, then clipped to [0, 1] (Vincent et al. 2010 §4.1 "GS"; the clipping
      follows Chollet's Keras MNIST denoising example).
    * ``masking``: exactly round(ν·H·W) pixels per image, chosen uniformly without
      replacement, are set to 0 (Vincent et al. 2008 §2.3, "destruction" of a
      fixed number νd of components; 2010 §4.1 "MN").
    * ``salt-and-pepper``: exactly round(ν·H·W) pixels per image are set to 0 or 1
      by a fair coin flip each (Vincent et al. 2010 §4.1 "SP").

    Masking and salt-and-pepper corrupt whole pixels (all C channels together), so
    an RGB pixel turns black or white rather than into a coloured speck; for
    grayscale images this is the papers' per-component corruption.

    Args:
        images: ``(N, C, H, W)`` float in [0, 1].
        noise: one of ``gaussian``, ``masking``, ``salt-and-pepper``.
        sigma: σ of the Gaussian noise, in [0, 1] intensity units.
        fraction: ν, the fraction of pixels masking / salt-and-pepper corrupt.

    Returns:
        x̃, ``(N, C, H, W)`` float in [0, 1], from torch's global RNG.

    Raises:
        OptionError: for an unknown ``noise``.
    """
    check_choice("noise", noise, NOISES)
    if noise == "gaussian":
        return (images + sigma * torch.randn_like(images)).clamp(0.0, 1.0)
    n, _, h, w = images.shape
    count = round(fraction * h * w)
    chosen = torch.rand(n, h * w, device=images.device).argsort(dim=1)[:, :count]
    hit = torch.zeros(n, h * w, dtype=torch.bool, device=images.device)
    hit = hit.scatter_(1, chosen, True).view(n, 1, h, w)
    if noise == "masking":
        value = torch.zeros_like(images[:, :1])
    else:
        value = (torch.rand(n, 1, h, w, device=images.device) < 0.5).to(images.dtype)
    return torch.where(hit, value, images)


def psnr_db(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image, 10·log10(1 / MSE), in dB.

    Args:
        prediction: ``(N, C, H, W)`` float in [0, 1].
        target: ``(N, C, H, W)`` float in [0, 1].

    Returns:
        ``(N,)`` float32; the MSE is floored at 1e-10, so identical images give 100 dB.
    """
    mse = (prediction.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


@TASKS.register("denoising")
class Denoising(PretextTask):
    """Denoising autoencoder: reconstruct the clean image from a corrupted copy.

    Follows Vincent et al., "Extracting and composing robust features with denoising
    autoencoders", ICML 2008, §2.3 (corrupt x to x̃, encode x̃, decode, and score
    the reconstruction against the clean x), with the corruption types of Vincent et
    al., JMLR 2010, §4.1 (see :func:`corrupt`). The encoder is the backbone on the
    dataset-normalised x̃; the decoder is a :class:`~tasks.decoders.ConvDecoder` on
    the backbone's feature map, in place of the papers' single tied-weight layer,
    so that a convolutional backbone gets a convolutional decoder.

    The loss is the squared error (``mse``, 2008 §2.2 for real-valued x) or the
    reconstruction cross-entropy L_H on [0, 1] pixels (``bce``, 2008 §2.2; the
    decoder output is read as logits). Features: the pooled backbone output on
    clean, dataset-normalised images, ``(N, D)``.
    """

    name = "denoising"
    paper = "Vincent et al., ICML 2008, §2.3; JMLR 2010, §4.1"

    @dataclass
    class Options:
        """Hyperparameters of the denoising autoencoder.

        Attributes:
            noise: ``gaussian`` (default), ``masking`` or ``salt-and-pepper``.
                Gaussian is the default because the benchmark's images are
                real-valued photographs and JMLR 2010 §4.1 recommends additive
                Gaussian noise for real-valued inputs and masking/salt-and-pepper
                for (near-)binary ones such as MNIST.
            sigma: σ of the Gaussian noise on [0, 1] pixels; 0.5 as in Chollet's
                Keras MNIST denoising example.
            fraction: ν, the fraction of pixels that masking or salt-and-pepper
                corrupt; 0.25, a middle destruction level of those the papers
                compare (2008 §5).
            loss: ``mse`` (default) or ``bce`` (cross-entropy on logits).
            decoder_width: channels of the decoder's last upsampling stage.
        """

        noise: str = "gaussian"
        sigma: float = 0.5
        fraction: float = 0.25
        loss: str = "mse"
        decoder_width: int = 32

        def __post_init__(self) -> None:
            check_choice("noise", self.noise, NOISES)
            check_range("sigma", self.sigma, 0.0, 2.0)
            check_range("fraction", self.fraction, 0.0, 1.0)
            check_choice("loss", self.loss, LOSSES)
            check_range("decoder_width", self.decoder_width, 1, 1024)

    def __init__(self, make_backbone: BackboneFactory, spec, options: Options) -> None:
        super().__init__(make_backbone, spec, options)
        self.backbone = make_backbone()
        channels, size, _ = probe_feature_map(self.backbone, spec.channels, spec.image_size)
        self.decoder = ConvDecoder(channels, size, spec.channels, spec.image_size,
                                   options.decoder_width)

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """Adam, lr 1e-3, no weight decay: the Keras denoising example's optimiser;
        Vincent et al. (2008 §2.3) regularise by the corruption alone, so no decay."""
        return [OptimConfig(name="adam", lr=1e-3, weight_decay=0.0)]

    def corrupt(self, images: torch.Tensor) -> torch.Tensor:
        """x̃ from x with this task's noise settings (see :func:`corrupt`)."""
        o = self.options
        return corrupt(images, o.noise, o.sigma, o.fraction)

    def decode(self, corrupted: torch.Tensor) -> torch.Tensor:
        """Decoder output ``(N, C, H, W)`` for x̃ in [0, 1]: the reconstruction for
        ``mse``, its logits for ``bce``."""
        return self.decoder(self.backbone.feature_map(self.normalize(corrupted)))

    def reconstruct(self, corrupted: torch.Tensor) -> torch.Tensor:
        """The reconstruction of x̃ as an image ``(N, C, H, W)`` in [0, 1]."""
        out = self.decode(corrupted).float()
        return out.sigmoid() if self.options.loss == "bce" else out.clamp(0.0, 1.0)

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """Reconstruction loss of the clean ``images`` ``(N, C, H, W)`` in [0, 1] from
        their corrupted copies, averaged over pixels."""
        out = self.decode(self.corrupt(images)).float()
        if self.options.loss == "bce":
            return F.binary_cross_entropy_with_logits(out, images), {}
        return F.mse_loss(out, images), {}

    @torch.no_grad()
    def pretext_metrics(self, images: torch.Tensor) -> dict[str, float]:
        """Mean PSNR (dB) of the reconstruction (``psnr_db``) and of the corrupted
        input (``corrupted_psnr_db``) against the clean test images."""
        corrupted = self.corrupt(images)
        return {"psnr_db": psnr_db(self.reconstruct(corrupted), images).mean().item(),
                "corrupted_psnr_db": psnr_db(corrupted, images).mean().item()}

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """Rows: clean, corrupted and reconstructed test images."""
        corrupted = self.corrupt(images)
        return image_rows([("clean", images), ("corrupted", corrupted),
                           ("reconstructed", self.reconstruct(corrupted))],
                          title=f"denoising autoencoder ({self.options.noise} noise)")

    def summary(self) -> dict:
        """Noise settings, loss and parameter counts of the encoder and decoder."""
        o = self.options
        noise = {"noise": o.noise, "loss": o.loss}
        noise.update({"sigma": o.sigma} if o.noise == "gaussian" else {"fraction": o.fraction})
        return {**noise, "backbone_parameters": count_parameters(self.backbone),
                "decoder_parameters": count_parameters(self.decoder)}
