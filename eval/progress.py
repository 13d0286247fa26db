"""Progress of the evaluation's phases (features of a split, each fit) on stderr.

On a terminal a phase is a tqdm bar that disappears when done. Elsewhere (output
redirected to a log, a scheduler's job) tqdm draws nothing useful: it rewrites one
line with carriage returns, so instead each phase prints plain lines, one when it
ends with its elapsed time and, while it runs, one at most every
:data:`INTERVAL_S` seconds.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator, Protocol

from tqdm import tqdm

#: Fewest seconds between two lines of one running phase in a log.
INTERVAL_S = 10.0


class Counter(Protocol):
    """What a phase hands its block: ``update(n)`` after n more units are done."""

    def update(self, n: int = 1) -> object: ...


class _Lines:
    """A phase as plain lines on stderr: ``eval <desc>: 512/1,347 images, 10 s so
    far`` while it runs (at most every :data:`INTERVAL_S` s), ``eval <desc>: 1,347
    images in 12.3 s`` (``done in 0.4 s`` without a total) when it ends."""

    def __init__(self, desc: str, total: int | None, unit: str) -> None:
        self.desc, self.total, self.unit, self.done = desc, total, unit, 0
        self.start = self.last = time.perf_counter()

    def _print(self, text: str) -> None:
        print(f"eval {self.desc}: {text}", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= INTERVAL_S and self.done != self.total:
            self.last = now
            self._print(f"{self.done:,}/{self.total:,} {self.unit}, {now - self.start:.0f} s "
                        "so far")

    def close(self) -> None:
        done = "done" if self.total is None else f"{self.total:,} {self.unit}"
        self._print(f"{done} in {time.perf_counter() - self.start:.1f} s")


class _Quiet:
    def update(self, n: int = 1) -> None:
        pass


@contextmanager
def phase(desc: str | None, total: int | None = None, unit: str = "") -> Iterator[Counter]:
    """Show the progress of one phase of ``total`` ``unit`` (``None``: one step
    without a count, e.g. a k-NN fit) on stderr, as a bar on a terminal and as
    lines elsewhere; the final line is printed only when the block succeeds.
    ``desc`` ``None``: show nothing."""
    if desc is None:
        yield _Quiet()
    elif sys.stderr.isatty():
        with tqdm(total=total, desc=desc, unit=unit or "it", leave=False, file=sys.stderr,
                  dynamic_ncols=True) as bar:
            yield bar
    else:
        lines = _Lines(desc, total, unit)
        yield lines
        lines.close()
