"""``denoising``: the denoising autoencoder (Vincent et al. 2008; 2010)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_bench.core.figures import image_rows
from ssl_bench.core.registry import TASKS
from ssl_bench.core.spec import DataSpec
from tasks.base import BackboneFactory, Logs, OptimConfig, PretextTask
from tasks.options import check_choice, option
from tasks.blocks import ConvDecoder, decoded_image, psnr_db

NOISES = ("gaussian", "masking", "salt-and-pepper")
LOSSES = ("mse", "bce")


def corrupt(images: torch.Tensor, noise: str, sigma: float, fraction: float) -> torch.Tensor:
    """The corruption process q(x̃ | x) of a denoising autoencoder.

    * ``gaussian``: x̃ = x + σ·ε, ε ~ N(0, I) per element, clipped to [0, 1]
      (Vincent et al. 2010 §4.1 "GS"; the clipping follows Chollet's Keras MNIST
      denoising example).
    * ``masking``: exactly round(ν·H·W) pixels per image, chosen uniformly without
      replacement, set to 0 (2008 §2.3, "destruction" of a fixed number νd of
      components; 2010 §4.1 "MN").
    * ``salt-and-pepper``: exactly round(ν·H·W) pixels per image set to 0 or 1 by a
      fair coin flip each (2010 §4.1 "SP").

    Masking and salt-and-pepper hit whole pixels (all C channels together), so an
    RGB pixel turns black or white rather than into a coloured speck; on grayscale
    images this is the papers' per-component corruption.

    Args:
        images: ``(N, C, H, W)`` float in [0, 1].
        sigma: σ of the Gaussian noise, in [0, 1] intensity units.
        fraction: ν, the fraction of pixels masking / salt-and-pepper corrupt.

    Returns:
        x̃, ``(N, C, H, W)`` float in [0, 1], drawn from torch's global RNG.

    Raises:
        OptionError: for an unknown ``noise``.
    """
    check_choice("noise", noise, NOISES)
    if noise == "gaussian":
        return (images + sigma * torch.randn_like(images)).clamp(0.0, 1.0)  # (N, C, H, W)
    n, _, h, w = images.shape
    count = round(fraction * h * w)
    chosen = torch.rand(n, h * w, device=images.device).argsort(dim=1)[:, :count]  # (N, count)
    hit = torch.zeros(n, h * w, dtype=torch.bool, device=images.device)
    hit = hit.scatter_(1, chosen, True).view(n, 1, h, w)  # (N, 1, H, W)
    if noise == "masking":
        value = torch.zeros_like(images[:, :1])  # (N, 1, H, W)
    else:
        value = (torch.rand(n, 1, h, w, device=images.device) < 0.5).to(images.dtype)
    return torch.where(hit, value, images)  # (N, C, H, W)


@TASKS.register("denoising")
class Denoising(PretextTask):
    """Denoising autoencoder: reconstruct the clean image from a corrupted copy.

    Vincent et al., "Extracting and composing robust features with denoising
    autoencoders", ICML 2008, §2.3: corrupt x to x̃ (corruption types of JMLR 2010,
    §4.1, see :func:`corrupt`), encode x̃, decode, and score the reconstruction
    against the clean x. The encoder is the backbone on the dataset-normalised x̃;
    the decoder is a :class:`~tasks.blocks.ConvDecoder` on its feature map, in
    place of the papers' single tied-weight layer, so that a convolutional backbone
    gets a convolutional decoder.

    Loss: the squared error (``mse``, 2008 §2.2 for real-valued x) or the
    reconstruction cross-entropy L_H on [0, 1] pixels (``bce``, 2008 §2.2; the
    decoder output is read as logits), averaged over pixels. Logs ``psnr_db`` (the
    reconstruction) and ``input_psnr_db`` (x̃), both against x. Features: the pooled
    backbone output on clean, dataset-normalised images, ``(N, D)``.
    """

    paper = "Vincent et al., ICML 2008, §2.3; JMLR 2010, §4.1"

    @dataclass
    class Options:
        """Hyperparameters of the denoising autoencoder.

        Attributes:
            noise: ``gaussian`` (default), ``masking`` or ``salt-and-pepper``.
                Gaussian because the benchmark's images are real-valued photographs:
                JMLR 2010 §4.1 recommends additive Gaussian noise for real-valued
                inputs, masking/salt-and-pepper for (near-)binary ones like MNIST.
            sigma: σ of the Gaussian noise on [0, 1] pixels; 0.5 as in Chollet's
                Keras MNIST denoising example.
            fraction: ν for masking / salt-and-pepper; 0.25, a middle destruction
                level of those the papers compare (2008 §5).
            loss: ``mse`` (default) or ``bce`` (cross-entropy on logits).
            decoder_width: channels of the decoder's last upsampling stage.
        """

        noise: str = option("gaussian", choices=NOISES)
        sigma: float = option(0.5, low=0.0, high=2.0)
        fraction: float = option(0.25, low=0.0, high=1.0)
        loss: str = option("mse", choices=LOSSES)
        decoder_width: int = option(32, low=1, high=1024)

    def __init__(self, make_backbone: BackboneFactory, spec: DataSpec, options: Options) -> None:
        super().__init__(make_backbone, spec, options)
        self.backbone = self.build_backbone(make_backbone)
        channels, size, _ = self.backbone.feature_map_shape()
        self.decoder = ConvDecoder(channels, size, spec.channels, spec.image_size,
                                   options.decoder_width)

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """Adam, lr 1e-3, no weight decay: the Keras denoising example's optimiser;
        Vincent et al. (2008 §2.3) regularise by the corruption alone."""
        return [OptimConfig(name="adam", lr=1e-3, weight_decay=0.0)]

    @classmethod
    def tune_choices(cls, channels: int) -> tuple[dict, dict]:
        """Noise: on 1-channel (MNIST-like) data σ = 0.5 against masking; on natural
        images, where σ = 0.5 leaves a ~9 dB input, σ = 0.25 against masking with
        ν = 0.25 (Vincent et al. 2008)."""
        gaussian = {} if channels == 1 else {"sigma": 0.25}
        return gaussian, {"noise": "masking", "fraction": 0.25}

    def corrupt(self, images: torch.Tensor) -> torch.Tensor:
        """x̃ ``(N, C, H, W)`` from x with this task's noise settings (:func:`corrupt`)."""
        o = self.options
        return corrupt(images, o.noise, o.sigma, o.fraction)

    def decode(self, corrupted: torch.Tensor) -> torch.Tensor:
        """Decoder output ``(N, C, H, W)`` for x̃ in [0, 1]: the reconstruction for
        ``mse``, its logits for ``bce``."""
        fmap = self.backbone.feature_map(self.normalize(corrupted))  # (N, C', h, w)
        return self.decoder(fmap)  # (N, C, H, W)

    def reconstruct(self, corrupted: torch.Tensor) -> torch.Tensor:
        """The reconstruction of x̃ as an image ``(N, C, H, W)`` in [0, 1]."""
        return decoded_image(self.decode(corrupted), self.options.loss)

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """Reconstruction loss of clean ``images`` ``(N, C, H, W)`` in [0, 1] from
        their corrupted copies, averaged over pixels; logs the PSNRs (dB, batch mean)."""
        corrupted = self.corrupt(images)  # (N, C, H, W) x̃
        out = self.decode(corrupted).float()  # (N, C, H, W) reconstruction or logits
        if self.options.loss == "bce":
            loss = F.binary_cross_entropy_with_logits(out, images)  # scalar
        else:
            loss = F.mse_loss(out, images)  # scalar
        with torch.no_grad():
            reconstruction = decoded_image(out, self.options.loss)  # (N, C, H, W)
            logs = {"psnr_db": psnr_db(reconstruction, images).mean(),  # scalar
                    "input_psnr_db": psnr_db(corrupted, images).mean()}  # scalar
        return loss, logs

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """Rows: clean, corrupted and reconstructed test images."""
        corrupted = self.corrupt(images)
        return image_rows([("clean", images), ("corrupted", corrupted),
                           ("reconstructed", self.reconstruct(corrupted))],
                          title=f"denoising autoencoder ({self.options.noise} noise)")
