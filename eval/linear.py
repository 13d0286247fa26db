"""Linear probe: a linear classifier trained on frozen features."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

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


class LinearClassifiers(nn.Module):
    """G linear classifiers behind one shared BatchNorm without affine parameters.

    ``x / scale`` → ``BatchNorm1d(D, affine=False)`` → G independent
    ``Linear(D, C)``. ``scale`` is one scalar, the standard deviation of all
    entries of the features the probe is fitted on; this division is our
    addition to MAE's recipe: without it BatchNorm's ε (1e-5) swamps the
    variance of backbones whose features are tiny (a random-init CNN's are
    ~1e-4, variance ~1e-8) and the probe barely learns. One scalar changes no
    linear separability. BatchNorm then standardises each dimension; its
    running statistics are a plain average over all training batches
    (``momentum=None``), not dominated by the initial 0/1. Weights and biases
    start at zero: the loss is convex in them, so no random init is needed.

    Args:
        dim: D.
        num_classes: C.
        count: G.
        scale: the feature scale (> 0).
    """

    def __init__(self, dim: int, num_classes: int, count: int, scale: float) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale))
        self.norm = nn.BatchNorm1d(dim, affine=False, momentum=None)
        self.weight = nn.Parameter(torch.zeros(count, num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(count, num_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, G, C)`` of features ``(N, D)``; all G classifiers in one matmul."""
        z = self.norm(features / self.scale)
        logits = F.linear(z, self.weight.flatten(0, 1), self.bias.flatten())
        return logits.view(len(z), *self.bias.shape)


