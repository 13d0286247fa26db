"""The evaluation protocol of a run: which evaluator sees which frozen features.

* **All labels**: every chosen evaluator (k-NN, linear probe) on the pooled
  features of the labelled evaluation subset, scored on the test split.
* **Low-shot**: k-NN and the linear probe trained on a fixed, class-balanced
  p % of the train split's labels (1 % and 10 % by default, as in the
  semi-supervised ImageNet protocol of Zhai et al., ICCV 2019, §5, and VISSL's
  low-shot benchmarks), scored on the same test split. The labelled images are
  drawn (seed 0, the same for every run) from inside the evaluation subset, so
  no extra features are extracted; metric names end in ``_1pct``, ``_10pct``.
  Where p % is the whole evaluation subset (10 % of CIFAR-10's 50,000 images
  with ``--eval-train-subset 5000``), its scores are the all-label ones, which
  the same fits on the same images would repeat exactly.
* **Per layer**: one linear probe on each backbone stage's pooled map
  (:func:`eval.features.stage_grid`), as in the conv1…conv5 tables of
  Zhang et al. (CVPR 2017, Table 3) and Noroozi & Favaro (ECCV 2016, Table 2).
  The best layer is the one with the best *validation* top-1 (its probe's own
  held-out split of the labelled train images); ``layer_best_linear_top1`` is
  that layer's test top-1, ``layer_last_linear_top1`` the deepest layer's.

All of the above score every task on the same representation: its backbone's pooled
output and stages. A task with a representation of its own (an autoencoder's code,
the VAE's μ) has it scored besides, by every evaluator with all labels, in metrics
named ``code_<metric>`` (:meth:`Protocol.evaluate_code`), so that a reader can set
the code against the backbone it is computed from.

Every probe picks its L2 penalty on a validation split of its own labelled
train images (see :class:`eval.linear.LinearProbe`); the test
split takes part in no choice: not the probe settings, not the low-shot
settings, not the layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from eval.base import Evaluator
from eval.linear import LinearProbe
from eval.progress import phase
from ssl_bench.core.subsets import balanced_subset_indices
from ssl_bench.core.errors import OptionError

#: Prefix of the metrics of a task's own representation (see :meth:`Protocol.evaluate_code`).
CODE_PREFIX = "code_"
#: Fewest labels per class for a low-shot evaluation (its validation split needs some).
MIN_LOWSHOT_PER_CLASS = 10


def lowshot_key(percent: float) -> str:
    """Suffix of a low-shot metric name: 1 → ``"1pct"``, 0.5 → ``"0.5pct"``."""
    return f"{percent:g}pct"


def lowshot_sizes(percents: tuple[float, ...] | list[float], train_split_images: int,
                  eval_images: int, num_classes: int) -> dict[str, int]:
    """How many labelled images each low-shot percentage means.

    ``round(p / 100 · train_split_images)`` for each p; percentages that give
    fewer than :data:`MIN_LOWSHOT_PER_CLASS` labels per class are left out
    (e.g. 1 % of the 1,347-image digits train split).

    Args:
        percents: p values in (0, 100].
        train_split_images: size of the dataset's whole train split.
        eval_images: size of the labelled evaluation subset they are drawn from.
        num_classes: C.

    Returns:
        ``lowshot_key(p)`` → number of labelled images.

    Raises:
        OptionError: a p outside (0, 100], or one that needs more labelled
            images than the evaluation subset holds (names ``--eval-train-subset``).
    """
    sizes = {}
    for p in percents:
        if not 0 < p <= 100:
            raise OptionError(f"--lowshot {p:g} is not valid; give percentages in (0, 100]")
        n = round(p / 100 * train_split_images)
        if n > eval_images:
            raise OptionError(f"--lowshot {p:g} needs {n} labelled images but the evaluation "
                              f"subset has {eval_images}; raise --eval-train-subset to at "
                              f"least {n} or drop that percentage")
        if n >= MIN_LOWSHOT_PER_CLASS * num_classes:
            sizes[lowshot_key(p)] = n
    return sizes


@dataclass
class Evaluation:
    """What the protocol measured on one set of frozen features.

    Attributes:
        metrics: flat metrics: accuracies in %, each probe's chosen settings
            (``linear_l2``, ``linear_val_top1``; low-shot ones end
            in ``_<p>pct``), ``layer_best_linear_top1``, ``layer_last_linear_top1``.
        layers: one record per probed layer: ``{"name", "depth" (1-based), "dims",
            "linear_top1", "linear_val_top1", "linear_l2", …}``.
        layer_best: the name of the layer with the best validation top-1 (None
            without per-layer probes).
    """

    metrics: dict[str, float]
    layers: list[dict] = field(default_factory=list)
    layer_best: str | None = None


@dataclass
class Protocol:
    """What to evaluate, beyond the evaluators on all labels.

    Attributes:
        evaluators: name → evaluator on the pooled features with all labels.
        lowshot: ``lowshot_key`` → number of labelled images (see :func:`lowshot_sizes`).
        layer_probe: the linear probe run per layer; ``None``: no per-layer probes.

    The low-shot subsets are scored by the same evaluators as all labels.
    """

    evaluators: dict[str, Evaluator]
    lowshot: dict[str, int] = field(default_factory=dict)
    layer_probe: LinearProbe | None = None

    def evaluate(self, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, num_classes: int, seed: int,
                 train_stages: list[torch.Tensor] | None = None,
                 test_stages: list[torch.Tensor] | None = None,
                 stage_names: list[str] | None = None) -> Evaluation:
        """Run the whole protocol.

        Args:
            train_x: ``float32`` ``(N_train, D)`` pooled features of the labelled subset.
            train_y: ``int64`` ``(N_train,)``.
            test_x: ``float32`` ``(N_test, D)``.
            test_y: ``int64`` ``(N_test,)``.
            num_classes: C.
            seed: seeds the probes' validation splits and batch orders.
            train_stages, test_stages: per-stage features ``(N, D_i)``, needed when
                :attr:`layer_probe` is set.
            stage_names: one name per stage.

        Each fit is a phase whose progress is shown on stderr (:func:`eval.progress.phase`).

        Returns:
            The :class:`Evaluation`.
        """
        per_layer = self.layer_probe is not None and train_stages is not None
        metrics: dict[str, float] = {}
        all_labels = {}
        for name, evaluator in self.evaluators.items():
            with phase(f"{name}, all labels"):
                all_labels[name] = evaluator.evaluate(train_x, train_y, test_x, test_y,
                                                      num_classes, seed=seed)
            metrics.update(all_labels[name])
        for key, size in self.lowshot.items():
            idx = balanced_subset_indices(train_y, size, seed=0, option=f"--lowshot {key}")
            for name, evaluator in self.evaluators.items():
                # every labelled image, in the same order (idx is sorted): nothing to refit
                if len(idx) == len(train_y):
                    scores = all_labels[name]
                else:
                    with phase(f"{name}, {key.replace('pct', '%')} labels"):
                        scores = evaluator.evaluate(train_x[idx], train_y[idx], test_x, test_y,
                                                    num_classes, seed=seed)
                metrics.update({f"{metric}_{key}": value for metric, value in scores.items()})
        layers: list[dict] = []
        best = None
        if per_layer:
            with phase("linear probe per layer", len(stage_names), "layers") as counter:
                for depth, (name, tr, te) in enumerate(zip(stage_names, train_stages,
                                                           test_stages), 1):
                    scores = self.layer_probe.evaluate(tr, train_y, te, test_y, num_classes,
                                                       seed=seed)
                    layers.append({"name": name, "depth": depth, "dims": int(tr.shape[1]),
                                   **scores})
                    counter.update(1)
            # chosen on validation top-1 (ties: the shallower layer), reported on test
            chosen = max(layers, key=lambda r: (r["linear_val_top1"], -r["depth"]))
            best = chosen["name"]
            metrics["layer_best_linear_top1"] = chosen["linear_top1"]
            metrics["layer_last_linear_top1"] = layers[-1]["linear_top1"]
        return Evaluation(metrics, layers, best)

    def evaluate_code(self, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                      test_y: torch.Tensor, num_classes: int, seed: int) -> dict[str, float]:
        """Every evaluator with all labels on a task's own representation: features
        ``float32`` ``(N, K)`` and labels as in :meth:`evaluate`. No low-shot and no
        layers (the stages are the backbone's, already probed).

        Returns:
            ``code_<metric>`` → value, e.g. ``code_knn_top1_k20``, ``code_linear_top1``.
        """
        metrics: dict[str, float] = {}
        for name, evaluator in self.evaluators.items():
            with phase(f"{name} on the task's code, all labels"):
                scores = evaluator.evaluate(train_x, train_y, test_x, test_y, num_classes,
                                            seed=seed)
            metrics.update({f"{CODE_PREFIX}{metric}": value for metric, value in scores.items()})
        return metrics
