"""A pytest plugin that prints benchmark rows as one table in the terminal summary.

pytest-benchmark's own table shows timing statistics only; the throughput benchmarks
also derive images/s, GFLOP/s and ratios (their ``extra_info``), which this table shows.
"""

from __future__ import annotations

from tabulate import tabulate


class SummaryTable:
    """Rows added during the session, printed once at its end (nothing when no row was
    added, e.g. when benchmarks are disabled).

    Args:
        title: the line printed above the table.
        columns: ``(key, header, format)`` per column; a row's value under ``key`` is
            formatted with ``format`` (e.g. ``"{:.1f}"``), a missing one is left blank.
    """

    def __init__(self, title: str, columns: list[tuple[str, str, str]]) -> None:
        self.title = title
        self.columns = columns
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        """Add one row (a dict keyed like :attr:`columns`)."""
        self.rows.append(row)

    def render(self) -> str:
        """The table as plain text."""
        cells = [[fmt.format(row[key]) if row.get(key) is not None else ""
                  for key, _, fmt in self.columns] for row in self.rows]
        return tabulate(cells, headers=[header for _, header, _ in self.columns],
                        disable_numparse=True, stralign="right")

    def pytest_terminal_summary(self, terminalreporter) -> None:
        """pytest hook: print the title and the table after the other summaries."""
        if self.rows:
            terminalreporter.write_sep("-", self.title)
            terminalreporter.write_line(self.render())
