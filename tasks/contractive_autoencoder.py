"""``contractive-autoencoder``: an autoencoder whose code resists small changes of its
input (Rifai, Vincent, Muller, Glorot & Bengio, ICML 2011)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ssl_bench.core.registry import TASKS
from tasks.autoencoder import Autoencoder
from tasks.base import Logs
from tasks.options import check_choice, option

JACOBIANS = ("auto", "exact", "projection")
# ``auto`` computes the Jacobian exactly up to this many code units (one backward pass
# each); wider codes get the random projection (see the class docstring).
EXACT_MAX_CODE_DIM = 8


def jacobian_frobenius_sq(encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                          method: str, projections: int = 1) -> torch.Tensor:
    """‖∂h/∂x‖²_F = Σ_j Σ_i (∂h_j/∂x_i)² for each image, of the code ``encode(x)``
    ``(N, K)`` with respect to that image's pixels ``(N, C, H, W)``.

    ``encode`` must not couple images (each code a function of its own image only,
    e.g. BatchNorm in eval mode): then a vector–Jacobian product with one direction
    per image, v ``(N, K)``, gives every image's own vᵀJ_n in one backward pass.

    * ``exact``: K products, v = e_j for every image; Σ_j ‖e_jᵀJ‖² = ‖J‖²_F.
    * ``projection``: ``projections`` products with v ~ N(0, I_K) drawn from torch's
      global RNG, averaged: E_v[‖vᵀJ‖²] = E[vᵀJJᵀv] = tr(JJᵀ) = ‖J‖²_F, so the estimate
      (and its gradient) is unbiased, with variance 2‖JJᵀ‖²_F / k per image.

    The products keep their graph (``create_graph``) when gradients are enabled, so
    the result can be trained through (double backpropagation); without, it is a
    detached value.

    Returns:
        ``(N,)`` float32.

    Raises:
        OptionError: for an unknown ``method``.
    """
    check_choice("jacobian", method, JACOBIANS[1:])
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        x = images.detach().requires_grad_(True)  # (N, C, H, W)
        code = encode(x)  # (N, K)
        n, k = code.shape
        if method == "exact":
            eye = torch.eye(k, device=code.device, dtype=code.dtype)  # (K, K)
            directions = eye[:, None, :].expand(k, n, k)  # (K, N, K): e_j for every image
        else:
            directions = torch.randn(projections, n, k, device=code.device, dtype=code.dtype)
        total = torch.zeros(n, device=code.device)  # (N,)
        for index, v in enumerate(directions):
            (vjp,) = torch.autograd.grad(code, x, grad_outputs=v, create_graph=create_graph,
                                         retain_graph=create_graph or index < len(directions) - 1)
            total = total + vjp.float().pow(2).flatten(1).sum(dim=1)  # (N,) ‖vᵀJ_n‖²
    return total if method == "exact" else total / projections


@TASKS.register("contractive-autoencoder")
class ContractiveAutoencoder(Autoencoder):
    """Contractive autoencoder: the :class:`~tasks.autoencoder.Autoencoder` plus the
    squared Frobenius norm of the encoder's Jacobian.

    Rifai, Vincent, Muller, Glorot & Bengio, "Contractive Auto-Encoders: Explicit
    Invariance During Feature Extraction", ICML 2011, §2 eq. (2)–(4): J_CAE =
    Σ_x [L(x, g(f(x))) + λ‖J_f(x)‖²_F], ‖J_f(x)‖²_F = Σ_ij (∂h_j(x)/∂x_i)², which makes
    the code locally insensitive to most directions of input space. Here per image:
    the code h ``(N, code_dim)`` of the autoencoder, x the image in [0, 1] (before the
    dataset standardisation), the penalty summed over code units and pixels and
    averaged over images (logged as ``contractive_loss``, λ included;
    ``jacobian_frobenius_sq`` without λ).

    The paper's one sigmoid layer has ‖J‖²_F in closed form; a deep encoder does not,
    so it is computed by vector–Jacobian products (:func:`jacobian_frobenius_sq`):

    * ``exact``: one product per code unit, K extra backward passes.
    * ``projection``: an unbiased estimate from ``projections`` (default 1) Gaussian
      directions in code space, k extra backward passes; its relative error on a
      batch mean of N images is at most √(2 / (k·N)) (9 % for k = 1, N = 256).
    * ``auto``: ``exact`` for code_dim ≤ 8 (:data:`EXACT_MAX_CODE_DIM`), else
      ``projection``: beyond 8 backward passes exactness costs more than the batch
      noise it removes (the default code of 32 would cost 32).

    Cost per step: one more encoder forward, the k (or K) backward passes with
    ``create_graph``, and their double backward in ``loss.backward()``; the
    throughput benchmark (``python -m pytest tests/benchmarks -k autoencoder
    --benchmark-enable``) measures it beside the plain autoencoder's step.

    Shrinking the whole code shrinks ‖J‖²_F too, and the decoder's BatchNorm (unless
    ``decoder_norm=false``) undoes such a shrinking (see
    :class:`~tasks.autoencoder.Autoencoder`), so the logs add ``relative_jacobian_sq``:
    mean_n ‖J_n‖²_F / Σ_j Var_n(h_nj), the Jacobian against the code's spread over the
    batch (unchanged by rescaling the code; it needs batches of ≥ 2 images, the variance
    floored at 1e-12).

    BatchNorm: in train mode each image's code depends on the whole batch, so the
    Jacobian of a batched vector–Jacobian product is not one image's own. The penalty
    is therefore defined on the encoder in eval mode (BatchNorm with its running
    statistics: the function whose code is evaluated), where each
    image's code depends on its own pixels only; the reconstruction keeps train mode.
    """

    paper = "Rifai, Vincent, Muller, Glorot & Bengio, ICML 2011, §2 eq. (2)–(4)"
    tune_knob = ({}, {"weight": 1.0})  # λ = 10 or 1 (the paper picks λ by validation)

    @dataclass
    class Options(Autoencoder.Options):
        """Hyperparameters of the contractive autoencoder (and those of the autoencoder).

        Attributes:
            weight: λ, the weight of ‖J_f(x)‖²_F per image. The paper picks λ by
                validation; ``ssl-bench tune`` compares the default 10 with 1
                (:attr:`tune_knob`).
            jacobian: ``auto``, ``exact`` or ``projection`` (see the class).
            projections: k, random directions per image for ``projection``.
        """

        weight: float = option(10.0, low=0.0, high=1e6)
        jacobian: str = option("auto", choices=JACOBIANS)
        projections: int = option(1, low=1, high=1024)

    @property
    def jacobian(self) -> str:
        """``exact`` or ``projection``: the option, or what ``auto`` resolves to."""
        if self.options.jacobian != "auto":
            return self.options.jacobian
        return "exact" if self.options.code_dim <= EXACT_MAX_CODE_DIM else "projection"

    def jacobian_frobenius_sq(self, images: torch.Tensor) -> torch.Tensor:
        """‖∂h/∂x‖²_F ``(N,)`` float32 of images ``(N, C, H, W)`` in [0, 1], with the
        backbone in eval mode (its mode is restored)."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            return jacobian_frobenius_sq(self.encode, images, self.jacobian,
                                         self.options.projections)  # (N,)
        finally:
            self.backbone.train(was_training)

    def penalty(self, images: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """λ·mean_n ‖∂h_n/∂x_n‖²_F, a float32 scalar, and its logs, for images
        ``(N, C, H, W)`` in [0, 1] and their codes ``(N, code_dim)``."""
        frobenius_sq = self.jacobian_frobenius_sq(images).mean()  # scalar
        term = self.options.weight * frobenius_sq  # scalar
        with torch.no_grad():
            spread = code.float().var(dim=0, correction=0).sum().clamp_min(1e-12)  # scalar
            logs = {"contractive_loss": term.detach(),
                    "jacobian_frobenius_sq": frobenius_sq.detach(),
                    "relative_jacobian_sq": frobenius_sq.detach() / spread}
        return term, logs

    def title(self) -> str:
        """Names λ and the Jacobian's computation."""
        return (f"contractive autoencoder (λ = {self.options.weight:g}, {self.jacobian} "
                f"Jacobian, code {self.options.code_dim})")

    def summary(self) -> dict:
        """Adds the Jacobian computation that ``auto`` resolved to."""
        return {**super().summary(), "jacobian": self.jacobian}
