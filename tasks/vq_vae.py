"""``vq-vae``: the vector-quantised variational autoencoder (van den Oord et al., NeurIPS 2017)."""

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
from tasks.blocks import ConvDecoder, psnr_db

CODEBOOK_UPDATES = ("loss", "ema")
PALETTE_SEED = 0  # colours of the code-index maps in pictures (a private generator)


def nearest_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest embedding in Euclidean distance (§3.1, eq. 1) of each row
    of ``z`` ``(M, D)`` among the rows of ``codebook`` ``(K, D)``, computed in float32
    (also under autocast); ``(M,)`` int64, ties to the lowest index."""
    distances = torch.cdist(z.float(), codebook.float())  # (M, K)
    return distances.argmin(dim=1)  # (M,)


def code_counts(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """How often each of K = ``num_codes`` codes occurs in ``codes`` (any shape, int64 in
    0…K − 1); ``(K,)`` float32, exact up to 2²⁴ per code. A scatter-add, not ``bincount``,
    whose CUDA kernel reads the largest code on the host."""
    flat = codes.flatten()  # (M,)
    counts = torch.zeros(num_codes, device=codes.device)  # (K,)
    return counts.index_add_(0, flat, torch.ones_like(flat, dtype=counts.dtype))  # (K,)


def code_perplexity(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """exp of the entropy (nats) of the average code usage p̄_k = count_k / M of
    ``codes`` (any shape, int64 in 0…K − 1): K when all K codes are used equally
    often, 1 when a single code is; a scalar float32 (0·log 0 = 0)."""
    counts = code_counts(codes, num_codes)  # (K,)
    p = counts / counts.sum()  # (K,)
    return torch.exp(-torch.special.xlogy(p, p).sum())  # scalar


def laplace_smoothed(counts: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Laplace-smoothed cluster sizes (N_k + ε) / (Σ N + K·ε) · Σ N of ``counts`` ``(K,)``:
    the same total, but no code's size is 0, so the EMA codebook m_k / N_k never
    divides by 0 (the smoothing of the authors' Sonnet implementation); ``(K,)``."""
    total = counts.sum()  # scalar
    return (counts + epsilon) / (total + len(counts) * epsilon) * total  # (K,)


