"""The evaluator seam: frozen features of a labelled train and test split in,
named metrics out.

An evaluator never sees the pretext task or the images, only cached features
(``float32`` ``(N, D)`` on the CPU) and ``int64`` class labels, so every task is
scored by the same protocol. To add one, subclass :class:`Evaluator` in a new
module of this package and register it with ``@EVALUATORS.register("name")``.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar

import torch

from ssl_bench.core.errors import OptionError, SslBenchError


class Evaluator(abc.ABC):
    """Base class of evaluators; subclasses take their options as keyword
    arguments (each with a default) and raise
    :class:`ssl_bench.errors.OptionError` for bad values.

    Class attributes:
        name: the ``--evaluators`` name (set by ``@EVALUATORS.register``).
    """

    name: ClassVar[str] = ""

    @abc.abstractmethod
    def evaluate(self, train_features: torch.Tensor, train_labels: torch.Tensor,
                 test_features: torch.Tensor, test_labels: torch.Tensor, num_classes: int,
                 seed: int = 0) -> dict[str, float]:
        """Score frozen features by how well they predict the labels.

        Args:
            train_features: ``float32`` ``(N_train, D)`` CPU tensor.
            train_labels: ``int64`` ``(N_train,)`` class indices in ``[0, num_classes)``.
            test_features: ``float32`` ``(N_test, D)`` CPU tensor.
            test_labels: ``int64`` ``(N_test,)``.
            num_classes: C.
            seed: seeds every random choice, so equal inputs give equal metrics.

        Returns:
            Metric name → value; accuracies are in % (0–100).

        Raises:
            SslBenchError: non-finite features (the model diverged).
            ValueError: mismatched shapes or labels out of range.
        """


def check_inputs(train_features: torch.Tensor, train_labels: torch.Tensor,
                 test_features: torch.Tensor, test_labels: torch.Tensor, num_classes: int) -> None:
    """Validate the arguments of :meth:`Evaluator.evaluate` (shapes as documented there).

    Raises:
        SslBenchError: if any feature is NaN or ±inf, which means the pretext
            training diverged; the message says which split.
        ValueError: features that are not 2-D or differ in width, label vectors
            that are not ``int64`` or whose length does not match, an empty
            split, or labels outside ``[0, num_classes)``.
    """
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(f"features must be (N, D); got train {tuple(train_features.shape)}, "
                         f"test {tuple(test_features.shape)}")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"train and test features differ in width: {train_features.shape[1]} "
                         f"vs {test_features.shape[1]}")
    for split, feats, labels in (("train", train_features, train_labels),
                                 ("test", test_features, test_labels)):
        if feats.shape[0] == 0:
            raise ValueError(f"the {split} split is empty")
        if labels.shape != (feats.shape[0],) or labels.dtype != torch.int64:
            raise ValueError(f"{split} labels are {labels.dtype} {tuple(labels.shape)}, expected "
                             f"int64 ({feats.shape[0]},)")
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ValueError(f"{split} labels must lie in [0, {num_classes}); got "
                             f"{int(labels.min())}…{int(labels.max())}")
        bad = int((~torch.isfinite(feats)).any(dim=1).sum())
        if bad:
            raise SslBenchError(f"{bad} of {feats.shape[0]} {split} feature vectors contain NaN "
                                "or inf; the pretext training probably diverged (try a lower "
                                "learning rate)")


def as_tuple(option: str, values: Any, cast: Callable[[Any], Any]) -> tuple:
    """An evaluator option given as one value or a sequence, as a tuple of ``cast`` values.

    Raises:
        OptionError: naming ``option`` when a value cannot be cast (e.g. a word
            where a number is expected).
    """
    items = values if isinstance(values, (tuple, list)) else (values,)
    try:
        return tuple(cast(v) for v in items)
    except (TypeError, ValueError):
        raise OptionError(f"{option}={values!r} is not valid; expected "
                          f"{cast.__name__} values") from None


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Whether each label is among the ``k`` highest-scoring classes.

    Args:
        scores: ``(N, C)`` float class scores (logits or votes).
        labels: ``int64`` ``(N,)``.
        k: clamped to C, so top-5 on fewer than 5 classes means top-C.

    Returns:
        ``bool`` ``(N,)``.
    """
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(dim=1)
