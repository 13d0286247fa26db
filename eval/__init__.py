"""Evaluators of frozen features (k-NN, linear probe) and feature extraction.

Importing the package registers every built-in evaluator in
:data:`ssl_bench.registry.EVALUATORS` (importing a module runs its
``@EVALUATORS.register``).
"""

from eval.base import Evaluator
from eval.features import extract_features, extract_features_and_stages
from eval.knn import KNNEvaluator
from eval.linear import LinearProbe, validation_split
from eval.protocol import Protocol, lowshot_sizes

__all__ = ["Evaluator", "KNNEvaluator", "LinearProbe", "Protocol", "extract_features",
           "extract_features_and_stages", "lowshot_sizes",
           "validation_split"]
