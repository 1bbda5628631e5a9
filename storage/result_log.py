"""`ResultLog`: a trial's result.json (JSON lines), progress.csv and TensorBoard events."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Iterable, Mapping
from typing import IO, Any

from prefect_tune.storage.filesystem import Storage
from prefect_tune.storage.records import flatten
from prefect_tune.storage.tensorboard import open_event_log

#: On object stores, rows between checkpoints are uploaded at most this often.
REMOTE_FLUSH_SECONDS = 10.0


class ResultLog:
    """A trial's result.json (JSON lines), progress.csv and TensorBoard events.

    Locally every row is appended and flushed as it is reported. On object stores,
    where nothing can be appended, both files are rewritten whole: at every checkpoint
    (`durable=True`), at most every REMOTE_FLUSH_SECONDS otherwise, and on close. Event
    files (when `tensorboard` and tensorboardX is installed) are flushed as often, and
    a resumed attempt's events hide those of the rows it discarded.
    """

    def __init__(
        self, storage: Storage, json_path: str, csv_path: str,
        rows: Iterable[Mapping[str, Any]] = (), *, tensorboard: bool = False,
    ) -> None:
        self._storage = storage
        self._json_path = json_path
        self._csv_path = csv_path
        self._rows: list[dict[str, Any]] = []
        self._columns: dict[str, None] = {}
        for row in rows:
            self._remember(row)
        self._events = open_event_log(
            storage, json_path.rsplit("/", 1)[0],
            purge_step=int(self._rows[-1]["training_iteration"]) + 1 if self._rows else None,
        ) if tensorboard else None
        self._json: IO[str] | None = None
        self._csv: IO[str] | None = None
        self._dirty = True  # the stored files must be made to hold exactly `rows`
        self._last_flush = time.monotonic()
        if storage.is_local:
            os.makedirs(os.path.dirname(json_path), exist_ok=True)
            self._rewrite()
        else:
            self.flush()

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
        line = json.dumps(row)
        cells = self._remember(row)
        if self._events is not None:
            self._events.append(row)
        if not self._storage.is_local:
            self._dirty = True
            if self._due(durable):
                self.flush()
            return
        assert self._json is not None and self._csv is not None
        self._json.write(line + "\n")
        self._json.flush()
        if cells is None and len(self._rows) > 1:  # a new column: a new header
            self._csv.close()
            self._write_csv_file()
        else:
            self._csv.write(self._csv_text() if cells is None else _csv_line(cells))
            self._csv.flush()
        if self._events is not None and self._due(durable):  # local events: as often
            self._events.flush()
            self._last_flush = time.monotonic()

    def _due(self, durable: bool) -> bool:
        """Whether buffered output is to reach storage now: at a checkpoint, or once
        REMOTE_FLUSH_SECONDS have passed since the last flush."""
        return durable or time.monotonic() - self._last_flush >= REMOTE_FLUSH_SECONDS

    def flush(self) -> None:
        """Make every row so far durable in storage."""
        if self._storage.is_local or not self._dirty:
            return
        self._storage.write_bytes(self._json_path, self._json_text().encode())
        self._storage.write_bytes(self._csv_path, self._csv_text().encode())
        if self._events is not None:
            self._events.flush()
        self._dirty = False
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._events is not None:
            self._events.close()
        for handle in (self._json, self._csv):
            if handle is not None:
                handle.close()
        self._json = self._csv = None

    def _json_text(self) -> str:
        return "".join(json.dumps(row) + "\n" for row in self._rows)

    def _csv_text(self) -> str:
        lines = [_csv_line(list(self._columns))] if self._columns else []
        for row in self._rows:
            flat = flatten(row)
            lines.append(_csv_line([_cell(flat.get(c)) for c in self._columns]))
        return "".join(lines)

    def _rewrite(self) -> None:
        """Replace both local files with the rows held, then reopen them for appends.

        With no rows to keep, truncating in place is as safe and much cheaper: a crash
        leaves old rows, which the next resume cuts again.
        """
        # The handles stay open until close().
        if not self._rows:
            self._json = open(self._json_path, "w", encoding="utf-8")  # noqa: SIM115
            self._csv = open(self._csv_path, "w", encoding="utf-8", newline="")  # noqa: SIM115
            return
        self._storage.write_bytes(self._json_path, self._json_text().encode())
        self._json = open(self._json_path, "a", encoding="utf-8")  # noqa: SIM115
        self._write_csv_file()

    def _write_csv_file(self) -> None:
        """progress.csv is derived from result.json: replaced atomically, not fsynced."""
        self._storage.write_bytes(self._csv_path, self._csv_text().encode(), durable=False)
        self._csv = open(self._csv_path, "a", encoding="utf-8", newline="")  # noqa: SIM115


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