@EVALUATORS.register("linear")
class LinearProbe(Evaluator):
    """A linear classifier on frozen features, behind a BatchNorm without affine parameters.

    Model: ``BatchNorm1d(D, affine=False)`` then ``Linear(D, C)``, following MAE
    (He et al., CVPR 2022, Appendix A.2: an extra BatchNorm layer without affine
    transformation before the linear classifier, which calibrates feature scales
    that differ widely between methods and layers); see
    :class:`LinearClassifiers`. Trained with softmax cross-entropy on the cached
    train features.

    Optimization: SGD with momentum 0.9 and L2 weight decay on the weights (not
    the biases), mini-batches of ``batch_size`` drawn from in-memory tensors
    (every batch holds at least ``batch_size`` samples, or all of them, so
    BatchNorm never sees a batch of one), ``epochs`` epochs but at least
    ``min_steps`` steps (a small train split such as digits' 1,347 images
    would get only ~60 steps from 30 epochs), the learning rate decayed by a
    half-cosine to 0 per step. MAE uses LARS for 90 epochs at batch 16384 on
    ImageNet; on ≤ 50k small images plain SGD for 30 epochs converges as well
    (within 0.2 points of an L-BFGS logistic regression on random-init convnet
    features of digits and CIFAR-10) and takes seconds on a CPU: 18 s for
    50,000 × 256 features in one thread, grid and final fit included.

    Model selection: the train split is divided by :func:`validation_split`
    (``val_fraction`` = 10 %, stratified, seeded); one classifier per
    (learning rate, weight decay) in ``lrs`` × ``weight_decays`` (default
    {0.01, 0.1, 1} × {0, 1e-4, 1e-3}, which brackets the best settings found
    on those features) is trained on the rest and scored on the validation
    part; the setting with the best validation top-1 wins (ties go to the
    earlier one in grid order, learning rates outer). The classifier is then
    retrained with that setting on the whole train split and scored on the
    test split, which takes no part in any choice. The grid is trained in one
    pass: the BatchNorm has no parameters, so every classifier sees exactly the
    same normalised mini-batches as it would in a run of its own.

    Args:
        epochs: passes over the data per fit.
        min_steps: the fewest optimizer steps per fit.
        batch_size: mini-batch size.
        lrs: learning rates of the grid (one value or a sequence).
        weight_decays: L2 penalties of the grid (one value or a sequence).
        momentum: SGD momentum.
        val_fraction: share of the train split held out for model selection.

    Metrics: ``linear_top1``, ``linear_top5`` (% on test; top-5 is top-min(5, C)),
    ``linear_val_top1`` (% of the chosen setting on the validation part),
    ``linear_lr`` and ``linear_wd`` (the chosen setting).

    Raises:
        OptionError: an option out of range (epochs, min_steps or batch_size < 1,
            an empty grid, a learning rate ≤ 0, a weight decay < 0, momentum
            outside [0, 1), val_fraction outside (0, 1), or a value that is not
            a number).
    """


    def __init__(self, epochs: int = 30, min_steps: int = 1000, batch_size: int = 512,
                 lrs: float | tuple[float, ...] | list[float] = (0.01, 0.1, 1.0),
                 weight_decays: float | tuple[float, ...] | list[float] = (0.0, 1e-4, 1e-3),
                 momentum: float = 0.9, val_fraction: float = 0.1) -> None:
        epochs, min_steps, batch_size = as_tuple("linear epochs/min_steps/batch_size",
                                                 (epochs, min_steps, batch_size), int)
        momentum, val_fraction = as_tuple("linear momentum/val_fraction",
                                          (momentum, val_fraction), float)
        lrs, weight_decays = as_tuple("linear lrs", lrs, float), as_tuple(
            "linear weight_decays", weight_decays, float)
        if min(epochs, min_steps, batch_size) < 1:
            raise OptionError(f"linear epochs={epochs}, min_steps={min_steps} and "
                              f"batch_size={batch_size} must be ≥ 1")
        if not lrs or min(lrs) <= 0:
            raise OptionError(f"linear lrs={list(lrs)} is not valid; give one or more values > 0")
        if not weight_decays or min(weight_decays) < 0:
            raise OptionError(f"linear weight_decays={list(weight_decays)} is not valid; give "
                              "one or more values ≥ 0")
        if not 0.0 <= momentum < 1.0:
            raise OptionError(f"linear momentum={momentum} is not valid; it must lie in [0, 1)")
        if not 0.0 < val_fraction < 1.0:
            raise OptionError(f"linear val_fraction={val_fraction} is not valid; it must lie "
                              "in (0, 1)")
        self.epochs, self.min_steps, self.batch_size = epochs, min_steps, batch_size
        self.grid = list(itertools.product(lrs, weight_decays))
        self.momentum, self.val_fraction = momentum, val_fraction

    def evaluate(self, train_features: torch.Tensor, train_labels: torch.Tensor,
                 test_features: torch.Tensor, test_labels: torch.Tensor, num_classes: int,
                 seed: int = 0) -> dict[str, float]:
        """See :meth:`Evaluator.evaluate`; ``seed`` fixes the validation split and
        the mini-batch order, so equal inputs give equal metrics.

        Raises:
            DataError: too few train images for a validation split.
        """
        check_inputs(train_features, train_labels, test_features, test_labels, num_classes)
        train_features, test_features = train_features.float(), test_features.float()
        fit_idx, val_idx = validation_split(train_labels, self.val_fraction, seed)
        grid = self.fit(train_features[fit_idx], train_labels[fit_idx], num_classes, self.grid,
                        seed)
        val_logits = grid(train_features[val_idx])
        val_top1 = [topk_correct(val_logits[:, i], train_labels[val_idx], 1).float().mean().item()
                    for i in range(len(self.grid))]
        best = max(range(len(self.grid)), key=lambda i: (val_top1[i], -i))
        lr, wd = self.grid[best]

        final = self.fit(train_features, train_labels, num_classes, [(lr, wd)], seed)
        logits = final(test_features)[:, 0]
        return {
            "linear_top1": 100.0 * topk_correct(logits, test_labels, 1).float().mean().item(),
            "linear_top5": 100.0 * topk_correct(logits, test_labels, 5).float().mean().item(),
            "linear_val_top1": 100.0 * val_top1[best],
            "linear_lr": lr,
            "linear_wd": wd,
        }

    @torch.enable_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int,
            settings: list[tuple[float, float]], seed: int) -> LinearClassifiers:
        """Train one linear classifier per (learning rate, weight decay) on shared mini-batches.

        Args:
            features: ``float32`` ``(N, D)``, N ≥ 2.
            labels: ``int64`` ``(N,)``.
            num_classes: C.
            settings: (learning rate, weight decay) of each classifier.
            seed: seeds the mini-batch order.

        Returns:
            The trained classifiers, frozen and in eval mode.

        Raises:
            DataError: fewer than two samples (BatchNorm needs a batch statistic).
        """
        n, dim = features.shape
        if n < 2:
            raise DataError(f"the linear probe needs at least 2 labelled train images, got {n}")
        model = LinearClassifiers(dim, num_classes, len(settings), features.std().item() or 1.0)
        lr, wd = torch.tensor(settings).T
        # SGD at lr 1 on Σ_g lr_g · (CE_g + wd_g/2 · |W_g|²) makes exactly the updates of
        # a separate SGD with lr_g and weight decay wd_g (on W_g) for each classifier g.
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=self.momentum)
        num_batches = max(1, n // self.batch_size)
        epochs = max(self.epochs, math.ceil(self.min_steps / num_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * num_batches)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for batch in order.tensor_split(num_batches):
                logits, y = model(features[batch]), labels[batch].repeat_interleave(len(settings))
                ce = F.cross_entropy(logits.flatten(0, 1), y, reduction="none")
                ce = ce.view(len(batch), len(settings)).mean(dim=0)
                loss = (lr * (ce + wd / 2 * model.weight.square().sum(dim=(1, 2)))).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
        return model.eval().requires_grad_(False)
