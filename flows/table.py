"""Trial tables for people: rounded values, the best trial first and marked, as many
columns as fit. Full precision stays in the files (results.csv, `prefect-tune export`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prefect_tune.flows.results import ResultGrid
from prefect_tune.storage import TrialStatus
from prefect_tune.storage.ranking import rank_key, value_of
from prefect_tune.storage.records import AUTO_KEYS, flatten

#: The longest text a cell shows.
CELL_WIDTH = 24


def cell(value: Any) -> str:
    """`value` as a table shows it: floats to 4 significant digits, None as nothing, the
    rest as text cut at CELL_WIDTH characters."""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = "" if value is None else str(value)
    return text if len(text) <= CELL_WIDTH else text[:CELL_WIDTH - 1] + "…"


@dataclass(frozen=True)
class Column:
    """A column: its header and its cells, right-aligned when they are numbers."""

    header: str
    cells: Sequence[str]
    numeric: bool = False

    @property
    def width(self) -> int:
        return max([len(self.header), *map(len, self.cells)])

    def line(self, index: int | None) -> str:
        text = self.header if index is None else self.cells[index]
        return text.rjust(self.width) if self.numeric else text.ljust(self.width)


def fit(columns: Sequence[Column], width: int, keep: int) -> tuple[list[str], list[str]]:
    """The lines of a table of `columns` no wider than `width`: the first `keep` always,
    then each that still fits, in order; and the headers of the columns left out."""
    shown, left_out, used = [], [], -2
    for index, column in enumerate(columns):
        if index < keep or used + 2 + column.width <= width:
            shown.append(column)
            used += 2 + column.width
        else:
            left_out.append(column.header)
    rows = len(shown[0].cells) if shown else 0
    lines = ["  ".join(c.line(i) for c in shown).rstrip() for i in [None, *range(rows)]]
    return lines, left_out


def trial_table(grid: ResultGrid, width: int) -> list[str]:
    """`grid`'s trials as lines no wider than `width`: sorted by the sweep's metric (its
    latest value, as `get_best_result` ranks) with the best one marked "*", then status,
    iteration, config and the other metrics while they fit; a last line names the
    columns left out."""
    metric, mode = grid.metric, grid.mode
    results = list(grid)
    ranked = bool(metric) and mode in ("min", "max")
    if ranked:
        results.sort(key=lambda r: rank_key(value_of(r.metrics, metric), str(mode)),
                     reverse=True)
    best = grid.best_or_none() if ranked else None
    configs = [flatten(r.config) for r in results]
    metrics = [{k: v for k, v in flatten(r.metrics).items() if k not in AUTO_KEYS}
               for r in results]
    keys = [k for k in dict.fromkeys(k for m in metrics for k in m) if k != metric]
    config_keys = list(dict.fromkeys(k for c in configs for k in c))
    columns = [
        Column("", ["*" if r is best else "" for r in results]),
        Column("trial", [r.trial_id for r in results]),
        Column("status", [_status(r.status, r.stopped_early) for r in results]),
        *([Column(str(metric), [cell(m.get(metric)) for m in metrics], True)]
          if metric else []),
        Column("iter", [cell(r.metrics.get("training_iteration")) for r in results], True),
        *(Column(k if k not in keys and k != metric else f"config/{k}",
                 [cell(c.get(k)) for c in configs], True) for k in config_keys),
        *(Column(k, [cell(m.get(k)) for m in metrics], True) for k in keys),
    ]
    lines, left_out = fit(columns, width, keep=4 if metric else 3)
    if left_out:
        lines.append(f"(not shown: {', '.join(left_out)}; `prefect-tune export` has every "
                     "column)"[:width])
    return lines


def _status(status: TrialStatus, stopped_early: str | None) -> str:
    return "STOPPED EARLY" if stopped_early else status.value
