"""Evaluators of frozen features (k-NN, linear probe), the evaluation protocol
(all labels, low-shot, per layer) and feature extraction.

Every module of this package may register evaluators in
:data:`ssl_bench.core.registry.EVALUATORS`; the registry imports them on first use.
"""
