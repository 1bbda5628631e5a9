"""`ResultLog`: a trial's result.json (JSON lines), progress.csv and TensorBoard events."""

from __future__ import annotations

import csv
import io
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
    """

    def __init__(
        self, storage: Storage, directory: str, rows: Iterable[Mapping[str, Any]] = (), *,
        tensorboard: bool = False,
    ) -> None:
        self._rows: list[dict[str, Any]] = []
        self._columns: dict[str, None] = {}
        for row in rows:
            self._remember(row)
        self._json = storage.appender(f"{directory}/{RESULT_LOG}", self._json_text().encode())
        self._csv = storage.appender(f"{directory}/{PROGRESS}", self._csv_text().encode())
        self._events = open_event_log(
            storage, directory,
            purge_step=int(self._rows[-1]["training_iteration"]) + 1 if self._rows else None,
        ) if tensorboard else None
        self.flush()  # the stored files hold exactly `rows` from now on

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self._rows

    def _remember(self, row: Mapping[str, Any]) -> list[Any] | None:
        """Keep `row`; return its CSV cells, or None when it brought new columns."""
        self._rows.append(dict(row))
        flat = flatten(row)
        new = [key for key in flat if key not in self._columns]
        for key in new:
            self._columns[key] = None
        return None if new else [_cell(flat.get(c)) for c in self._columns]

    def append(self, row: Mapping[str, Any], *, durable: bool) -> None:
        """Add `row`; with `durable` (a checkpoint), make every row durable in storage."""
        cells = self._remember(row)
        self._json.write((json.dumps(row) + "\n").encode())
        if cells is not None:
            self._csv.write(_csv_line(cells).encode())
        elif len(self._rows) > 1:  # a new column: a new header
            self._csv.replace(self._csv_text().encode())
        else:
            self._csv.write(self._csv_text().encode())
        if self._events is not None:
            self._events.append(row)
        if durable or time.monotonic() - self._last_flush >= REMOTE_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Make every row so far durable in storage."""
        self._json.flush()
        self._csv.flush()
        if self._events is not None:
            self._events.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._events is not None:
            self._events.close()
        self._json.close()
        self._csv.close()

    def _json_text(self) -> str:
        return "".join(json.dumps(row) + "\n" for row in self._rows)

    def _csv_text(self) -> str:
        lines = [_csv_line(list(self._columns))] if self._columns else []
        for row in self._rows:
            flat = flatten(row)
            lines.append(_csv_line([_cell(flat.get(c)) for c in self._columns]))
        return "".join(lines)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def _csv_line(cells: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()
