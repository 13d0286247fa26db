"""ssl-bench: a benchmark suite for self-supervised pretext tasks.

The harness lives here: command line (:mod:`ssl_bench.cli`), registries
(:mod:`ssl_bench.registry`), datasets (:mod:`ssl_bench.data`), the training loop
(:mod:`ssl_bench.train`), run directories (:mod:`ssl_bench.rundir`) and the
leaderboard (:mod:`ssl_bench.leaderboard`).
"""

__version__ = "0.1.0"
