"""Peak memory of a run, for the cost columns (as lightly's benchmark tables report it),
and the check that a decoded dataset can fit in memory at all.

On a CUDA device: ``torch.cuda.max_memory_allocated`` — the most memory that tensors
held at once since :func:`reset_peak_memory` (allocator caching and the CUDA context
are not counted). Elsewhere: the peak resident set size of the whole process
(``getrusage(RUSAGE_SELF).ru_maxrss``, which cannot be reset: it covers imports, data
loading and everything before as well).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from ssl_bench.core.errors import OptionError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI imports the core
    import torch

MIB = 1024 * 1024
GB = 1e9


def physical_memory() -> int | None:
    """The machine's physical memory in bytes (``os.sysconf``; a container's own limit is
    not seen), ``None`` where the platform does not say (Windows)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_decoded_fits(dataset: str, images: int, channels: int, size: int) -> None:
    """Refuse a decode that cannot fit in memory before it starts: ``images`` ``uint8``
    images of ``channels`` × ``size``² bytes (``size``: ``--image-size``, px) against the
    physical memory.

    Only the decoded tensor is counted (decoding briefly holds two or three copies, and
    training more), so a refusal is certain; a size just under the limit may still fail.

    Raises:
        OptionError: naming ``--image-size``, the estimate and the memory.
    """
    need, have = images * channels * size * size, physical_memory()
    if have is not None and need > have:
        raise OptionError(
            f"--image-size {size}: the {images:,} images of {dataset} would take "
            f"{_gb(need)} decoded ({images:,} × {channels} channel(s) × {size}² bytes), "
            f"more than this machine's {_gb(have)} of memory; give a smaller --image-size")


def _gb(nbytes: int) -> str:
    """``nbytes`` in GB, or TB from 1,000 GB on."""
    return f"{nbytes / 1e12:,.1f} TB" if nbytes >= 1e12 else f"{nbytes / GB:,.1f} GB"


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
