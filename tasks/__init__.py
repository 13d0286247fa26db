"""Pretext tasks, one module each, all behind :class:`tasks.base.PretextTask`.

Every module in this package is imported here so that its ``@TASKS.register``
runs: adding a task is adding one module.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
