"""The ground floor of ssl-bench: what every layer above may import.

Errors, the registries, the data description tasks are built from, image-tensor
helpers, seeded subsets, atomic run-directory I/O and figure saving. This
package imports nothing from ``tasks``, ``backbones``, ``eval`` or the rest of
``ssl_bench``.
"""

from ssl_bench.core.errors import (DataError, Diverged, IncompatibleError, Interrupted,
                                   OptionError, SslBenchError, UnknownNameError)
from ssl_bench.core.registry import BACKBONES, DATASETS, EVALUATORS, TASKS, Registry
from ssl_bench.core.spec import DataSpec

__all__ = ["BACKBONES", "DATASETS", "DataError", "DataSpec", "Diverged", "EVALUATORS",
           "IncompatibleError", "Interrupted", "OptionError", "Registry", "SslBenchError",
           "TASKS", "UnknownNameError"]
