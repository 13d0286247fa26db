"""Linear probe: a linear classifier trained on frozen features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from eval.base import Evaluator, as_tuple, check_inputs, topk_correct
from ssl_bench.core.errors import DataError, OptionError
from ssl_bench.core.registry import EVALUATORS


def validation_split(labels: torch.Tensor, fraction: float,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded, stratified split of a labelled train split into train and validation parts.

    Each class gives ``round(fraction · n_c)`` of its ``n_c`` members, drawn at
    random, to the validation part, so class proportions are kept. (scikit-learn's
    stratified splitters refuse classes with a single member; here such a class
    simply stays in the train part.)

    Args:
        labels: ``int64`` ``(N,)`` class indices.
        fraction: share of each class held out, in (0, 1).
        seed: seeds the draw; the same seed gives the same split.

    Returns:
        ``(train_idx, val_idx)``: disjoint, sorted ``int64`` index tensors that
        together cover ``range(N)``.

    Raises:
        OptionError: ``fraction`` outside (0, 1).
        DataError: either part would be empty (too few labelled images).
    """
    if not 0.0 < fraction < 1.0:
        raise OptionError(f"linear val_fraction={fraction} is not valid; it must lie in (0, 1)")
    generator = torch.Generator().manual_seed(seed)
    held_out = []
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held_out.append(members[:round(fraction * len(members))])
    in_val = torch.zeros(len(labels), dtype=torch.bool)
    in_val[torch.cat(held_out)] = True
    train_idx, val_idx = (~in_val).nonzero().flatten(), in_val.nonzero().flatten()
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise DataError(f"{len(labels)} labelled train images are too few for a "
                        f"{fraction:.0%} stratified validation split")
    return train_idx, val_idx


class Standardizer:
    """Per-dimension standardisation with the statistics of the features a probe is fitted on.

    ``z = (x − μ) / sqrt(σ² + ε · s²)`` with μ, σ² each dimension's mean and
    (biased) variance, s² the mean of σ² over dimensions and ε = 1e-5. This is
    MAE's BatchNorm without affine parameters in front of the classifier (He et
    al., CVPR 2022, Appendix A.2), with full-batch statistics; ε is relative to
    the features' own scale, so a backbone whose features are ~1e-4 is
    standardised like one whose features are ~1 (a fixed ε would swamp them).
    A dimension that is constant on the fitted features maps to 0.

    Args:
        features: ``float32`` ``(N, D)``, N ≥ 1.
    """

    EPS = 1e-5

    def __init__(self, features: torch.Tensor) -> None:
        self.mean = features.mean(dim=0)
        variance = features.var(dim=0, unbiased=False)
        self.denominator = (variance + self.EPS * variance.mean()).sqrt()
        self.denominator[self.denominator == 0] = 1.0  # all entries equal: nothing to scale

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """``(n, D)`` → standardised ``float32`` ``(n, D)``."""
        return (features - self.mean) / self.denominator


