"""``autoencoder``: the undercomplete convolutional autoencoder (Goodfellow et al. 2016, §14.1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.core.figures import image_rows
from ssl_bench.core.registry import TASKS
from ssl_bench.core.spec import DataSpec
from tasks.base import BackboneFactory, Logs, OptimConfig, PretextTask
from tasks.options import option
from tasks.blocks import LatentDecoder, decoded_image, psnr_db

LOSSES = ("auto", "bce", "mse")


def reconstruction_loss(out: torch.Tensor, images: torch.Tensor, kind: str) -> torch.Tensor:
    """L(x, g(h)) per image, summed over the C·H·W pixels of ``(N, C, H, W)`` float32.

    * ``bce``: the reconstruction cross-entropy −Σ_i [x_i log x̂_i + (1 − x_i) log(1 − x̂_i)]
      with x̂ = sigmoid(out) (Vincent et al. 2008 §2.2, "L_H"; Goodfellow et al. 2016
      §14.1), in nats; for grey levels it is bounded below by their own entropy, not 0.
    * ``mse``: the squared error Σ_i (x_i − out_i)², with ``out`` the reconstruction.

    Returns:
        ``(N,)`` float32.
    """
    out, images = out.float(), images.float()
    if kind == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(out, images, reduction="none")
    else:
        per_pixel = (out - images).pow(2)
    return per_pixel.flatten(1).sum(dim=1)


@TASKS.register("autoencoder")
class Autoencoder(PretextTask):
    """Undercomplete autoencoder: reconstruct the image through a narrow code.

    Goodfellow, Bengio & Courville, *Deep Learning* (MIT Press 2016), §14.1
    "Undercomplete Autoencoders": an encoder h = f(x) whose code is smaller than the
    input, a decoder r = g(h), trained to minimise L(x, g(f(x))); the bottleneck
    forces h to keep the data's most salient factors. Here, per image:

    * encoder f: the pooled backbone output on the dataset-standardised image
      ``(N, D)``, then ``bottleneck``, a linear layer to the code h ``(N, code_dim)``
      (linear, as a "latent vector"; the subclasses put their nonlinearity in
      :meth:`activate`);
    * decoder g: :class:`~tasks.blocks.LatentDecoder` (the VAE's DCGAN-style layout:
      a linear projection to a small map, then up-convolutions) to
      ``(N, C, H, W)``: logits for ``bce``, the reconstruction for ``mse``;
    * loss: :func:`reconstruction_loss` summed over pixels, averaged over images
      (logged as ``recon_loss``), plus :meth:`penalty` (zero here; the sparse and
      contractive autoencoders subclass this task and add theirs).

    Logs ``recon_loss`` and ``psnr_db`` (the reconstruction in [0, 1] against the
    input). Features: the pooled backbone output, as for every task; the code h
    ``(N, code_dim)``, the autoencoder's own representation, is scored beside it
    (:meth:`task_features`, ``code_*`` metrics).

    The decoder's BatchNorm (``decoder_norm``, on by default) makes the reconstruction
    all but blind to a common rescaling of the code (see
    :class:`~tasks.blocks.LatentDecoder`), so the subclasses' penalties on the code can
    be paid in part by shrinking it rather than by sparsity or contraction (Goodfellow
    et al. §14.7 warn of this for the contractive penalty; Rifai et al. tie the weights
    against it). ``--set decoder_norm=false`` gives the decoder of Chollet's and Ng's
    autoencoders, which sees the code's scale, but from PyTorch's default init it passes
    little of the code through for the first ~60–100 steps: on MNIST at 39 steps the
    plain autoencoder's linear top-1 was 64.1 without BatchNorm against 89.9 with it
    (the issue 12 note has the commands). The subclasses log scale-free quantities
    (``near_zero_fraction``, ``relative_jacobian_sq``) to tell a shrunken code from a
    sparse or contracted one.
    """

    paper = "Goodfellow, Bengio & Courville, Deep Learning (2016), §14.1"
    tune_knob = ({}, {"code_dim": 128})  # the bottleneck: 32 or a four times wider code

    @dataclass
    class Options:
        """Hyperparameters of the autoencoder.

        Attributes:
            code_dim: K, the size of the code h. 32: the code of Chollet's Keras
                autoencoder for 784-pixel MNIST (compression 24.5; 96 for 32 px RGB),
                far narrower than the backbone's D (256 for ``convnet``), so the
                bottleneck, not the backbone, sets what is kept (§14.1).
            loss: ``auto``, ``bce`` or ``mse``. ``auto``: ``bce`` for 1-channel data
                (near-binary strokes, read as Bernoulli means as in Kingma & Welling's
                and Chollet's MNIST autoencoders), ``mse`` for colour (real-valued
                intensities: the squared error, Vincent et al. 2008 §2.2).
            decoder_width: channels of the decoder's last up-convolution.
            decoder_norm: BatchNorm in the decoder (see the class).
        """

        code_dim: int = option(32, low=1, high=4096)
        loss: str = option("auto", choices=LOSSES)
        decoder_width: int = option(32, low=1, high=1024)
        decoder_norm: bool = option(True, choices=(True, False))

    def __init__(self, make_backbone: BackboneFactory, spec: DataSpec, options: Options) -> None:
        super().__init__(make_backbone, spec, options)
        self.backbone = self.build_backbone(make_backbone)
        self.bottleneck = nn.Linear(self.backbone.num_features, options.code_dim)
        self.decoder = LatentDecoder(options.code_dim, spec.channels, spec.image_size,
                                     options.decoder_width, norm=options.decoder_norm)
        self.loss_kind = options.loss
        if options.loss == "auto":
            self.loss_kind = "bce" if spec.channels == 1 else "mse"

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """Adam, lr 1e-3, no weight decay: the optimiser of Chollet's Keras autoencoders
        and of this benchmark's denoising autoencoder and VAE."""
        return [OptimConfig(name="adam", lr=1e-3, weight_decay=0.0)]

    def activate(self, pre_code: torch.Tensor) -> torch.Tensor:
        """The code's nonlinearity on ``(N, code_dim)`` pre-activations: none here."""
        return pre_code

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The code h ``(N, code_dim)`` of images ``(N, C, H, W)`` in [0, 1]."""
        pooled = self.backbone(self.normalize(images))  # (N, D)
        return self.activate(self.bottleneck(pooled))  # (N, K)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """g(f(x)) as images ``(N, C, H, W)`` in [0, 1]."""
        return decoded_image(self.decoder(self.encode(images)), self.loss_kind)

    def penalty(self, images: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """The regulariser Ω added to the reconstruction loss, a scalar, and its logs,
        for images ``(N, C, H, W)`` in [0, 1] and their codes ``(N, code_dim)``.
        None here (a plain undercomplete autoencoder)."""
        return code.new_zeros(()), {}

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """Batch mean of L(x, g(f(x))) (summed over pixels) plus :meth:`penalty`; logs
        ``recon_loss``, ``psnr_db`` and the penalty's logs."""
        code = self.encode(images)  # (N, K)
        out = self.decoder(code).float()  # (N, C, H, W) logits or reconstruction
        recon = reconstruction_loss(out, images, self.loss_kind).mean()  # scalar
        penalty, logs = self.penalty(images, code)  # scalar, dict
        with torch.no_grad():
            logs = {"recon_loss": recon.detach(),
                    "psnr_db": psnr_db(decoded_image(out, self.loss_kind), images).mean(),
                    **logs}
        return recon + penalty, logs

    @torch.no_grad()
    def task_features(self, images: torch.Tensor) -> torch.Tensor:
        """The code h ``(N, code_dim)`` of images ``(N, C, H, W)`` in [0, 1]."""
        return self.encode(images)

    def title(self) -> str:
        """The rendered figure's title."""
        return f"autoencoder (code {self.options.code_dim}, {self.loss_kind} loss)"

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """Rows: test images and their reconstructions."""
        return image_rows([("input", images), ("reconstruction", self.reconstruct(images))],
                          title=self.title())

    def summary(self) -> dict:
        """Adds the reconstruction loss that ``auto`` resolved to."""
        return {**super().summary(), "loss": self.loss_kind}
