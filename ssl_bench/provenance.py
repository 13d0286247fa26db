"""Where a result came from: the code's git commit and the library versions."""

from __future__ import annotations

import platform
from importlib import metadata
import subprocess
from pathlib import Path


def git_commit() -> str | None:
    """The current git commit of the ssl-bench checkout (``+dirty`` if modified), or None."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape a result (read from the installed
    packages' metadata, so timm is not imported for a run that does not use it)."""
    import numpy
    import torch

    import ssl_bench

    return {"python": platform.python_version(), "ssl_bench": ssl_bench.__version__,
            "torch": torch.__version__, "timm": metadata.version("timm"),
            "numpy": numpy.__version__}
