"""TensorBoard event files of a trial's result rows, written beside result.json.

Written when TensorBoard's tooling is installed (tensorboardX, or the tensorboard package
torch's SummaryWriter uses), but without importing it: importing tensorboardX imports
torch too where it is installed, which would cost every trial process seconds. The file
format is small and stable: TFRecord framing (length, masked CRC32C, data, masked CRC32C)
around `Event` protocol buffers, encoded here for the four fields a scalar needs.
"""

from __future__ import annotations

import importlib.util
import math
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

from prefect_tune.storage.filesystem import Storage
from prefect_tune.storage.records import AUTO_KEYS, flatten


def open_event_log(
    storage: Storage, trial_dir: str, *, purge_step: int | None = None
) -> EventLog | None:
    """An event file for the trial directory `trial_dir` (an fsspec path in `storage`), or
    None, silently, when neither tensorboardX nor tensorboard is installed.

    `purge_step` (the first iteration of a resumed attempt) hides the events an earlier
    attempt wrote at or after that step; None, a start from scratch, hides all of them.
    Every file starts with that purge record (at step 0 for None): TensorBoard's Python
    loader takes the first one of a run for the initial start and purges only on later ones.
    """
    if not any(importlib.util.find_spec(name) for name in ("tensorboardX", "tensorboard")):
        return None
    return EventLog(storage, trial_dir, 0 if purge_step is None else purge_step)


class EventLog:
    """The scalars of a trial's result rows, one event file per attempt."""

    def __init__(self, storage: Storage, trial_dir: str, purge_step: int) -> None:
        # The usual name, plus nanoseconds: a second attempt within the same second must
        # not truncate the first one's file, and sorts after it.
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}." \
            f"{time.time_ns()}"
        self._file = storage.appender(f"{trial_dir}/{name}")
        self._closed = False
        now, version = time.time(), _string(3, b"brain.Event:2")
        # What tensorboardX's SummaryWriter(purge_step=...) starts a file with.
        self._write(_event(now, 0, version))
        self._write(_event(now, purge_step, version))
        self._write(_event(now, purge_step, _message(7, b"\x08\x01")))  # SessionLog START

    def append(self, row: Mapping[str, Any]) -> None:
        """Write every numeric (int/float, not bool; NaN and infinities too) flattened metric
        of `row` but AUTO_KEYS, tagged "a/b", at step row["training_iteration"], as float32
        scalars (what TensorBoard stores)."""
        values = b"".join(
            _message(1, _string(1, key.encode()) + b"\x15" + struct.pack("<f", _float32(value)))
            for key, value in flatten(row).items()
            if key not in AUTO_KEYS and isinstance(value, (int, float))
            and not isinstance(value, bool)
        )
        if values:
            self._write(_event(time.time(), int(row["training_iteration"]),
                               _message(5, values)))

    def flush(self) -> None:
        """Make every row appended so far visible in storage."""
        if not self._closed:
            self._file.flush()

    def close(self) -> None:
        """Flush and close the file. Idempotent."""
        if not self._closed:
            self._closed = True
            self._file.close()

    def _write(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self._file.write(header + _masked_crc(header) + data + _masked_crc(data))


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _message(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): a string or a nested message."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


_string = _message


def _event(wall_time: float, step: int, body: bytes) -> bytes:
    """Event{wall_time=1 (double), step=2 (int64), body: one further encoded field}."""
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + body


def _float32(value: float) -> float:
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        return math.inf if value > 0 else -math.inf
    return number if math.isnan(number) or abs(number) <= 3.4028234663852886e38 \
        else math.copysign(math.inf, number)


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def _masked_crc(data: bytes) -> bytes:
    """TFRecord's masked CRC32C of `data`, little-endian."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return struct.pack("<I", ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF)
