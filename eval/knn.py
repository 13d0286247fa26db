"""Weighted k-nearest-neighbour classification of frozen features."""

from __future__ import annotations

import faiss
import torch
import torch.nn.functional as F

from eval.base import Evaluator, as_tuple, check_inputs, topk_correct
from ssl_bench.core.errors import OptionError
from ssl_bench.core.registry import EVALUATORS


@EVALUATORS.register("knn")
class KNNEvaluator(Evaluator):
    """Cosine-similarity k-NN with exponentially weighted votes.

    Follows Wu, Xiong, Yu & Lin, "Unsupervised Feature Learning via
    Non-Parametric Instance Discrimination", CVPR 2018, §3.4: the L2-normalised
    train features form the memory bank; each L2-normalised test feature
    retrieves its k most cosine-similar train features N_k, and class c
    receives the vote w_c = Σ_{i∈N_k} exp(s_i / τ) · 1(c_i = c). The
    prediction is the class of largest vote; top-5 ranks the classes by vote.

    The search is exact (faiss ``IndexFlatIP`` on normalised vectors, so inner
    product = cosine similarity) and done once for the largest k; smaller k
    reuse its leading neighbours.

    Args:
        ks: neighbourhood sizes (one int or a sequence): k = 200 as in the
            paper, and k = 20, a common choice for small datasets. A k larger
            than N_train is clamped to N_train (metric names keep the requested k).
        temperature: τ of the vote weights, 0.07 as in the paper.

    Metrics (%): ``knn_top1_k{k}`` and ``knn_top5_k{k}`` for each k; top-5 is
    top-min(5, C) when there are fewer than five classes.

    Raises:
        OptionError: an empty ``ks``, a k < 1, τ ≤ 0, or a value that is not a number.
    """


    def __init__(self, ks: int | tuple[int, ...] | list[int] = (20, 200),
                 temperature: float = 0.07) -> None:
        self.ks = as_tuple("knn ks", ks, int)
        (self.temperature,) = as_tuple("knn temperature", temperature, float)
        if not self.ks or min(self.ks) < 1:
            raise OptionError(f"knn ks={ks!r} is not valid; give one or more k ≥ 1")
        if not self.temperature > 0:
            raise OptionError(f"knn temperature={temperature} is not valid; it must be > 0")

    def evaluate(self, train_features: torch.Tensor, train_labels: torch.Tensor,
                 test_features: torch.Tensor, test_labels: torch.Tensor, num_classes: int,
                 seed: int = 0) -> dict[str, float]:
        """See :meth:`Evaluator.evaluate`; k-NN has no randomness, ``seed`` is unused."""
        check_inputs(train_features, train_labels, test_features, test_labels, num_classes)
        metrics: dict[str, float] = {}
        for k, votes in self.class_votes(train_features, train_labels, test_features,
                                         num_classes).items():
            for top in (1, 5):
                correct = topk_correct(votes, test_labels, top)
                metrics[f"knn_top{top}_k{k}"] = 100.0 * correct.float().mean().item()
        return metrics

    def class_votes(self, train_features: torch.Tensor, train_labels: torch.Tensor,
                    test_features: torch.Tensor, num_classes: int) -> dict[int, torch.Tensor]:
        """The weighted class votes of every test feature, for each k of ``ks``.

        Args:
            train_features: ``float`` ``(N_train, D)``, the memory bank.
            train_labels: ``int64`` ``(N_train,)``.
            test_features: ``float`` ``(N_test, D)``, the queries.
            num_classes: C.

        Returns:
            k → ``float32`` ``(N_test, C)`` votes (see :meth:`votes`).
        """
        similarity, neighbours = self.neighbours(train_features, test_features)
        neighbour_labels = train_labels[neighbours]
        return {k: self.votes(similarity[:, :k], neighbour_labels[:, :k], num_classes)
                for k in self.ks}

    def neighbours(self, train_features: torch.Tensor,
                   test_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact cosine nearest neighbours of each test feature among the train features.

        Args:
            train_features: ``float`` ``(N_train, D)``.
            test_features: ``float`` ``(N_test, D)``.

        Returns:
            ``float32`` similarities and ``int64`` train indices, both
            ``(N_test, min(max(ks), N_train))``, most similar first.
        """
        k = min(max(self.ks), train_features.shape[0])
        bank = F.normalize(train_features.float(), dim=1).contiguous().numpy()
        queries = F.normalize(test_features.float(), dim=1).contiguous().numpy()
        index = faiss.IndexFlatIP(bank.shape[1])
        index.add(bank)
        similarity, neighbours = index.search(queries, k)
        return torch.from_numpy(similarity), torch.from_numpy(neighbours).long()

    def votes(self, similarity: torch.Tensor, neighbour_labels: torch.Tensor,
              num_classes: int) -> torch.Tensor:
        """Class votes w_c = Σ_i exp(s_i / τ) · 1(c_i = c) (Wu et al. 2018, §3.4).

        Each row's weights are divided by exp(max_i s_i / τ) so that small τ
        cannot overflow; a common positive factor per query leaves the ranking
        of classes unchanged.

        Args:
            similarity: ``float`` ``(N, k)`` cosine similarities s_i.
            neighbour_labels: ``int64`` ``(N, k)`` classes c_i of the neighbours.
            num_classes: C.

        Returns:
            ``float32`` ``(N, C)`` votes.
        """
        weights = ((similarity - similarity[:, :1]) / self.temperature).exp()
        votes = torch.zeros(similarity.shape[0], num_classes, dtype=weights.dtype)
        return votes.scatter_add_(1, neighbour_labels, weights)
