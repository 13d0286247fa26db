"""Pretext tasks, one module each, all behind :class:`tasks.base.PretextTask`.

Every module of this package may register tasks in
:data:`ssl_bench.core.registry.TASKS`; the registry imports them on first use,
so adding a task is adding one module.
"""
