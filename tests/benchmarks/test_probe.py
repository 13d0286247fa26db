"""Cost and accuracy of the linear probe on fixed real features (pytest-benchmark).

Run with ``python -m pytest tests/benchmarks/test_probe.py --benchmark-enable``. The
features are a seed-0 random-init convnet's on digits (1,347 labelled train images,
450 test): the pooled 256 dims and the deepest stage's 4,096. Each benchmark times
one whole :meth:`LinearProbe.evaluate` (penalty path on the validation split and the
final refit) and records in ``extra_info`` its test top-1, the test top-1 of
scikit-learn's L-BFGS logistic regression run to convergence (tolerance 1e-10) on the
same standardised features with the same chosen penalty, and ``gap_points``, ours
minus the reference (goal: within ±0.5). Without ``--benchmark-enable`` each runs once.
"""

from __future__ import annotations

import pytest

from conftest import digits_random_init_features, sklearn_reference
from eval.linear import LinearProbe, Standardizer


@pytest.fixture(scope="module")
def digits():
    return digits_random_init_features()


@pytest.mark.parametrize("features", ["pooled", "stage"])
def test_linear_probe_against_converged_reference(benchmark, digits, features):
    train, test = digits[features]
    train_labels, test_labels = digits["train_labels"], digits["test_labels"]
    probe = LinearProbe()
    metrics = benchmark.pedantic(probe.evaluate, (train, train_labels, test, test_labels, 10),
                                 rounds=3, iterations=1)
    standardize = Standardizer(train)
    reference = sklearn_reference(standardize(train), train_labels, metrics["linear_l2"])
    reference_top1 = 100.0 * (reference.predict(standardize(test).double().numpy())
                              == test_labels.numpy()).mean()
    benchmark.extra_info.update(features=f"{features} {tuple(train.shape)}",
                                top1=metrics["linear_top1"], l2=metrics["linear_l2"],
                                reference_top1=reference_top1,
                                gap_points=metrics["linear_top1"] - reference_top1)
    assert abs(metrics["linear_top1"] - reference_top1) <= 1.0
