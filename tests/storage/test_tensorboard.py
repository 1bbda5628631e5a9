"""TensorBoard event logs: what lands in the event files, locally and on memory://, purges of
resumed attempts, and the silent absence of a writer."""

from __future__ import annotations

import math
import socket
import struct
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_tune.storage import Storage, resolve_storage
from prefect_tune.storage.tensorboard import EventLog, open_event_log

pytest.importorskip("tensorboardX")
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.record_writer import masked_crc32c

Triple = tuple[str, int, Any]


def parse_events(data: bytes) -> list[Event]:
    """Decode TFRecord framing: u64 length, masked crc32c of it, data, masked crc32c of it."""
    events, pos = [], 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        body = data[pos + 12 : pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert header_crc == masked_crc32c(header) and body_crc == masked_crc32c(body)
        events.append(Event.FromString(body))
        pos += 16 + length
    assert pos == len(data)
    return events


def scalars(events: list[Event]) -> list[Triple]:
    """(tag, step, value) of every scalar; NaN as the string "nan" so that it compares."""
    return [
        (v.tag, e.step, "nan" if math.isnan(v.simple_value) else v.simple_value)
        for e in events if e.HasField("summary") for v in e.summary.value
    ]


def event_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("events.out.tfevents.*"))


def row(step: int, **metrics: Any) -> dict[str, Any]:
    return {
        **metrics, "training_iteration": step, "trial_id": "ab12c_00000",
        "timestamp": 1.7e9 + step, "checkpoint_dir_name": None,
    }


def open_log(storage: Storage, trial_dir: str, purge_step: int | None = None) -> EventLog:
    log = open_event_log(storage, trial_dir, purge_step=purge_step)
    assert log is not None
    return log


def without_wall_time(events: list[Event]) -> list[Event]:
    for event in events:
        event.ClearField("wall_time")
    return events


def summary_writer_start(directory: Path, purge_step: int) -> list[Event]:
    """The records that open a file of tensorboardX's SummaryWriter(purge_step=...)."""
    from tensorboardX import SummaryWriter

    SummaryWriter(str(directory), purge_step=purge_step).close()
    (path,) = event_files(directory)
    events = without_wall_time(parse_events(path.read_bytes()))
    assert [e.WhichOneof("what") for e in events] == ["file_version"] * 2 + ["session_log"]
    assert events[2].step == purge_step and events[2].session_log.status == SessionLog.START
    return events


def test_local_writes_numeric_flattened_metrics_at_their_iteration(tmp_path: Path) -> None:
    storage = resolve_storage(str(tmp_path))
    trial_dir = storage.join("exp", "trial_00000")
    log = open_log(storage, trial_dir)
    log.append(row(1, loss=0.5, acc={"top1": 0.75, "top5": 1}, note="warmup", lr=None))
    log.append(row(2, loss=0.25, acc={"top1": 0.875}, flag=True, extra={"ok": False, "s": "x"}))
    log.flush()
    (path,) = event_files(Path(trial_dir))
    assert scalars(parse_events(path.read_bytes())) == [
        ("loss", 1, 0.5), ("acc/top1", 1, 0.75), ("acc/top5", 1, 1.0),
        ("loss", 2, 0.25), ("acc/top1", 2, 0.875),
    ]
    log.append(row(3, loss=math.inf, acc={"top1": -math.inf}, gap=math.nan, big=10**400))
    log.close()
    log.close()

    assert event_files(Path(trial_dir)) == [path]
    assert path.name.startswith("events.out.tfevents.")
    assert f".{socket.gethostname()}." in path.name
    events = parse_events(path.read_bytes())
    # A fresh attempt opens with the purge record of step 0: it hides nothing a fresh
    # directory holds, and makes a later attempt's purge record count as a restart.
    assert without_wall_time(events[:3]) == summary_writer_start(tmp_path / "reference", 0)
    assert scalars(events)[5:] == [
        ("loss", 3, math.inf), ("acc/top1", 3, -math.inf), ("gap", 3, "nan"), ("big", 3, math.inf),
    ]
    tags = {tag for tag, _, _ in scalars(events)}
    assert tags == {"loss", "acc/top1", "acc/top5", "gap", "big"}


