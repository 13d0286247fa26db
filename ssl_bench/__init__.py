"""ssl-bench: a benchmark suite for self-supervised pretext tasks.

Layers, bottom up: :mod:`ssl_bench.core` (errors, registries, data spec, image
helpers, atomic run-directory I/O, figures) imports nothing else of the project;
``backbones``, ``eval`` and ``tasks`` build on it; the harness in this package
(``cli``, ``config``, ``build``, ``datasets``, ``train``, ``runner``, ``sweep``,
``leaderboard``, ``report``) sits on top and is the only layer that knows them all.
"""

__version__ = "0.1.0"
