"""TensorBoard event files of a trial's result rows, written beside result.json.

tensorboardX (or torch.utils.tensorboard, if torch is already imported) is imported only
when a log is opened. tensorboardX events are written synchronously by its EventsWriter:
its SummaryWriter queues events to a thread and its flush() does not wait for that queue.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from prefect_tune.storage.filesystem import Storage
from prefect_tune.storage.records import AUTO_KEYS, flatten


class _Writer(NamedTuple):
    write: Callable[[int, dict[str, float]], None]  # (step, {tag: value})
    flush: Callable[[], None]
    close: Callable[[], None]


def _tensorboardx(logdir: str, purge_step: int) -> _Writer:
    """One event file, written in the caller's thread; flush() also fsyncs it."""
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    from tensorboardX.proto.summary_pb2 import Summary

    # File names have a resolution of one second: the suffix keeps a second attempt within
    # that second from truncating the first one's file, and sorts it after that file.
    events = EventsWriter(os.path.join(logdir, "events"), f".{time.time_ns()}")
    # The two records SummaryWriter(purge_step=...) writes.
    now, start = time.time(), SessionLog(status=SessionLog.START)
    events.write_event(Event(wall_time=now, step=purge_step, file_version="brain.Event:2"))
    events.write_event(Event(wall_time=now, step=purge_step, session_log=start))

    def write(step: int, scalars: dict[str, float]) -> None:
        values = [Summary.Value(tag=tag, simple_value=v) for tag, v in scalars.items()]
        events.write_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    return _Writer(write, events.flush, events.close)


def _torch(logdir: str, purge_step: int) -> _Writer:
    """torch.utils.tensorboard's SummaryWriter, whose flush() does wait for its queue."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(logdir, purge_step=purge_step)

    def write(step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)

    return _Writer(write, writer.flush, writer.close)


def open_event_log(
    storage: Storage, trial_dir: str, *, purge_step: int | None = None
) -> EventLog | None:
    """A TensorBoard event writer for the trial directory `trial_dir` (an fsspec path in
    `storage`), or None, silently, when neither tensorboardX nor an already imported torch
    provides one. `purge_step` (the first iteration of a resumed attempt) hides the events an
    earlier attempt wrote at or after that step (SummaryWriter's purge_step); None, a start
    from scratch, hides all of them.

    Every attempt writes that purge record (at step 0 for None): TensorBoard's Python loader
    takes the first one of a run for the initial start and purges only on later ones."""
    purge_step = 0 if purge_step is None else purge_step
    backend = _tensorboardx
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        try:
            if "torch" not in sys.modules:
                return None
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            return None
        backend = _torch
    local = None if storage.is_local else tempfile.mkdtemp(prefix="prefect-tune-tb-")
    try:
        os.makedirs(local or trial_dir, exist_ok=True)
        return EventLog(storage, trial_dir, backend(local or trial_dir, purge_step), local)
    except BaseException:
        if local is not None:
            shutil.rmtree(local, ignore_errors=True)
        raise


class EventLog:
    """The scalars of a trial's result rows, one event file per attempt (`open_event_log`)."""

    def __init__(
        self, storage: Storage, trial_dir: str, writer: _Writer, local: str | None
    ) -> None:
        self._storage, self._trial_dir, self._writer = storage, trial_dir, writer
        self._local = local  # where the writer writes, if not trial_dir: uploaded on flush
        self._uploaded: dict[str, int] = {}
        self._closed = False

    def append(self, row: Mapping[str, Any]) -> None:
        """Write every numeric (int/float, not bool; NaN and infinities too) flattened metric
        of `row` but AUTO_KEYS, tagged "a/b", at step row["training_iteration"]. Values are
        stored as float32, as TensorBoard scalars are."""
        scalars = {
            key: _number(value) for key, value in flatten(row).items()
            if key not in AUTO_KEYS and isinstance(value, (int, float))
            and not isinstance(value, bool)
        }
        if scalars:
            self._writer.write(int(row["training_iteration"]), scalars)

    def flush(self) -> None:
        """Make every row appended so far visible in storage: locally the file in trial_dir
        is flushed (and fsynced); elsewhere each local event file that grew is PUT whole."""
        self._writer.flush()
        self._upload()

    def close(self) -> None:
        """Flush, close the writer and remove the local temp directory. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
            self._upload()
        finally:
            if self._local is not None:
                shutil.rmtree(self._local, ignore_errors=True)

    def _upload(self) -> None:
        for entry in os.scandir(self._local) if self._local is not None else ():
            if entry.is_file() and self._uploaded.get(entry.name) != entry.stat().st_size:
                with open(entry.path, "rb") as handle:
                    data = handle.read()
                self._storage.write_bytes(f"{self._trial_dir}/{entry.name}", data, durable=False)
                self._uploaded[entry.name] = len(data)


def _number(value: float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range
        return math.inf if value > 0 else -math.inf
