"""``sparse-autoencoder``: an autoencoder whose code is kept sparse by a penalty
(Ng, "Sparse autoencoder", CS294A lecture notes, §3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_bench.core.registry import TASKS
from tasks.autoencoder import Autoencoder
from tasks.base import Logs
from tasks.options import option

PENALTIES = ("l1", "kl")
# A unit is "near zero" in an image when |h_j| ≤ 0.1·max_k |h_k| of that image: 20 dB
# below its most active unit. Relative, so it reads the same for a linear code of any
# scale and for a sigmoid code (a code squeezed to a constant 0.05 counts as dense).
NEAR_ZERO_RATIO = 0.1
RHO_HAT_EPS = 1e-6  # keeps log ρ̂ and log(1 − ρ̂) finite for a unit that saturates


def l1_sparsity(code: torch.Tensor) -> torch.Tensor:
    """mean_n Σ_j |h_nj| of a code ``(N, K)``; a float32 scalar (grows with |h|)."""
    return code.float().abs().sum(dim=1).mean()


def kl_sparsity(code: torch.Tensor, rho: float) -> torch.Tensor:
    """Σ_j KL(ρ ‖ ρ̂_j) between Bernoulli means (Ng, CS294A notes §3), where ρ̂_j is
    the mean activation of unit j over the batch of a sigmoid code ``(N, K)`` in
    (0, 1) and ρ the target; a float32 scalar in nats. Zero when every ρ̂_j = ρ,
    rising as ρ̂_j moves away from ρ either way.

    KL(ρ ‖ ρ̂) = ρ log(ρ / ρ̂) + (1 − ρ) log((1 − ρ) / (1 − ρ̂)); ρ̂ is clamped to
    [1e-6, 1 − 1e-6].
    """
    rho_hat = code.float().mean(dim=0).clamp(RHO_HAT_EPS, 1.0 - RHO_HAT_EPS)  # (K,)
    kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
    return kl.sum()


def near_zero_fraction(code: torch.Tensor, ratio: float = NEAR_ZERO_RATIO) -> torch.Tensor:
    """The fraction of entries of a code ``(N, K)`` with |h_nj| ≤ ``ratio``·max_k |h_nk|
    (see :data:`NEAR_ZERO_RATIO`); a float32 scalar in [0, 1]."""
    magnitude = code.float().abs()  # (N, K)
    peak = magnitude.amax(dim=1, keepdim=True)  # (N, 1)
    return (magnitude <= ratio * peak).float().mean()


@TASKS.register("sparse-autoencoder")
class SparseAutoencoder(Autoencoder):
    """Sparse autoencoder: the :class:`~tasks.autoencoder.Autoencoder` plus a penalty
    that keeps most code units inactive for any one image.

    Ng, "Sparse autoencoder", CS294A lecture notes (Stanford, 2011), §3
    "Autoencoders and sparsity"; Goodfellow et al., *Deep Learning* (2016), §14.2.1.
    A sparse code can be wider than a bottleneck would allow: sparsity, not width,
    limits what it carries (§3). Penalties, added to the per-image reconstruction loss:

    * ``kl`` (§3): the code is a sigmoid, h = σ(W·f(x) + b) ∈ (0, 1); with ρ̂_j the
      mean activation of unit j over the batch, β·Σ_j KL(ρ ‖ ρ̂_j) pulls every ρ̂_j to
      the target ρ (:func:`kl_sparsity`). ρ̂ is a batch statistic: the notes average
      over the training set; a minibatch estimates it.
    * ``l1``: the code stays linear and λ·mean_n Σ_j |h_nj| (:func:`l1_sparsity`;
      Goodfellow et al. §14.2.1, Ω(h) = λ Σ_i |h_i|), as the activity regulariser of
      Chollet's Keras sparse autoencoder.

    Logs beside ``recon_loss`` and ``psnr_db``: ``sparsity_loss`` (the weighted
    penalty), ``mean_activation`` (mean |h_nj| over images and units; for ``kl`` the
    mean of the ρ̂_j) and ``near_zero_fraction`` (:func:`near_zero_fraction`). The
    decoder's BatchNorm lets a code meet either penalty without switching units off,
    by shrinking (L1) or by hovering near ρ (KL) (see the autoencoder); the relative
    ``near_zero_fraction`` tells such a code from a sparse one. With
    ``decoder_norm=false`` the KL penalty does switch units off (a test shows it on a
    fixed batch), at the autoencoder's slower start.

    Extra features (``code_*`` metrics): the code h ``(N, code_dim)`` (the sigmoid's
    output for ``kl``).
    """

    paper = "Ng, Sparse autoencoder, CS294A lecture notes (2011), §3"
    tune_knob = ({}, {"penalty": "l1"})  # KL on a sigmoid code (§3) or L1 on the linear code

    @dataclass
    class Options(Autoencoder.Options):
        """Hyperparameters of the sparse autoencoder (and those of the autoencoder).

        Attributes:
            code_dim: K. 256 (the ``convnet``'s D): wider than the plain autoencoder's
                32, since sparsity limits the code (§3); at ρ = 0.05 about 13 units
                are active per image.
            penalty: ``kl`` (default, the notes' penalty) or ``l1``.
            beta: β, the weight of the KL penalty; 3 as in the notes' companion
                exercise (UFLDL "Sparse Autoencoder").
            rho: ρ, the target mean activation; 0.05 as in the notes (§3).
            l1_weight: λ of the L1 penalty, per image. 0.1 ≈ Chollet's 1e-4 on a
                per-pixel mean loss, rescaled to our per-image sum of 784 pixels.
        """

        code_dim: int = option(256, low=1, high=4096)
        penalty: str = option("kl", choices=PENALTIES)
        beta: float = option(3.0, low=0.0, high=1000.0)
        rho: float = option(0.05, low=0.0, high=1.0, strict=True)
        l1_weight: float = option(0.1, low=0.0, high=1000.0)

    def activate(self, pre_code: torch.Tensor) -> torch.Tensor:
        """σ of the ``(N, code_dim)`` pre-activations for ``kl``; linear for ``l1``."""
        return pre_code.sigmoid() if self.options.penalty == "kl" else pre_code

    def penalty(self, images: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """β·Σ_j KL(ρ ‖ ρ̂_j) or λ·mean_n Σ_j |h_nj| of the code ``(N, code_dim)``,
        a float32 scalar, and the sparsity logs."""
        o = self.options
        if o.penalty == "kl":
            term = o.beta * kl_sparsity(code, o.rho)  # scalar
        else:
            term = o.l1_weight * l1_sparsity(code)  # scalar
        with torch.no_grad():
            logs = {"sparsity_loss": term.detach(),
                    "mean_activation": code.float().abs().mean(),
                    "near_zero_fraction": near_zero_fraction(code)}
        return term, logs

    def title(self) -> str:
        """Names the penalty and its weight."""
        o = self.options
        weight = f"β = {o.beta:g}, ρ = {o.rho:g}" if o.penalty == "kl" else f"λ = {o.l1_weight:g}"
        return f"sparse autoencoder ({o.penalty}, {weight}, code {o.code_dim})"

    def summary(self) -> dict:
        """Adds the penalty."""
        return {**super().summary(), "penalty": self.options.penalty}
