"""Evaluators of frozen features (k-NN, linear probe) and feature extraction.

Importing the package registers every built-in evaluator in
:data:`ssl_bench.registry.EVALUATORS` (importing a module runs its
``@EVALUATORS.register``).
"""

from eval.base import Evaluator
from eval.features import extract_features, extract_stage_features
from eval.knn import KNNEvaluator
from eval.linear import LinearProbe, validation_split

__all__ = ["Evaluator", "KNNEvaluator", "LinearProbe", "extract_features",
           "extract_stage_features", "validation_split"]