def positions(z: torch.Tensor) -> torch.Tensor:
    """A map ``(N, D, h, w)`` as one row per position, ``(N·h·w, D)`` in (n, y, x) order."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


@TASKS.register("vq-vae")
class VQVAE(PretextTask):
    """Vector-quantised autoencoder: reconstruct the image from a grid of discrete codes.

    van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation Learning",
    NeurIPS 2017, §3.1–3.2.

    * Encoder: z_e = a 1×1 convolution of the backbone's feature map on the
      standardised image to the embedding width D, ``(N, D, h, w)``.
    * Quantisation (§3.1, eqs. 1–2): each of the h·w positions takes its nearest of K
      embeddings e_k, z_q = e_k; the straight-through estimator (§3.2) passes the
      decoder's gradient to the encoder unchanged, z_e + sg[z_q − z_e].
    * Decoder: a :class:`~tasks.blocks.ConvDecoder` from ``(D, h, w)`` to the image.
    * Loss (eq. 3): reconstruction + ‖sg[z_e] − e‖² (codebook) + β‖z_e − sg[e]‖²
      (commitment), each a mean over its elements. The reconstruction is the MSE on
      [0, 1] pixels: the negative log-likelihood of a Gaussian decoder of fixed
      variance up to a scale and a constant (the paper leaves log p(x|z_q) open for
      images). Logged terms are unweighted.
    * ``codebook_update = "ema"`` (Appendix A.1): the codebook is a buffer, e_k = m_k /
      N_k of moving averages of the sums m_k and counts N_k of the z_e assigned to
      code k (decay γ, :func:`laplace_smoothed` N_k); it gets no gradient and the
      codebook term is dropped.

    Codebook upkeep runs in training-mode :meth:`loss` calls only (as BatchNorm's
    running statistics; never in held-out metrics or pictures), after quantising: the
    EMA counts N_k (kept in both modes), then :meth:`restart_dead_codes`. Dead codes
    are not in the paper: an embedding that no z_e picks gets no codebook gradient (nor
    EMA update) and stays behind while the encoder moves, so without restarts short
    runs keep few codes in use (the logged ``perplexity`` shows how many). A code whose
    N_k falls below ``restart_below``
    moves to a random z_e of the batch (the random restarts of Dhariwal et al.,
    Jukebox, 2020), to be used from the next batch on (no code is fitted to the batch
    it quantises). After the first training step nearly all codes restart (N_k =
    (1 − γ)·n_k): the codebook starts from data, at the encoder's scale for any backbone.

    Logs ``recon_loss``, ``codebook_loss`` (``loss`` mode), ``commitment_loss``,
    ``psnr_db`` and ``perplexity`` (:func:`code_perplexity` over the batch's N·h·w
    codes). Features: the default pooled backbone output, i.e. the encoder before the
    1×1 projection and the quantisation, ``(N, C')``.
    """

    paper = "van den Oord, Vinyals & Kavukcuoglu, NeurIPS 2017, §3.1–3.2, eq. 3, App. A.1"
    tune_knob = ({}, {"codebook_update": "ema"})  # codebook loss (eq. 3) or EMA (App. A.1)

    @dataclass
    class Options:
        """Hyperparameters of the VQ-VAE; the paper's values in brackets."""

        # K [512 for 128 px ImageNet → 32×32 codes, §4.2]: kept for 28–96 px images, whose
        # 4×4 to 12×12 code grids already hold far fewer bits than the paper's
        num_codes: int = option(512, low=2, high=65536)
        # D: 64 as the authors' Sonnet VQ-VAE example (the paper gives none for images)
        code_dim: int = option(64, low=1, high=4096)
        beta: float = option(0.25, low=0.0, high=100.0)  # commitment weight [0.25, §3.2]
        codebook_update: str = option("loss", choices=CODEBOOK_UPDATES)  # eq. 3 or App. A.1
        decay: float = option(0.99, low=0.0, high=1.0, strict=True)  # EMA γ [0.99, App. A.1]
        epsilon: float = option(1e-5, low=0.0, high=1.0, strict=True)  # Laplace ε (Sonnet)
        # N_k below which a code restarts (and gets N_k = 1): 1, under one pick per batch,
        # where a batch of 128 with 4×4 codes (28–32 px) picks each code 4 times on average
        restart_below: float = option(1.0, low=0.0, high=1e6, strict=True)
        decoder_width: int = option(32, low=1, high=1024)  # the decoder's last stage

    def __init__(self, make_backbone: BackboneFactory, spec: DataSpec, options: Options) -> None:
        super().__init__(make_backbone, spec, options)
        self.backbone = self.build_backbone(make_backbone)
        channels, height, width = self.backbone.feature_map_shape()
        self.latent_shape = (height, width)
        self.project = nn.Conv2d(channels, options.code_dim, 1)
        codebook = torch.randn(options.num_codes, options.code_dim)  # until restarted
        if options.codebook_update == "loss":
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
            self.register_buffer("code_sums", torch.zeros_like(codebook))  # m
        self.register_buffer("cluster_size", torch.zeros(options.num_codes))  # N
        self.decoder = ConvDecoder(options.code_dim, height, spec.channels, spec.image_size,
                                   options.decoder_width)

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """Adam, no weight decay, as the paper (§4.1: lr 2e-4 for 250k steps); lr 1e-3
        as this benchmark's other autoencoders, for its runs of a few thousand steps."""
        return [OptimConfig(name="adam", lr=1e-3, weight_decay=0.0)]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """z_e ``(N, D, h, w)`` float32 of images ``(N, C, H, W)`` in [0, 1]."""
        fmap = self.backbone.feature_map(self.normalize(images))  # (N, C', h, w)
        return self.project(fmap).float()  # (N, D, h, w)

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_q ``(N, D, h, w)`` float32 (differentiable in the codebook, not in z_e) and
        the code indices ``(N, h, w)`` int64 of z_e ``(N, D, h, w)``."""
        n, d, h, w = z_e.shape
        codes = nearest_codes(positions(z_e.detach()), self.codebook)  # (N·h·w,)
        z_q = self.codebook[codes].view(n, h, w, d).permute(0, 3, 1, 2)  # (N, D, h, w)
        return z_q, codes.view(n, h, w)  # (N, D, h, w), (N, h, w)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's raw output ``(N, C, H, W)`` float32 for latents ``(N, D, h, w)``."""
        return self.decoder(z).float()  # (N, C, H, W)

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """Eq. 3 on a batch of images ``(N, C, H, W)`` in [0, 1], with the codebook
        upkeep in training mode (see the class)."""
        z_e = self.encode(images)  # (N, D, h, w)
        z_q, codes = self.quantize(z_e)  # (N, D, h, w), (N, h, w)
        straight_through = z_e + (z_q - z_e).detach()  # (N, D, h, w), value z_q
        reconstruction = self.decode(straight_through)  # (N, C, H, W)
        recon_loss = F.mse_loss(reconstruction, images.float())  # scalar
        commitment_loss = F.mse_loss(z_e, z_q.detach())  # scalar
        loss = recon_loss + self.options.beta * commitment_loss  # scalar
        logs: Logs = {"recon_loss": recon_loss.detach()}
        if self.options.codebook_update == "loss":
            codebook_loss = F.mse_loss(z_q, z_e.detach())  # scalar, reaches the codebook only
            loss = loss + codebook_loss
            logs["codebook_loss"] = codebook_loss.detach()
        if self.training:  # after quantising: restarted codes serve the next batch
            self.track_codes(positions(z_e.detach()), codes.flatten())
            self.restart_dead_codes(positions(z_e.detach()))
        logs["commitment_loss"] = commitment_loss.detach()
        with torch.no_grad():
            logs["psnr_db"] = psnr_db(reconstruction.clamp(0, 1), images).mean()
            logs["perplexity"] = code_perplexity(codes, self.options.num_codes)
        return loss, logs

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor) -> None:
        """Move each code whose count N_k is below ``restart_below`` to one of the
        encoder outputs ``z`` ``(M, D)``, drawn without replacement (with replacement
        when there are fewer than dead codes); its N_k becomes 1 and m_k = e_k. The r-th
        dead code takes ``z[order[r mod M]]`` for a random permutation ``order``, written
        through a mask, so no count of dead codes reaches the host."""
        dead = self.cluster_size < self.options.restart_below  # (K,) bool
        order = torch.randperm(len(z), device=z.device)  # (M,)
        rank = torch.cumsum(dead, dim=0) - 1  # (K,) r for the r-th dead code
        picks = order[rank.clamp_min(0) % len(z)]  # (K,) live codes' picks are unused
        fresh = z[picks].to(self.codebook.dtype)  # (K, D)
        self.codebook.copy_(torch.where(dead[:, None], fresh, self.codebook))  # (K, D)
        self.cluster_size.masked_fill_(dead, 1.0)  # (K,)
        if self.options.codebook_update == "ema":
            self.code_sums.copy_(torch.where(dead[:, None], self.codebook, self.code_sums))

    @torch.no_grad()
    def track_codes(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        """N_k ← γ·N_k + (1 − γ)·n_k from the batch's counts n_k of the codes ``(M,)``
        of encoder outputs ``z`` ``(M, D)``; for ``ema`` also m_k ← γ·m_k + (1 − γ)·Σ
        of the z assigned to k and e_k = m_k / smoothed N_k (Appendix A.1)."""
        counts = code_counts(codes, self.options.num_codes)  # (K,)
        self.cluster_size.lerp_(counts, 1 - self.options.decay)  # (K,)
        if self.options.codebook_update == "ema":
            sums = torch.zeros_like(self.code_sums).index_add_(0, codes, z.float())  # (K, D)
            self.code_sums.lerp_(sums, 1 - self.options.decay)  # (K, D)
            smoothed = laplace_smoothed(self.cluster_size, self.options.epsilon)  # (K,)
            self.codebook.copy_(self.code_sums / smoothed[:, None])  # (K, D)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reconstruction ``(N, C, H, W)`` in [0, 1] of images ``(N, C, H, W)`` in
        [0, 1] and their code indices ``(N, h, w)`` int64."""
        z_q, codes = self.quantize(self.encode(images))
        return self.decode(z_q).clamp(0, 1), codes

    def code_colours(self, codes: torch.Tensor) -> torch.Tensor:
        """Code indices ``(N, h, w)`` as RGB images ``(N, 3, h, w)`` in [0, 1], one fixed
        random colour per code (index order carries no meaning, so neighbours in index
        need not look alike)."""
        generator = torch.Generator().manual_seed(PALETTE_SEED)
        palette = torch.rand(self.options.num_codes, 3, generator=generator)  # (K, 3)
        return palette.to(codes.device)[codes].permute(0, 3, 1, 2)  # (N, 3, h, w)

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """Rows: test images, their reconstructions from the codes, and the h×w code maps
        (one colour per code index); each map is labelled with its number of distinct codes."""
        reconstruction, codes = self.reconstruct(images)
        perplexity = float(code_perplexity(codes, self.options.num_codes))
        fig = image_rows([("input", images), ("reconstruction", reconstruction),
                          ("codes", self.code_colours(codes))],
                         title=f"VQ-VAE ({self.options.codebook_update} codebook), K = "
                               f"{self.options.num_codes}: perplexity {perplexity:.1f} here")
        for ax, grid in zip(fig.axes[2 * len(images):], codes):
            ax.set_xlabel(f"{len(grid.unique())} codes", fontsize=7)
        return fig

    def summary(self) -> dict:
        """Adds the code grid (h, w) and the bits one image's codes hold, h·w·log2 K."""
        h, w = self.latent_shape
        return {**super().summary(), "latent_shape": [h, w],
                "bits_per_image": h * w * math.log2(self.options.num_codes)}
