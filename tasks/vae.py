"""``vae``: the variational autoencoder (Kingma & Welling, ICLR 2014)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.core.figures import image_rows
from ssl_bench.core.registry import TASKS
from ssl_bench.core.spec import DataSpec
from tasks.base import BackboneFactory, Logs, OptimConfig, PretextTask
from tasks.options import option
from tasks.blocks import LatentDecoder

LIKELIHOODS = ("auto", "bernoulli", "gaussian")
LEVELS = 256  # 8-bit images: the Gaussian likelihood is scored on 256 intensity levels
# The variance of uniform dequantisation noise on one level, 1/(12·256²): a floor for
# the decoder's variance, below which the dequantised data cannot support a density.
LOGVAR_FLOOR = -math.log(12.0 * LEVELS**2)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½·Σ_j (μ_j² + σ_j² − 1 − log σ_j²) in closed form
    (Kingma & Welling 2014, Appendix B), of ``(N, J)`` μ and log σ²; ``(N,)`` float32 nats."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def bernoulli_nll(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """−log p(x|z) of a Bernoulli decoder (Appendix C.1): the binary cross-entropy of
    ``(N, C, H, W)`` intensities in [0, 1] against sigmoid(logits), summed per image;
    ``(N,)`` float32 nats. An NLL for binary images; for grey levels a cross-entropy
    bounded below by their own entropy, not a normalised density (Loaiza-Ganem &
    Cunningham 2019)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), images.float(), reduction="none")
    return bce.flatten(1).sum(dim=1)


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """−log p(x|z) of a Gaussian decoder with per-pixel mean and variance (Appendix
    C.2), on the 256-level scale.

    ½·Σ_i [log 2π + log σ_i² + (x_i − μ_i)²/σ_i²] is the density of the dequantised
    intensities on [0, 1] (all constants included); adding D·log 256 (D = C·H·W)
    puts it on the scale of 8-bit values, where, in expectation over the uniform
    dequantisation noise, it bounds −log P(x) of the discrete image from above
    (Theis, van den Oord & Bethge, ICLR 2016).

    Args:
        mean, logvar: ``(N, C, H, W)`` μ and log σ² on the [0, 1] scale.
        images: ``(N, C, H, W)`` dequantised intensities in [0, 1].

    Returns:
        ``(N,)`` float32, nats per image.
    """
    mean, logvar, images = mean.float(), logvar.float(), images.float()
    nll = 0.5 * (math.log(2 * math.pi) + logvar + (images - mean).pow(2) * torch.exp(-logvar))
    return nll.flatten(1).sum(dim=1) + images[0].numel() * math.log(LEVELS)


def dequantize(images: torch.Tensor) -> torch.Tensor:
    """Uniform dequantisation x̃ = (k + u) / 256 of the 8-bit levels k = round(255·x) of
    ``(N, C, H, W)`` images in [0, 1], u ~ U[0, 1) per element from torch's global RNG
    (Theis et al., ICLR 2016); ``(N, C, H, W)`` float32 in [0, 1)."""
    levels = torch.round(images.float() * (LEVELS - 1))
    noise = torch.rand(images.shape, device=images.device)
    return (levels + noise) / LEVELS


def _rename_legacy_decoder_keys(state_dict: dict, prefix: str, *_) -> None:
    """Checkpoints written before the decoder became :class:`LatentDecoder` hold
    ``project.*`` and ``decoder.*``; they load as ``decoder.project.*`` and
    ``decoder.decoder.*``, so those runs still resume and re-evaluate."""
    if not any(key.startswith(prefix + "project.") for key in state_dict):
        return
    for key in [k for k in state_dict if k.startswith((prefix + "project.", prefix + "decoder."))]:
        state_dict[prefix + "decoder." + key[len(prefix):]] = state_dict.pop(key)


