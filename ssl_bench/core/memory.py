"""Peak memory of a run, for the cost columns (as lightly's benchmark tables report it).

On a CUDA device: ``torch.cuda.max_memory_allocated`` — the most memory that tensors
held at once since :func:`reset_peak_memory` (allocator caching and the CUDA context
are not counted). Elsewhere: the peak resident set size of the whole process
(``getrusage(RUSAGE_SELF).ru_maxrss``, which cannot be reset: it covers imports, data
loading and everything before as well).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the CLI imports the core
    import torch

MIB = 1024 * 1024


def reset_peak_memory(device: torch.device) -> None:
    """Start measuring the CUDA peak afresh on ``device``; nothing to do on a CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float | str | None]:
    """The peak so far: ``{"peak_memory_mib": MiB, "peak_memory_kind": kind}`` with kind
    ``"cuda_allocated"`` on a CUDA device, ``"rss"`` elsewhere; ``None`` values where the
    platform has no ``resource`` module (Windows)."""
    import torch

    if device.type == "cuda":
        mib = torch.cuda.max_memory_allocated(device) / MIB
        return {"peak_memory_mib": round(mib, 1), "peak_memory_kind": "cuda_allocated"}
    try:
        import resource
    except ImportError:
        return {"peak_memory_mib": None, "peak_memory_kind": None}
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in bytes on macOS, in kilobytes on Linux and the BSDs (getrusage(2))
    nbytes = maxrss if sys.platform == "darwin" else maxrss * 1024
    return {"peak_memory_mib": round(nbytes / MIB, 1), "peak_memory_kind": "rss"}
