"""`ResultLog`: a trial's result.json (JSON lines), progress.csv and TensorBoard events."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prefect_tune.storage.filesystem import Storage
from prefect_tune.storage.layout import PROGRESS, RESULT_LOG
from prefect_tune.storage.records import flatten
from prefect_tune.storage.tensorboard import open_event_log

#: On object stores, rows between checkpoints are uploaded at most this often.
REMOTE_FLUSH_SECONDS = 10.0


class ResultLog:
    """A trial's result.json (JSON lines), progress.csv and TensorBoard events in
    `directory`.

    Every row is appended as it is reported: locally it reaches the files at once; on
    object stores, which cannot append, the files are rewritten whole at every checkpoint
    (`durable=True`), at most every REMOTE_FLUSH_SECONDS otherwise, and on close. Event
    files (when `tensorboard` and tensorboardX is installed) are flushed as often, and a
    resumed attempt's events hide those of the rows it discarded.

    progress.csv has the union of every column seen. A row with a new column needs a
    wider header, so the file is rewritten, but not at every new column: the first rows
    at once, later ones at the next timed flush (REMOTE_FLUSH_SECONDS) or on close; until
    then progress.csv lacks the newest rows (result.json has them). A row is rendered
    once, and a rewrite only pads the rendered rows to the new width, so a metric name
    new in every report costs report() no more than a fixed one.
    """

    def __init__(
        self, storage: Storage, directory: str, rows: Iterable[Mapping[str, Any]] = (), *,
        tensorboard: bool = False,
    ) -> None:
        self._rows: list[dict[str, Any]] = []
        self._columns: dict[str, int] = {}
        self._lines: list[tuple[str, int]] = []  # each row's CSV cells and its last column
        for row in rows:
            self._remember(row)
        self._json = storage.appender(f"{directory}/{RESULT_LOG}", self._json_text().encode())
        self._csv = storage.appender(f"{directory}/{PROGRESS}", self._csv_text().encode())
        self._shown = bool(self._rows)  # whether progress.csv holds any row yet
        self._stale = False  # rows with new columns wait for the next rewrite
        self._events = open_event_log(
            storage, directory,
            purge_step=int(self._rows[-1]["training_iteration"]) + 1 if self._rows else None,
        ) if tensorboard else None
        self.flush()  # the stored files hold exactly `rows` from now on

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self._rows

    def _remember(self, row: Mapping[str, Any]) -> bool:
        """Keep `row` and render its CSV cells; True if it brought new columns."""
        self._rows.append(dict(row))
        width = len(self._columns)
        cells = {self._columns.setdefault(key, len(self._columns)): _cell(value)
                 for key, value in flatten(row).items()}
        parts, last = [], 0
        for index in sorted(cells):
            parts.append("," * (index - last) + cells[index])
            last = index
        self._lines.append(("".join(parts), last))
        return len(self._columns) > width

    def append(self, row: Mapping[str, Any], *, durable: bool) -> None:
        """Add `row`; with `durable` (a checkpoint), make every row durable in storage."""
        widened = self._remember(row)
        self._json.write((json.dumps(row) + "\n").encode())
        if widened or self._stale:
            self._stale = True
            if not self._shown:  # the first rows show at once
                self._rewrite_csv()
        else:
            self._csv.write(self._line(*self._lines[-1]).encode())
        if self._events is not None:
            self._events.append(row)
        if time.monotonic() - self._last_flush >= REMOTE_FLUSH_SECONDS:
            self.flush()
        elif durable:
            self._flush_files()

    def flush(self) -> None:
        """Make every row so far durable in storage, progress.csv included."""
        if self._stale:
            self._rewrite_csv()
        self._flush_files()
        self._last_flush = time.monotonic()

    def _flush_files(self) -> None:
        self._json.flush()
        self._csv.flush()
        if self._events is not None:
            self._events.flush()

    def close(self) -> None:
        self.flush()
        if self._events is not None:
            self._events.close()
        self._json.close()
        self._csv.close()

    def _rewrite_csv(self) -> None:
        self._csv.replace(self._csv_text().encode())
        self._shown, self._stale = bool(self._rows), False

    def _line(self, cells: str, last: int) -> str:
        return cells + "," * (len(self._columns) - 1 - last) + "\n"

    def _json_text(self) -> str:
        return "".join(json.dumps(row) + "\n" for row in self._rows)

    def _csv_text(self) -> str:
        if not self._columns:
            return ""
        header = ",".join(_escape(name) for name in self._columns) + "\n"
        return header + "".join(self._line(cells, last) for cells, last in self._lines)


def _cell(value: Any) -> str:
    """A CSV cell, as csv.writer writes it (None as empty, lists and dicts as JSON)."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    return _escape(str(value))


def _escape(text: str) -> str:
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text
