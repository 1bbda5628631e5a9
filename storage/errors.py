"""The prefect-tune error hierarchy: one root, each class also a built-in exception.

Messages name the offending value or URI and say how to fix it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect_tune.storage.records import TrialOutcome


class SweepError(Exception):
    """Root of every error prefect-tune raises on purpose."""


class ConfigError(SweepError, ValueError):
    """A configuration value is invalid; raised before anything is written."""


class MetricError(SweepError, ValueError):
    """A reported metric cannot be recorded (not JSON, reserved, or missing its score)."""


class StorageError(SweepError, OSError):
    """Storage cannot be reached, written or read."""


class StorageNotShared(StorageError):
    """A trial runs where it cannot see the experiment's storage (a local path of another
    machine); not retried, since the trial would fail the same way there again."""


class ExperimentBusy(SweepError, RuntimeError):
    """Another run holds the experiment's lease: one run at a time may write it."""


class CheckpointError(SweepError, ValueError):
    """A checkpoint cannot be created, read or converted."""


class NoResultError(SweepError, RuntimeError):
    """A best result or checkpoint was asked for, and none qualifies: no trial (or kept
    checkpoint) reported a usable value of the metric. A RuntimeError, as Ray's."""


class OutsideTrialError(SweepError, RuntimeError):
    """A trial-side call (`report`, `get_checkpoint`, `get_context`) ran outside a trial."""


class TrialError(SweepError, RuntimeError):
    """A trial's trainable raised; carries the trial's outcome so the sweep can record it."""

    def __init__(self, outcome: TrialOutcome) -> None:
        super().__init__(f"trial {outcome.trial_name} failed: {outcome.error_summary}")
        self.outcome = outcome

    def __reduce__(self) -> tuple[type[TrialError], tuple[TrialOutcome]]:
        return (type(self), (self.outcome,))


class TrialCrashed(SweepError, RuntimeError):
    """The process running a trial died without reporting back (killed, out of memory,
    `os._exit`, a segfault); retried like any other trial failure."""


class RankFailed(SweepError, RuntimeError):
    """A rank of a distributed training run raised; its traceback is the message."""


class TrialStopped(SweepError):
    """The sweep stopped the trial before it finished (fail_fast)."""