@pytest.fixture
def memory_storage() -> Iterator[Storage]:
    storage = resolve_storage(f"memory://tb-{uuid.uuid4().hex}")
    yield storage
    storage.remove(storage.root)


def test_object_store_events_are_put_on_flush_without_temp_files(
    memory_storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    trial_dir = memory_storage.join("exp", "trial_00000")
    log = open_log(memory_storage, trial_dir)
    log.append(row(1, loss=0.5, acc={"top1": 0.75}))
    log.append(row(2, loss=0.25, acc={"top1": 0.875}))
    assert memory_storage.listdir(trial_dir) == []  # held until flushed
    log.flush()

    (name,) = memory_storage.listdir(trial_dir)
    assert name.startswith("events.out.tfevents.")
    stored = parse_events(memory_storage.read_bytes(f"{trial_dir}/{name}"))
    assert scalars(stored) == [
        ("loss", 1, 0.5), ("acc/top1", 1, 0.75), ("loss", 2, 0.25), ("acc/top1", 2, 0.875),
    ]

    log.append(row(3, loss=0.125))
    log.close()
    assert memory_storage.listdir(trial_dir) == [name]
    stored = parse_events(memory_storage.read_bytes(f"{trial_dir}/{name}"))
    assert scalars(stored)[-1] == ("loss", 3, 0.125)
    assert list(temp_root.iterdir()) == []


def test_purge_step_hides_the_earlier_attempts_later_steps(tmp_path: Path) -> None:
    storage = resolve_storage(str(tmp_path))
    trial_dir = storage.join("trial_00000")
    first = open_log(storage, trial_dir)
    for step in (1, 2, 3, 4):
        first.append(row(step, loss=float(step)))
    first.close()
    second = open_log(storage, trial_dir, purge_step=3)
    for step in (3, 4, 5):
        second.append(row(step, loss=10.0 * step))
    second.close()

    old, new = (parse_events(p.read_bytes()) for p in event_files(Path(trial_dir)))
    assert scalars(old)[0] == ("loss", 1, 1.0)  # the files sort in attempt order
    assert scalars(new)[0] == ("loss", 3, 30.0)
    # The second file starts as tensorboardX's SummaryWriter(purge_step=3) starts one.
    assert without_wall_time(new[:3]) == summary_writer_start(tmp_path / "reference", 3)

    # Replayed as TensorBoard's Python loader does: the files in name order; the first
    # START record of the run is its initial start, a later one at step s drops every
    # event seen so far at step >= s. (The Rust data server purges on every START.)
    seen: list[Triple] = []
    started = False
    for event in old + new:
        if event.HasField("session_log") and event.session_log.status == SessionLog.START:
            if started:
                seen = [s for s in seen if s[1] < event.step]
            started = True
        seen.extend(scalars([event]))
    assert seen == [("loss", 1, 1.0), ("loss", 2, 2.0), ("loss", 3, 30.0), ("loss", 4, 40.0),
                    ("loss", 5, 50.0)]


def test_no_writer_without_tensorboardx_and_tensorboard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("tensorboardX", "tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)
    storage = resolve_storage(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_event_log(storage, storage.join("trial_00000")) is None
    assert list(tmp_path.iterdir()) == []


def test_writing_events_imports_neither_tensorboardx_nor_torch(tmp_path: Path) -> None:
    probe = (
        "import sys; from prefect_tune.storage import resolve_storage; "
        "from prefect_tune.storage.tensorboard import open_event_log; "
        f"log = open_event_log(resolve_storage({str(tmp_path)!r}), {str(tmp_path / 't')!r}); "
        "log.append({'loss': 1.0, 'training_iteration': 1}); log.close(); "
        "print(sorted({'tensorboardX', 'torch'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
    (path,) = event_files(tmp_path / "t")
    assert scalars(parse_events(path.read_bytes())) == [("loss", 1, 1.0)]