@TASKS.register("vae")
class VAE(PretextTask):
    """Variational autoencoder trained by the SGVB estimator of the ELBO.

    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.

    * Encoder q(z|x) (§3, Appendix C.2): the pooled backbone output on the
      standardized image, then two linear heads for μ and log σ², ``(N, J)``.
    * Reparameterisation (§2.4, §3): z = μ + σ ⊙ ε, ε ~ N(0, I), one sample per
      image (L = 1, which §2.3 finds enough with minibatches of 100).
    * Decoder p(x|z): :class:`~tasks.blocks.LatentDecoder`, a linear layer to a
      ``(c, s, s)`` map (s ≥ 4), then up-convolutions to the image, in place of the
      paper's one-hidden-layer MLP, so that a convolutional backbone meets a
      convolutional decoder.
    * Loss: the negative ELBO per image in nats, −log p(x|z) + β·KL(q(z|x) ‖ N(0, I)),
      the KL in closed form (§3 eq. 10, Appendix B). β = 1 is the ELBO; β ≠ 1 the
      β-VAE (Higgins et al., ICLR 2017).
    * Likelihood: ``bernoulli`` (Appendix C.1) or ``gaussian`` with per-pixel mean
      (through a sigmoid, as the paper's Frey Face decoder, §5) and learned variance
      (Appendix C.2), trained and scored on uniformly dequantised 8-bit intensities.
      ``auto`` picks Bernoulli for 1-channel data (as the paper's MNIST runs) and
      Gaussian for colour (continuous, as its Frey Face runs). log σ² has a soft
      floor (softplus) at the dequantisation noise variance 1/(12·256²), to keep the
      density from collapsing onto a single level early in training.

    Logs ``recon_nats``, ``kl_nats``, ``neg_elbo_nats`` (β = 1, per image) and
    ``bits_per_dim`` = neg_elbo_nats / (C·H·W·ln 2). For ``gaussian`` these are on the
    256-level scale (an upper bound on the discrete image's −log P, comparable with
    the literature's bits/dim); for ``bernoulli`` the cross-entropy against the grey
    levels (an NLL only for binary images).

    Optimisation: Adam, lr 1e-3 (Kingma & Ba 2015), in place of the paper's Adagrad
    (§5), and no weight decay (the paper's decay is a weak N(0, I) prior).

    Features: the pooled backbone output, as for every task; μ of q(z|x)
    ``(N, latent_dim)`` is scored beside it (:meth:`task_features`, ``code_*`` metrics).
    """

    paper = "Kingma & Welling, ICLR 2014, §2.3–2.4, §3, Appendices B, C"
    tune_knob = ({}, {"beta": 0.5})  # KL weight: the ELBO or β = 0.5

    @dataclass
    class Options:
        """Hyperparameters of the VAE.

        Attributes:
            latent_dim: J, the size of z. 64: Kingma & Welling (§5, Fig. 2) find that
                more latent variables than an image needs do not overfit, since
                unused ones fall back to the prior; 64 covers what 28–32 px images
                use while keeping μ compact.
            likelihood: ``auto``, ``bernoulli`` or ``gaussian`` (see the class).
            beta: weight of the KL term (1: the ELBO; Higgins et al. 2017 for ≠ 1).
            decoder_width: channels of the decoder's last up-convolution.
        """

        latent_dim: int = option(64, low=1, high=4096)
        likelihood: str = option("auto", choices=LIKELIHOODS)
        beta: float = option(1.0, low=0.0, high=1000.0)
        decoder_width: int = option(32, low=1, high=1024)

    def __init__(self, make_backbone: BackboneFactory, spec: DataSpec, options: Options) -> None:
        super().__init__(make_backbone, spec, options)
        self.likelihood = options.likelihood
        if self.likelihood == "auto":
            self.likelihood = "bernoulli" if spec.channels == 1 else "gaussian"
        self.backbone = self.build_backbone(make_backbone)
        self.mu = nn.Linear(self.backbone.num_features, options.latent_dim)
        self.logvar = nn.Linear(self.backbone.num_features, options.latent_dim)
        out_channels = spec.channels * (2 if self.likelihood == "gaussian" else 1)
        self.decoder = LatentDecoder(options.latent_dim, out_channels, spec.image_size,
                                     options.decoder_width)
        self._register_load_state_dict_pre_hook(_rename_legacy_decoder_keys)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x): μ and log σ², each ``(N, latent_dim)``, of images ``(N, C, H, W)`` in [0, 1]."""
        h = self.backbone(self.normalize(images))  # (N, D)
        return self.mu(h), self.logvar(h)  # (N, J), (N, J)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """p(x|z) of latents ``(N, latent_dim)``: Bernoulli logits and ``None``, or the
        Gaussian mean in (0, 1) and log σ² (soft floor ``LOGVAR_FLOOR``), float32;
        each ``(N, C, H, W)``."""
        out = self.decoder(z)  # (N, C or 2C, H, W)
        if self.likelihood == "bernoulli":
            return out, None  # (N, C, H, W) logits
        mean, raw = out.float().chunk(2, dim=1)  # (N, C, H, W) each
        return mean.sigmoid(), LOGVAR_FLOOR + F.softplus(raw - LOGVAR_FLOOR)

    def decoded_image(self, z: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z) as an image ``(N, C, H, W)`` in [0, 1]."""
        out, _ = self.decode(z)
        return out.float().sigmoid() if self.likelihood == "bernoulli" else out

    def neg_elbo(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-sample SGVB estimate of the negative ELBO's two terms (§2.3; §3 eq. 10)
        for images ``(N, C, H, W)`` in [0, 1], ε and the dequantisation noise drawn
        from torch's global RNG.

        Returns:
            ``(reconstruction, kl)``, each ``(N,)`` float32 in nats per image:
            −log p(x|z) for one z ~ q(z|x), and KL(q(z|x) ‖ N(0, I)).
        """
        mu, logvar = self.encode(images)  # (N, J), (N, J)
        eps = torch.randn(mu.shape, device=mu.device)  # (N, J)
        z = mu + torch.exp(0.5 * logvar) * eps  # (N, J)
        out, out_logvar = self.decode(z)  # (N, C, H, W), None or (N, C, H, W)
        if self.likelihood == "bernoulli":
            reconstruction = bernoulli_nll(out, images)  # (N,)
        else:
            reconstruction = gaussian_nll(out, out_logvar, dequantize(images))  # (N,)
        return reconstruction, gaussian_kl(mu, logvar)  # (N,), (N,)

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """Adam, lr 1e-3, no weight decay (see the class docstring)."""
        return [OptimConfig("adam", lr=1e-3, weight_decay=0.0)]

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """Batch mean of −log p(x|z) + β·KL, nats per image; logs the ELBO terms,
        the negative ELBO at β = 1 and its bits per dimension."""
        reconstruction, kl = self.neg_elbo(images)  # (N,), (N,)
        loss = (reconstruction + self.options.beta * kl).mean()  # scalar
        with torch.no_grad():
            neg_elbo = (reconstruction + kl).mean()  # scalar, β = 1
            logs = {"recon_nats": reconstruction.mean(), "kl_nats": kl.mean(),
                    "neg_elbo_nats": neg_elbo,
                    "bits_per_dim": neg_elbo / (images[0].numel() * math.log(2))}
        return loss, logs

    @torch.no_grad()
    def task_features(self, images: torch.Tensor) -> torch.Tensor:
        """μ of q(z|x), ``(N, latent_dim)``, for images ``(N, C, H, W)`` in [0, 1]."""
        return self.encode(images)[0]

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """Rows: test images, their reconstructions (decoder mean at z = μ), samples from
        the prior (decoder means; z from torch's global RNG), and decoder means along the
        straight line from the first test image's μ to the last one's."""
        mu, _ = self.encode(images)
        prior = torch.randn(mu.shape, device=mu.device)
        t = torch.linspace(0.0, 1.0, len(images), device=mu.device)[:, None]
        line = (1 - t) * mu[:1] + t * mu[-1:]
        return image_rows([("test image", images), ("reconstruction", self.decoded_image(mu)),
                           ("prior sample", self.decoded_image(prior)),
                           ("interpolation", self.decoded_image(line))],
                          title=f"VAE ({self.likelihood} likelihood, β = {self.options.beta:g})")

    def summary(self) -> dict:
        """Adds the likelihood that ``auto`` resolved to."""
        return {**super().summary(), "likelihood": self.likelihood}
