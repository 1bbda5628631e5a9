"""Plain records shared by every layer: trial specs, outcomes, checkpoint records.

Records are frozen snapshots; nothing here does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from prefect_tune.storage.errors import MetricError

if TYPE_CHECKING:  # trials read records without pandas
    import pandas as pd

#: Keys prefect-tune adds to every reported row; a trial may not report them itself.
#: As in Ray Tune: `done` (False in every row; True in the last metrics of a trial that
#: ended TERMINATED), `date` (local time, "%Y-%m-%d_%H-%M-%S"), `time_this_iter_s`
#: (seconds since the previous report, or since the attempt began), `time_total_s`
#: (across retries and resumes), `iterations_since_restore` (reports of this attempt,
#: from 1), and `pid` and `hostname` of the process running the trainable.
AUTO_KEYS = ("training_iteration", "trial_id", "timestamp", "checkpoint_dir_name", "done",
             "date", "time_this_iter_s", "time_total_s", "iterations_since_restore", "pid",
             "hostname")


class TrialStatus(StrEnum):
    """Lifecycle of one trial."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    TERMINATED = "TERMINATED"
    ERROR = "ERROR"
    #: Stopped before it finished (fail_fast, or not resumed); a restore resumes it.
    STOPPED = "STOPPED"
    #: Paused by a scheduler at a milestone, its latest checkpoint committed; the
    #: scheduler resumes it from there, or ends it.
    PAUSED = "PAUSED"

    def is_finished(self) -> bool:
        return self in (TrialStatus.TERMINATED, TrialStatus.ERROR)


@dataclass(frozen=True)
class TrialSpec:
    """What a trial runs: its identity and its resolved config."""

    trial_id: str
    trial_name: str
    config: Mapping[str, Any]


@dataclass(frozen=True)
class CheckpointRecord:
    """One committed checkpoint: its index and the metrics reported with it."""

    index: int
    metrics: Mapping[str, Any]

    @property
    def dir_name(self) -> str:
        return checkpoint_dir_name(self.index)


@dataclass(frozen=True)
class TrialOutcome:
    """What a finished (or failed) trial leaves behind, as the sweep sees it.

    `checkpoints` holds the kept checkpoints in the order they were reported;
    `best_checkpoints` the kept best-N subset (without the protected latest);
    `stopped_early` why a scheduler ended the trial before its end (it is TERMINATED).
    `last_metrics["done"]`, where the row has it, says whether the trial ended
    TERMINATED (every row of result.json says False).
    """

    trial_id: str
    trial_name: str
    config: Mapping[str, Any]
    status: TrialStatus
    last_metrics: Mapping[str, Any] = field(default_factory=dict)
    num_reports: int = 0
    checkpoints: tuple[CheckpointRecord, ...] = ()
    best_checkpoints: tuple[CheckpointRecord, ...] = ()
    best_score: float | None = None
    error: str | None = None
    attempts: int = 1
    stopped_early: str | None = None

    def __post_init__(self) -> None:
        done = self.status is TrialStatus.TERMINATED
        if "done" in self.last_metrics and self.last_metrics["done"] is not done:
            object.__setattr__(self, "last_metrics", {**self.last_metrics, "done": done})

    @property
    def latest_checkpoint(self) -> CheckpointRecord | None:
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def error_summary(self) -> str:
        """The last line of the error (the exception), or "" without an error."""
        lines = (self.error or "").strip().splitlines()
        return lines[-1] if lines else ""


def checkpoint_dir_name(index: int) -> str:
    """The directory name of checkpoint `index`: checkpoint_000000, checkpoint_000001, ..."""
    return f"checkpoint_{index:06d}"


def flatten(data: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """Flatten nested mappings into "a/b" keys; the one flattening used everywhere."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}{sep}", sep))
        else:
            flat[name] = value
    return flat


def to_json_value(value: Any, where: str) -> Any:
    """Return `value` as plain JSON data (numpy/torch scalars unwrapped), else MetricError.

    NaN and infinities are kept: they are valid metric values and round-trip through
    Python's json module.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise MetricError(f"{where}: key {key!r} is not a string; JSON keys must be")
            out[key] = to_json_value(item, f"{where}/{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [to_json_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        try:
            return to_json_value(item(), where)
        except (TypeError, ValueError):
            pass
    raise MetricError(
        f"{where}: value {value!r} of type {type(value).__name__} cannot be written as JSON; "
        "report numbers, strings, bools, None, or lists/dicts of them"
    )


def records_json(frame: pd.DataFrame) -> str:
    """The rows of `frame` as a JSON array: floats at full precision, "/" as it is
    (pandas' writer rounds to 10 digits and escapes it), missing values as null."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return json.dumps(rows, indent=2, default=_plain)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds; anything else as text."""
    return value.item() if hasattr(value, "item") else str(value)