@torch.no_grad()
def fit_logistic_regression(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                            l2: float, init: tuple[torch.Tensor, torch.Tensor] | None = None,
                            tolerance: float = 1e-4, max_iter: int = 500
                            ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Multinomial logistic regression with an L2 penalty on the weights, full batch.

    Minimises ``mean_i CE(W x_i + b, y_i) + l2 / 2 · |W|²`` (the bias is not
    penalised) with L-BFGS (``torch.optim.LBFGS``, strong-Wolfe line search,
    history 10) until the largest gradient entry is below ``tolerance`` or
    ``max_iter`` iterations are done. The objective is strictly convex for
    ``l2 > 0``, so the result does not depend on the start, only the cost does.

    Args:
        features: ``float32`` ``(N, D)``, standardised.
        labels: ``int64`` ``(N,)``.
        num_classes: C.
        l2: the penalty λ ≥ 0.
        init: weights ``(C, D)`` and bias ``(C,)`` to start from (a warm start);
            ``None``: zeros.
        tolerance: on the largest absolute gradient entry.
        max_iter: L-BFGS iterations at most.

    Returns:
        ``(weight (C, D), bias (C,), objective evaluations)``.
    """
    n, dim = features.shape
    weight = torch.zeros(num_classes, dim) if init is None else init[0].clone()
    bias = torch.zeros(num_classes) if init is None else init[1].clone()
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter,
                                  tolerance_grad=tolerance, tolerance_change=1e-9,
                                  history_size=10, line_search_fn="strong_wolfe")
    rows = torch.arange(n)

    def objective() -> torch.Tensor:
        # The gradient in closed form, (softmax − one-hot)ᵀ X / N + λW: one matmul each
        # way, 1.5× faster than autograd's (features are ≤ 50k × 4,096 floats). The
        # log-softmax is written out: torch's CPU kernel over rows of C ≈ 10 took a
        # third of each evaluation on pooled features.
        logits = torch.addmm(bias, features, weight.T)                  # (N, C)
        shifted = logits - logits.amax(dim=1, keepdim=True)
        log_p = shifted - shifted.exp().sum(dim=1, keepdim=True).log_()  # (N, C)
        loss = -log_p[rows, labels].mean() + l2 / 2 * weight.square().sum()
        residual = log_p.exp_()                                       # (N, C), softmax
        residual[rows, labels] -= 1.0
        residual /= n
        weight.grad = torch.addmm(weight, residual.T, features, beta=l2)  # (C, D)
        bias.grad = residual.sum(dim=0)                                 # (C,)
        return loss

    optimizer.step(objective)
    evaluations = optimizer.state[weight]["func_evals"]
    return weight.detach(), bias.detach(), evaluations


@EVALUATORS.register("linear")
class LinearProbe(Evaluator):
    """A linear classifier on frozen features: standardisation, then L2-penalised
    multinomial logistic regression fitted to convergence.

    Model: :class:`Standardizer` (MAE's BatchNorm without affine parameters, He
    et al., CVPR 2022, Appendix A.2, which calibrates feature scales that differ
    widely between methods and layers) then ``Linear(D, C)``, trained with
    softmax cross-entropy plus ``λ/2 · |W|²`` by full-batch L-BFGS
    (:func:`fit_logistic_regression`), as scikit-learn's ``LogisticRegression``
    does. A convex problem solved to convergence has one answer, so the probe
    has no learning rate, schedule or seed to tune, and on ≤ 50k cached features
    it takes seconds on a CPU.

    Model selection: the train split is divided by :func:`validation_split`
    (``val_fraction`` = 10 %, stratified, seeded); one classifier per penalty in
    ``l2s`` (default {1, 0.1, 0.01, 0.001, 0.0001}: the best penalties on
    random-init and trained convnet features of digits and CIFAR-10, pooled and
    per layer, lie inside it) is fitted on the rest, strongest penalty first,
    each starting from the previous solution, and scored on the validation part;
    the penalty with the best validation top-1 wins (ties: the stronger
    penalty). The classifier is then refitted with that penalty on the whole
    train split, starting from the chosen solution, and scored on the test
    split, which takes no part in any choice.

    Args:
        l2s: the penalties λ of the grid (one value or a sequence; each ≥ 0).
        val_fraction: share of the train split held out for model selection.
        tolerance: convergence threshold on the largest gradient entry.
        max_iter: L-BFGS iterations per fit at most.

    Metrics: ``linear_top1``, ``linear_top5`` (% on test; top-5 is top-min(5, C)),
    ``linear_val_top1`` (% of the chosen penalty on the validation part) and
    ``linear_l2`` (the chosen penalty).

    Raises:
        OptionError: an option out of range (an empty grid, a penalty < 0, a
            tolerance ≤ 0, max_iter < 1, val_fraction outside (0, 1), or a value
            that is not a number).
    """

    def __init__(self, l2s: float | tuple[float, ...] | list[float] = (1.0, 0.1, 0.01, 1e-3, 1e-4),
                 val_fraction: float = 0.1, tolerance: float = 1e-4, max_iter: int = 500) -> None:
        l2s = as_tuple("linear l2s", l2s, float)
        val_fraction, tolerance = as_tuple("linear val_fraction/tolerance",
                                           (val_fraction, tolerance), float)
        (max_iter,) = as_tuple("linear max_iter", (max_iter,), int)
        if not l2s or min(l2s) < 0 or not all(map(math.isfinite, l2s)):
            raise OptionError(f"linear l2s={list(l2s)} is not valid; give one or more finite "
                              "values ≥ 0")
        if not 0.0 < val_fraction < 1.0:
            raise OptionError(f"linear val_fraction={val_fraction} is not valid; it must lie "
                              "in (0, 1)")
        if not tolerance > 0 or max_iter < 1:
            raise OptionError(f"linear tolerance={tolerance} must be > 0 and max_iter={max_iter} "
                              "≥ 1")
        self.l2s = tuple(sorted(set(l2s), reverse=True))
        self.val_fraction, self.tolerance, self.max_iter = val_fraction, tolerance, max_iter

    def evaluate(self, train_features: torch.Tensor, train_labels: torch.Tensor,
                 test_features: torch.Tensor, test_labels: torch.Tensor, num_classes: int,
                 seed: int = 0) -> dict[str, float]:
        """See :meth:`Evaluator.evaluate`; ``seed`` fixes the validation split, the
        only random choice, so equal inputs give equal metrics.

        Raises:
            DataError: too few train images for a validation split.
        """
        check_inputs(train_features, train_labels, test_features, test_labels, num_classes)
        train_features, test_features = train_features.float(), test_features.float()
        fit_idx, val_idx = validation_split(train_labels, self.val_fraction, seed)
        path = self.fit(train_features[fit_idx], train_labels[fit_idx], num_classes, self.l2s)
        val_top1 = [topk_correct(classifier(train_features[val_idx]), train_labels[val_idx],
                                 1).float().mean().item() for classifier in path]
        best = max(range(len(path)), key=lambda i: (val_top1[i], -i))
        (final,) = self.fit(train_features, train_labels, num_classes, [self.l2s[best]],
                            init=path[best])
        logits = final(test_features)
        return {
            "linear_top1": 100.0 * topk_correct(logits, test_labels, 1).float().mean().item(),
            "linear_top5": 100.0 * topk_correct(logits, test_labels, 5).float().mean().item(),
            "linear_val_top1": 100.0 * val_top1[best],
            "linear_l2": self.l2s[best],
        }

    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int,
            l2s: list[float] | tuple[float, ...], init: LinearClassifier | None = None
            ) -> list[LinearClassifier]:
        """Fit one classifier per penalty, in the given order, each warm-started from
        the previous one (the first from ``init``, or zeros).

        Args:
            features: ``float32`` ``(N, D)``, raw (standardised here), N ≥ 2.
            labels: ``int64`` ``(N,)``.
            num_classes: C.
            l2s: the penalties λ.
            init: a classifier to start from (e.g. one fitted on a subset).

        Returns:
            One :class:`LinearClassifier` per penalty.

        Raises:
            DataError: fewer than two samples.
        """
        n = len(features)
        if n < 2:
            raise DataError(f"the linear probe needs at least 2 labelled train images, got {n}")
        standardize = Standardizer(features)
        z = standardize(features)                                   # (N, D)
        start = None if init is None else (init.weight, init.bias)
        classifiers = []
        for l2 in l2s:
            weight, bias, _ = fit_logistic_regression(z, labels, num_classes, l2, start,
                                                      self.tolerance, self.max_iter)
            start = (weight, bias)                                  # (C, D), (C,)
            classifiers.append(LinearClassifier(standardize, weight, bias))
        return classifiers


class LinearClassifier:
    """A fitted probe: :class:`Standardizer` then ``Linear(D, C)``.

    Args:
        standardize: the fitted standardisation.
        weight: ``float32`` ``(C, D)``, acting on standardised features.
        bias: ``float32`` ``(C,)``.
    """

    def __init__(self, standardize: Standardizer, weight: torch.Tensor,
                 bias: torch.Tensor) -> None:
        self.standardize, self.weight, self.bias = standardize, weight, bias

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, C)`` of raw features ``(n, D)``."""
        return F.linear(self.standardize(features.float()), self.weight, self.bias)
